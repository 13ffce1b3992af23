"""Several base URLs: balancing by requests in flight, failover with a cooldown, re-admission, keys."""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from pathlib import Path

import httpx
import pytest

from remote_synth import ConfigError, RemoteBackend, RemoteSettings
from remote_synth._transport import InferenceClient, RetryPolicy
from remote_synth._transport.replicas import Replica, ReplicaSet
from remote_synth.demo.layout import write_run_dir

SCHEMA = {"type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"]}


class Replicas:
    """Two or more fake vLLM servers told apart by host; ``down`` ones refuse connections."""

    def __init__(self, *hosts: str, delay: float = 0.0) -> None:
        self.hosts = hosts
        self.down: set[str] = set()
        self.completions: Counter[str] = Counter()
        self.auth: dict[str, set[str]] = {h: set() for h in hosts}
        self.delay = delay

    async def __call__(self, request: httpx.Request) -> httpx.Response:
        host = request.url.host
        self.auth[host].add(request.headers.get("authorization", ""))
        if host in self.down:
            raise httpx.ConnectError("refused")
        path = request.url.path
        if path == "/health":
            return httpx.Response(200)
        if path == "/metrics":
            return httpx.Response(404)
        if path == "/v1/models":
            return httpx.Response(200, json={"data": [{"id": "base", "max_model_len": 400},
                                                      {"id": "nss-adapter", "parent": "base"}]})  # fmt: skip
        if path == "/tokenize":
            return httpx.Response(200, json={"count": 20})
        body = json.loads(request.content)
        self.completions[host] += 1
        await asyncio.sleep(self.delay)
        return httpx.Response(200, json={"choices": [{"index": i, "text": '{"n": 1}\n{"n": 2}\n'}
                                                     for i in range(len(body["prompt"]))]})  # fmt: skip


@pytest.fixture
def run(tmp_path: Path) -> Path:
    return write_run_dir(tmp_path / "run", SCHEMA, base_model="base", base_max_seq_length=300)


def test_requests_spread_over_replicas_by_requests_in_flight(run: Path) -> None:
    fake = Replicas("a", "b", delay=0.01)
    settings = RemoteSettings(base_url=["http://a:1", "http://b:1"], api_key=["ka", "kb"], adapter_name="nss-adapter",
                              prompts_per_request=2, window=20)  # fmt: skip
    with RemoteBackend(run, {"num_records": 200}, settings=settings, transport=httpx.MockTransport(fake)) as b:
        assert b.generate().num_valid_records >= 200
    a, b_count = fake.completions["a"], fake.completions["b"]
    assert a > 10 and b_count > 10 and max(a, b_count) / min(a, b_count) < 1.5
    assert fake.auth == {"a": {"Bearer ka"}, "b": {"Bearer kb"}}  # each replica its own key


def test_a_dead_replica_is_failed_over_and_the_job_completes_with_the_exact_count(run: Path) -> None:
    fake = Replicas("a", "b")
    fake.down.add("b")
    settings = RemoteSettings(base_url="http://a:1,http://b:1", adapter_name="nss-adapter", prompts_per_request=5,
                              window=20, retry_deadline=60)  # fmt: skip
    with RemoteBackend(run, {"num_records": 100}, settings=settings, transport=httpx.MockTransport(fake)) as b:
        results = b.generate()
    assert len(results.df) == 100 and fake.completions["b"] == 0 and fake.completions["a"] > 0


def test_a_failed_replica_rests_then_comes_back_through_health() -> None:
    now = [0.0]
    statuses = {"a": 200, "b": 0}

    def handle(request: httpx.Request) -> httpx.Response:
        status = statuses[request.url.host]
        if status == 0:
            raise httpx.ConnectError("refused")
        return httpx.Response(status)

    transport = httpx.MockTransport(handle)
    replicas = ReplicaSet([Replica(h, httpx.AsyncClient(base_url=f"http://{h}", transport=transport))
                           for h in ("a", "b")], probe_timeout=1, cooldown=5, clock=lambda: now[0])  # fmt: skip
    a, b = replicas.replicas

    async def scenario() -> list[str]:
        picks = []
        replicas.failed(b, "refused")
        picks.append((await replicas.pick()).url)
        b.in_flight, a.in_flight = 0, 3
        now[0] = 6  # cooldown over, but /health still refused: stays out
        picks.append((await replicas.pick()).url)
        statuses["b"] = 200
        now[0] = 12
        picks.append((await replicas.pick()).url)  # /health answers: back, and the less busy one
        await replicas.aclose()
        return picks

    assert asyncio.run(scenario()) == ["a", "a", "b"]


def test_one_replica_is_never_taken_out() -> None:
    replicas = ReplicaSet([Replica("a", httpx.AsyncClient())], probe_timeout=1)
    replicas.failed(replicas.replicas[0], "refused")
    assert replicas.admitted == replicas.replicas
    asyncio.run(replicas.aclose())


def test_keys_must_be_one_or_one_per_url() -> None:
    with pytest.raises(ConfigError, match="2 API keys for 3 base URLs"):
        InferenceClient(["http://a", "http://b", "http://c"], api_key=["x", "y"])
    client = InferenceClient(["http://a", "http://b:9/v1/"], api_key="x", retry=RetryPolicy(deadline=0))
    assert client.base_urls == ["http://a", "http://b:9"] and client.display_url == "http://a, http://b:9"


def test_base_urls_and_keys_read_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REMOTE_SYNTH_BASE_URL", "http://a:8000, http://b:8000")
    monkeypatch.setenv("REMOTE_SYNTH_API_KEY", "ka,kb")
    settings = RemoteSettings()
    assert settings.base_urls == ["http://a:8000", "http://b:8000"] and settings.api_keys == ["ka", "kb"]
    monkeypatch.setenv("REMOTE_SYNTH_BASE_URL", "http://one:8000")
    monkeypatch.setenv("REMOTE_SYNTH_API_KEY", "k")
    assert RemoteSettings().base_urls == ["http://one:8000"] and RemoteSettings().api_keys == ["k"]
    assert "ka" not in repr(settings)
