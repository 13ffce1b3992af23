"""RemoteBackend logic against a fake server (the real-server tests are in tests/integration)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
from fakes.vllm_core import VllmCore, as_httpx

from remote_synth import (
    BackendStateError,
    ConfigError,
    GenerationError,
    GenerationStatus,
    RemoteBackend,
    RemoteSettings,
)
from remote_synth._exceptions import APIStatusError, AuthenticationError, NotFoundError, ServerCheckError
from remote_synth.demo.layout import write_run_dir

SCHEMA = {
    "type": "object",
    "properties": {"n": {"type": "integer", "minimum": 0, "maximum": 9}, "c": {"enum": ["x", "y"]}},
    "required": ["n", "c"],
}
GOOD = '{"n":1,"c":"x"}\n{"n":2,"c":"y"}\n'


class FakeVllm:
    """vLLM's routes (the shared core); ``text(body)`` decides each completion."""

    def __init__(self, text: Callable[[dict], str] = lambda body: GOOD, context: int = 300, prompt_tokens: int = 40):
        self.text = text
        self.core = VllmCore(context=context, prompt_tokens=prompt_tokens)
        self.bodies: list[dict] = []
        self.refuse: set[str] = set()
        """Structured-output methods answered with 400, as a server whose backend lacks them."""

    @property
    def adapters(self) -> list[str]:
        return self.core.adapters

    @adapters.setter
    def adapters(self, names: list[str]) -> None:
        self.core.adapters = names

    @property
    def health(self) -> int:
        return self.core.health

    @health.setter
    def health(self, status: int) -> None:
        self.core.health = status

    def __call__(self, request: httpx.Request) -> httpx.Response:
        shared = self.core.route(request.method, request.url.path, request.content)
        if shared is not None:
            return as_httpx(shared)
        body = json.loads(request.content)
        if self.refuse & set(body.get("structured_outputs", {})):
            return httpx.Response(400, json={"error": {"message": "unsupported structured outputs"}})
        self.bodies.append(body)
        texts = [self.text(body) for _ in body["prompt"]]
        return httpx.Response(200, json={"choices": [{"index": i, "text": t} for i, t in enumerate(texts)]})


@pytest.fixture
def run(tmp_path: Path) -> Path:
    return write_run_dir(
        tmp_path / "run", SCHEMA, base_model="base", base_max_seq_length=1024, generation={"temperature": 0.5}
    )


def backend(run: Path, fake: FakeVllm, config: dict | None = None, **settings: object) -> RemoteBackend:
    s = RemoteSettings(base_url="http://fake:8000", adapter_name="nss-adapter", **settings)
    return RemoteBackend(run, config, settings=s, transport=httpx.MockTransport(fake))


def test_request_body_has_every_sampling_field(run: Path) -> None:
    fake = FakeVllm()
    with backend(run, fake, {"num_records": 3}) as b:
        b.generate()
    body = fake.bodies[-1]
    assert body["model"] == "nss-adapter" and body["n"] == 1
    assert body["prompt"][0] == b.prompt and len(set(body["prompt"])) == 1
    expected = {"temperature": 0.5, "top_p": 1.0, "top_k": -1, "min_p": 0.0, "repetition_penalty": 1.0,
                "skip_special_tokens": True, "include_stop_str_in_output": False, "ignore_eos": False}  # fmt: skip
    assert {k: body[k] for k in expected} == expected
    assert body["max_tokens"] == 300 - 40  # NSS sends max_seq_length (1024): clamped to the server's room
    assert "stop" not in body and "stop_token_ids" not in body and "seed" not in body
    assert "structured_outputs" not in body


def test_grouped_runs_keep_special_tokens(tmp_path: Path) -> None:
    run = write_run_dir(tmp_path / "g", SCHEMA, base_model="base", data={"group_training_examples_by": "c"})
    fake = FakeVllm(lambda body: '<s>{"n":1,"c":"x"}\n{"n":2,"c":"x"}\n</s>')
    with backend(run, fake, {"num_records": 4}) as b:
        results = b.generate()
    assert fake.bodies[-1]["skip_special_tokens"] is False
    assert fake.bodies[-1]["include_stop_str_in_output"] is True
    assert len(results.df) == results.num_valid_records  # grouped output is not truncated
    assert results.num_valid_records >= 4


def test_generate_reaches_exactly_the_target_without_a_full_first_batch(run: Path) -> None:
    fake = FakeVllm()
    with backend(run, fake, {"num_records": 7}) as b:
        results = b.generate()
    assert results.status is GenerationStatus.COMPLETE and len(results.df) == 7
    assert list(results.df.columns) == ["n", "c"]
    # 2 records per completion: the batch closes at the target after 4 completions (NSS: 100 prompts)
    assert results.num_prompts == 4 and b.gen_results is results
    sent = sum(len(body["prompt"]) for body in fake.bodies)
    assert sent <= 7  # no yield known yet: one prompt per record asked for, at most


def test_prepare_params_values_are_used(run: Path) -> None:
    fake = FakeVllm()
    with backend(run, fake, {"num_records": 2}) as b:
        b.prepare_params(temperature=0, top_p=0.5, max_new_tokens=64, eos_token_id=2, num_beams=1, early_stopping=True)
        b.generate()
    body = fake.bodies[-1]
    assert (body["temperature"], body["top_p"], body["max_tokens"], body["stop_token_ids"]) == (0.0, 0.5, 64, [2])


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"tempreture": 0.1}, "unknown sampling parameter"),
        ({"do_sample": False, "temperature": 0.7}, "nonzero temperature"),
        ({"num_beams": 4}, "beam search"),
        ({"temperature": -1.0}, "temperature"),
        ({"top_p": 2.0}, "top_p"),
        ({"max_new_tokens": 0}, "max_new_tokens"),
    ],
)
def test_bad_sampling_parameters(run: Path, kwargs: dict, message: str) -> None:
    b = backend(run, FakeVllm())
    with pytest.raises(ConfigError, match=message):
        b.prepare_params(**kwargs)


def test_do_sample_false_means_greedy(run: Path) -> None:
    fake = FakeVllm()
    with backend(run, fake, {"num_records": 2}) as b:
        b.prepare_params(do_sample=False)
        b.generate()
    assert fake.bodies[-1]["temperature"] == 0.0


def test_first_empty_batch_raises_and_keeps_what_it_has(run: Path) -> None:
    with backend(run, FakeVllm(lambda body: "no records here\n"), {"num_records": 5}) as b:
        with pytest.raises(GenerationError, match="stopped prematurely"):
            b.generate()
        assert b.gen_results is not None and b.gen_results.status is GenerationStatus.STOP_NO_RECORDS


def test_structured_outputs_payload_and_probe(run: Path) -> None:
    def answer(body: dict) -> str:
        if body.get("structured_outputs", {}).get("regex", "").startswith("remote-synth-probe"):
            return "remote-synth-probe-1234"
        return GOOD

    fake = FakeVllm(answer)
    with backend(run, fake, {"num_records": 2, "use_structured_generation": True,
                             "structured_generation_schema_method": "regex"}) as b:  # fmt: skip
        b.generate()
    assert fake.bodies[-1]["structured_outputs"]["regex"].startswith('(\\{"n":')


def _obeys_probes(body: dict) -> str:
    """A server that honours the probes of every method (the json ones answer the probe object)."""
    constraint = body.get("structured_outputs", {})
    if constraint.get("regex", "").startswith("remote-synth-probe"):
        return "remote-synth-probe-1234"
    if "rs-probe" in json.dumps(constraint):
        return '{"probe": "rs-probe"}'
    return GOOD


def test_schema_method_auto_sends_a_structural_tag_of_json_schema_records(run: Path) -> None:
    fake = FakeVllm(_obeys_probes)
    with backend(run, fake, {"num_records": 2, "structured_generation": {"enabled": True}}) as b:
        b.generate()
    tag = json.loads(fake.bodies[-1]["structured_outputs"]["structural_tag"])
    line = {"type": "sequence", "elements": [{"type": "json_schema", "json_schema": SCHEMA},
                                              {"type": "const_string", "value": "\n"}]}  # fmt: skip
    assert tag == {"type": "structural_tag", "format": {"type": "plus", "content": line}}


def test_schema_method_auto_falls_back_to_the_regex_where_the_server_refuses_tags(run: Path) -> None:
    fake = FakeVllm(_obeys_probes)
    fake.refuse = {"structural_tag"}
    b = backend(run, fake, {"num_records": 2, "structured_generation": {"enabled": True}})
    assert "structural_tag" in (b.structured_outputs or {})  # the run's first choice
    with b:
        b.generate()
        assert list(b.structured_outputs) == ["regex"]  # the server's
    assert fake.bodies[-1]["structured_outputs"]["regex"].startswith('(\\{"n":')


def test_an_explicit_structural_tag_the_server_refuses_is_a_server_check_error(run: Path) -> None:
    fake = FakeVllm(_obeys_probes)
    fake.refuse = {"structural_tag"}
    config = {"structured_generation": {"enabled": True, "schema_method": "structural_tag"}}
    with pytest.raises(ServerCheckError, match="rejected the structured-output constraint"):
        backend(run, fake, config).initialize()


def test_max_tokens_is_the_longest_training_example_times_the_multiplier(tmp_path: Path) -> None:
    run = write_run_dir(tmp_path / "r", SCHEMA, base_model="base", base_max_seq_length=1024, layout="0.1.16",
                        max_tokens_per_example=100, generation={"max_tokens_multiplier": 1.5})  # fmt: skip
    fake = FakeVllm()
    with backend(run, fake, {"num_records": 1}) as b:
        b.generate()
    assert fake.bodies[-1]["max_tokens"] == 150
    fake = FakeVllm(context=4096, prompt_tokens=950)  # the run's context less the prompt is less
    with backend(run, fake, {"num_records": 1}) as b:
        b.generate()
    assert fake.bodies[-1]["max_tokens"] == 1024 - 950


def test_server_that_ignores_structured_outputs_is_caught(run: Path) -> None:
    b = backend(run, FakeVllm(), {"use_structured_generation": True})
    with pytest.raises(ServerCheckError, match="ignored `structured_outputs`"):
        b.initialize()


def test_missing_adapter_lists_what_is_served(run: Path) -> None:
    fake = FakeVllm()
    fake.adapters = ["tenant-1", "tenant-2"]
    with pytest.raises(NotFoundError, match="it serves: base, tenant-1, tenant-2"):
        backend(run, fake).initialize()


def test_prompt_longer_than_context(run: Path) -> None:
    with pytest.raises(ServerCheckError, match="does not fit"):
        backend(run, FakeVllm(context=40, prompt_tokens=40)).initialize()


def test_lifecycle_rules(run: Path) -> None:
    b = backend(run, FakeVllm(), {"num_records": 1})
    with pytest.raises(BackendStateError):
        b.generate()
    b.initialize()
    b.teardown()
    b.teardown()
    with pytest.raises(BackendStateError):
        b.generate()
    b.initialize()  # initialize resets the guard
    assert len(b.generate().df) == 1
    b.teardown()


def test_config_layers(run: Path) -> None:
    b = backend(run, FakeVllm(), {"top_p": 0.8})
    assert (b.config.temperature, b.config.top_p) == (0.5, 0.8)


def test_adapter_name_is_stable_across_copies(run: Path, tmp_path: Path) -> None:
    import shutil

    copy = tmp_path / "elsewhere"
    shutil.copytree(run, copy)
    settings = RemoteSettings(base_url="http://x")
    assert RemoteBackend(run, settings=settings).adapter_name == RemoteBackend(copy, settings=settings).adapter_name


def test_unhealthy_server_is_refused_but_a_gateway_without_health_is_fine(run: Path) -> None:
    fake = FakeVllm()
    fake.health = 503
    with pytest.raises(APIStatusError, match="not healthy") as info:  # the server fails: exit 1, not 2
        backend(run, fake).initialize()
    assert info.value.status_code == 503
    fake.health = 404
    with backend(run, fake, {"num_records": 1}) as b:
        assert len(b.generate().df) == 1


def test_a_backend_collected_without_teardown_never_waits_on_its_own_loop(run: Path) -> None:
    """The collector may run the finalizer on the loop's own thread: it must not wait on that loop."""
    import threading

    b = backend(run, FakeVllm())
    b.initialize()
    loop, client = b._loop, b._client  # noqa: SLF001
    assert loop is not None and client is not None
    finished = threading.Event()
    loop.loop.call_soon_threadsafe(lambda: (b.__del__(), finished.set()))
    assert finished.wait(5), "the finalizer blocked"
    loop._thread.join(5)  # noqa: SLF001
    assert not loop._thread.is_alive() and client.closed  # noqa: SLF001
    b.teardown()  # and a later teardown is a no-op


def test_loop_thread_refuses_to_wait_on_itself() -> None:
    from remote_synth._engine.loop_thread import LoopThread

    loop = LoopThread()
    try:
        errors: list[BaseException] = []

        async def inner() -> None:
            try:
                loop.run(asyncio.sleep(0))
            except RuntimeError as exc:
                errors.append(exc)

        loop.run(inner())
        assert errors and "own thread" in str(errors[0])
    finally:
        loop.close()


@pytest.mark.parametrize(("health", "adapters", "back"), [
    (200, ["nss-adapter"], True),
    (404, ["nss-adapter"], True),   # a gateway without /health
    (503, ["nss-adapter"], False),
    (200, [], False),               # restarted, adapter not loaded yet
])  # fmt: skip
def test_server_is_back_needs_health_and_the_adapter(health: int, adapters: list[str], back: bool) -> None:
    from remote_synth._transport import InferenceClient
    from remote_synth._transport.readiness import is_ready

    fake = FakeVllm()
    fake.health, fake.adapters = health, adapters
    client = InferenceClient("http://fake:8000", transport=httpx.MockTransport(fake))
    assert asyncio.run(is_ready(client, "nss-adapter")) is back


@pytest.mark.parametrize(("ready_after", "timeout", "ready"), [(3, 60.0, True), (10**6, 30.0, False)])
def test_wait_for_server_polls_each_second_until_ready_or_the_timeout(
    ready_after: int, timeout: float, ready: bool
) -> None:
    from remote_synth._exceptions import ServerCheckError
    from remote_synth._transport import InferenceClient
    from remote_synth._transport.preflight import wait_for_server

    fake = FakeVllm()
    fake.adapters = ["nss-adapter"]
    asked = {"n": 0}

    def loading(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/health":
            asked["n"] += 1
            return httpx.Response(200 if asked["n"] > ready_after else 503)
        return fake(request)

    now = {"t": 0.0}
    waits: list[float] = []

    async def sleep(seconds: float) -> None:
        now["t"] += seconds

    async def go() -> None:
        client = InferenceClient("http://fake:8000", transport=httpx.MockTransport(loading))
        try:
            await wait_for_server(
                client, "nss-adapter", timeout, on_wait=waits.append, clock=lambda: now["t"], sleep=sleep
            )
        finally:
            await client.aclose()

    if ready:
        asyncio.run(go())
        assert waits == [0.0, 1.0, 2.0] and now["t"] == 3.0
    else:
        with pytest.raises(ServerCheckError, match="not ready after 30 s"):
            asyncio.run(go())
        assert now["t"] == timeout and len(waits) == 30  # never sleeps past the timeout


def test_tenant_fields_and_headers_reach_every_request(run: Path) -> None:
    fake = FakeVllm()
    seen: list[httpx.Request] = []

    def recording(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return fake(request)

    settings = RemoteSettings(base_url="http://fake:8000", adapter_name="nss-adapter", priority=-5,
                              cache_salt="tenant-a", extra_headers={"X-Tenant": "a"},
                              extra_body={"gateway_route": "blue"})  # fmt: skip
    b = RemoteBackend(run, {"num_records": 30}, settings=settings, transport=httpx.MockTransport(recording))
    with b:
        b.generate()
        header = b.job_header()
    body = fake.bodies[-1]
    assert body["priority"] == -5 and body["cache_salt"] == "tenant-a" and body["gateway_route"] == "blue"
    assert all(r.headers["X-Tenant"] == "a" for r in seen)
    ids = [r.headers["X-Request-Id"] for r in seen]
    assert len(set(ids)) == len(ids) == len(seen) and all(i.startswith("remote-synth-") for i in ids)
    assert not any(k.endswith(("priority", "cache_salt", "gateway_route")) for k in header)  # not the job's identity
    assert not any("X-Session-ID" in r.headers for r in seen)  # affinity is asked for, not implied


@pytest.mark.parametrize(("extra", "expected"), [
    ({}, "nss-adapter"),
    ({"X-Session-ID": "team-a"}, "team-a"),  # an explicit header wins
])  # fmt: skip
def test_session_affinity_names_the_adapter_on_every_request(run: Path, extra: dict[str, str], expected: str) -> None:
    fake = FakeVllm()
    seen: list[httpx.Request] = []

    def recording(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return fake(request)

    settings = RemoteSettings(base_url="http://fake:8000", adapter_name="nss-adapter", session_affinity=True,
                              extra_headers=extra)  # fmt: skip
    with RemoteBackend(run, {"num_records": 30}, settings=settings, transport=httpx.MockTransport(recording)) as b:
        b.generate()
    completions = [r for r in seen if r.url.path == "/v1/completions"]
    assert completions and all(r.headers["X-Session-ID"] == expected for r in completions)


def test_a_session_header_name_that_is_no_header_name_is_refused() -> None:
    with pytest.raises(ValueError, match="session_header"):
        RemoteSettings(session_affinity=True, session_header="X Session")


class LoadingVllm(FakeVllm):
    """A FakeVllm with vLLM's runtime adapter routes; ``forget_after`` completions, it "restarts"."""

    def __init__(self, forget_after: int = 10**9) -> None:
        super().__init__()
        self.core.runtime_adapters = True
        self.adapters = []
        self.loads: list[dict] = []
        self.unloads: list[str] = []
        self.forget_after = forget_after

    def __call__(self, request: httpx.Request) -> httpx.Response:
        path = request.url.path
        if path == "/v1/load_lora_adapter":
            self.loads.append(json.loads(request.content))
        if path == "/v1/completions":
            model = json.loads(request.content)["model"]
            if len(self.bodies) == self.forget_after:
                self.adapters, self.forget_after = [], -1  # a restart: runtime-loaded adapters are gone
            if model != "base" and model not in self.adapters:
                return httpx.Response(404, json={"error": {"message": f"The model `{model}` does not exist."}})
        response = super().__call__(request)
        if path == "/v1/unload_lora_adapter" and response.status_code == 200:
            self.unloads.append(json.loads(request.content)["lora_name"])
        return response


def test_load_adapter_registers_at_start_again_after_a_restart_and_unloads_at_teardown(run: Path) -> None:
    fake = LoadingVllm(forget_after=3)
    settings = RemoteSettings(base_url="http://fake:8000", adapter_name="nss-adapter", load_adapter=True,
                              server_adapter_path="/srv/adapters/a", prompts_per_request=5, window=5)  # fmt: skip
    with RemoteBackend(run, {"num_records": 60}, settings=settings, transport=httpx.MockTransport(fake)) as b:
        results = b.generate()
    assert results.num_valid_records >= 60
    assert [load["lora_path"] for load in fake.loads] == ["/srv/adapters/a", "/srv/adapters/a"]  # start + re-register
    assert fake.unloads == ["nss-adapter"] and fake.adapters == []


def test_an_adapter_already_served_is_not_ours_to_unload(run: Path) -> None:
    fake = LoadingVllm()
    fake.adapters = ["nss-adapter"]
    settings = RemoteSettings(base_url="http://fake:8000", adapter_name="nss-adapter", load_adapter=True)
    with RemoteBackend(run, {"num_records": 5}, settings=settings, transport=httpx.MockTransport(fake)) as b:
        b.generate()
    assert fake.loads == [] and fake.unloads == [] and fake.adapters == ["nss-adapter"]


def test_a_server_without_runtime_loading_is_one_clear_error(run: Path) -> None:
    fake = FakeVllm()
    fake.adapters = []
    settings = RemoteSettings(base_url="http://fake:8000", adapter_name="nss-adapter", load_adapter=True)
    with pytest.raises(ServerCheckError, match="VLLM_ALLOW_RUNTIME_LORA_UPDATING"):
        RemoteBackend(run, {"num_records": 5}, settings=settings, transport=httpx.MockTransport(fake)).initialize()


def test_lazy_adapter_check_accepts_an_adapter_a_resolver_will_load(run: Path) -> None:
    fake = FakeVllm()
    fake.adapters = []
    fake.core.store = ["nss-adapter"]
    lazy = RemoteSettings(base_url="http://fake:8000", adapter_name="nss-adapter", adapter_check="lazy")
    with RemoteBackend(run, {"num_records": 5}, settings=lazy, transport=httpx.MockTransport(fake)) as b:
        assert b.server_info is not None and b.server_info.context == 300
        assert b.generate().num_valid_records >= 5


def test_an_unlisted_adapter_a_store_serves_is_loaded_by_one_token_before_the_job(run: Path) -> None:
    """A server with an adapter store lists an adapter only once a request has named it."""
    fake = FakeVllm()
    fake.adapters = []
    fake.core.store = ["nss-adapter"]
    with backend(run, fake, {"num_records": 5}) as b:
        assert fake.adapters == ["nss-adapter"] and fake.bodies[0]["max_tokens"] == 1
        assert b.server_info is not None and b.server_info.context == 300  # listed now, with its context
        assert b.generate().num_valid_records >= 5


def test_an_adapter_the_probe_loaded_is_served_though_the_list_comes_from_another_replica(run: Path) -> None:
    """Behind a router, /v1/models may be answered by a replica that did not take the one-token request."""
    fake = FakeVllm()
    fake.adapters = []
    fake.core.store = ["nss-adapter"]
    other_replica = VllmCore(adapters=[], context=300)

    def router(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/v1/models":
            return as_httpx(other_replica.route("GET", "/v1/models"))
        return fake(request)

    settings = RemoteSettings(base_url="http://fake:8000", adapter_name="nss-adapter")
    with RemoteBackend(run, {"num_records": 5}, settings=settings, transport=httpx.MockTransport(router)) as b:
        assert fake.bodies[0]["max_tokens"] == 1
        assert b.generate().num_valid_records >= 5


def test_an_adapter_served_nowhere_is_not_found_after_one_request(run: Path) -> None:
    fake = FakeVllm()
    fake.adapters = ["other-adapter"]
    with pytest.raises(NotFoundError, match="'nss-adapter' is not served .* other-adapter"):
        backend(run, fake, {"num_records": 5}).initialize()
    assert fake.bodies == []  # the probe was refused (404), no completion made


def test_against_ray_serve_s_naming_every_request_names_base_colon_adapter(run: Path) -> None:
    fake = FakeVllm()
    fake.adapters = ["base:nss-adapter"]
    with backend(run, fake, {"num_records": 5}) as b:
        assert b.adapter_name == "base:nss-adapter"
        assert b.generate().num_valid_records >= 5
    assert fake.bodies and {body["model"] for body in fake.bodies} == {"base:nss-adapter"}
    with pytest.raises(NotFoundError):  # the plain name is served nowhere there
        backend(run, fake, {"num_records": 5}, adapter_naming="plain").initialize()


def test_no_request_of_a_constrained_job_exceeds_its_max_tokens(tmp_path: Path) -> None:
    """A proxy that logs bodies sees every completion constrained and within the run's max_tokens."""
    run = write_run_dir(tmp_path / "r", SCHEMA, base_model="base", base_max_seq_length=1024, layout="0.1.16",
                        max_tokens_per_example=30, generation={"structured_generation": {"enabled": True}})  # fmt: skip
    fake = FakeVllm(_obeys_probes)
    with backend(run, fake, {"num_records": 5}) as b:
        b.generate()
    assert fake.bodies and all(body["max_tokens"] <= 36 for body in fake.bodies)  # 30 x 1.2
    assert all("structured_outputs" in body for body in fake.bodies)
    assert fake.bodies[-1]["max_tokens"] == 36


def test_a_401_says_whether_a_key_was_sent(run: Path) -> None:
    class Locked(FakeVllm):
        def __call__(self, request: httpx.Request) -> httpx.Response:
            if request.url.path == "/v1/models":
                return httpx.Response(401, json={"error": "unauthorized"})
            return super().__call__(request)

    with pytest.raises(AuthenticationError, match="needs an API key, and none was sent"):
        backend(run, Locked()).initialize()
    with pytest.raises(AuthenticationError, match="refused the API key"):
        backend(run, Locked(), api_key="wrong").initialize()
