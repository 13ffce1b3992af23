"""Shared servers for real: runtime adapters, one `serve` of two tables, replicas, vllm-router."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pandas as pd
import pytest
from checks import CLI, cli, rows_valid

from remote_synth import RunDirectory
from remote_synth._server import VllmServer, adapter_name_for
from remote_synth._server.vllm import free_port


def listed(server: VllmServer, key: str) -> str:
    result = cli(["adapters", "list", "--base-url", server.base_url, "--api-key-env", "K"], key)
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_adapters_are_loaded_listed_used_and_unloaded_at_runtime(
    server: VllmServer, api_key: str, demo_run: RunDirectory, tmp_path: Path
) -> None:
    on_server = ["--base-url", server.base_url, "--api-key-env", "K"]
    loaded = cli(["adapters", "load", str(demo_run.path), "--adapter-name", "tenant-b", *on_server], api_key)
    assert loaded.returncode == 0 and loaded.stdout.strip() == "loaded tenant-b", loaded.stderr
    again = cli(["adapters", "load", str(demo_run.path), "--adapter-name", "tenant-b", *on_server], api_key)
    assert again.returncode == 0 and "already served" in again.stdout
    text = listed(server, api_key)
    assert "tenant-b\tadapter on" in text and f"{server.settings.adapter_name}\tadapter on" in text

    out = tmp_path / "rows.csv"
    job = cli(["generate", str(demo_run.path), *on_server, "--adapter-name", "tenant-c", "--load-adapter",
               "--num-records", "20", "--output", str(out)], api_key)  # fmt: skip
    assert job.returncode == 0, job.stderr
    df = pd.read_csv(out)
    assert len(df) == 20 and rows_valid(df, demo_run) == []
    assert "tenant-c" not in listed(server, api_key)  # the job unloaded what it loaded

    unloaded = cli(["adapters", "unload", "tenant-b", *on_server], api_key)
    assert unloaded.returncode == 0 and unloaded.stdout.strip() == "unloaded tenant-b"
    assert "tenant-b" not in listed(server, api_key)
    assert cli(["adapters", "unload", "tenant-b", *on_server], api_key).returncode == 2


def test_two_replicas_one_killed_mid_job_the_job_completes_with_the_exact_count(
    server: VllmServer, api_key: str, demo_run: RunDirectory, tmp_path: Path
) -> None:
    import signal
    import time

    from remote_synth import RemoteSettings
    from remote_synth._server import launch_settings

    second = VllmServer(launch_settings(demo_run, RemoteSettings(api_key=api_key, server_log=tmp_path / "b.log")))
    out = tmp_path / "rows.csv"
    journal = tmp_path / "rows.csv.journal"
    try:
        second.start()
        second.wait_ready()
        with (tmp_path / "stderr.txt").open("w") as stderr:
            proc = subprocess.Popen(
                [*CLI, "generate", str(demo_run.path), "--base-url", server.base_url, "--base-url", second.base_url,
                 "--api-key-env", "K", "--num-records", "3000", "--output", str(out)],
                stdout=subprocess.DEVNULL, stderr=stderr, env={**os.environ, "K": api_key},
            )  # fmt: skip
            deadline = time.monotonic() + 600
            while not (journal.exists() and journal.read_text().count("\n") >= 6):
                assert proc.poll() is None and time.monotonic() < deadline
                time.sleep(0.2)
            os.killpg(second.pid, signal.SIGKILL)  # one replica dies mid-job
            assert proc.wait(900) == 0, (tmp_path / "stderr.txt").read_text()[-3000:]
    finally:
        second.stop()
    df = pd.read_csv(out)
    assert len(df) == 3000 and rows_valid(df, demo_run) == []
    assert "out of the rotation" in (tmp_path / "stderr.txt").read_text()


@pytest.fixture(scope="module")
def two_tables(
    server: VllmServer,
    demo_run: RunDirectory,
    products_run: RunDirectory,
    api_key: str,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[str]:
    """`remote-synth serve` of both demo runs, as a user starts it: one vLLM, two adapters, on the
    session server's adapter store (two replicas sharing one store); its base URL."""
    port, logs = free_port(), tmp_path_factory.mktemp("two-tables")
    announced = logs / "stdout.txt"
    with announced.open("w") as stdout, (logs / "stderr.txt").open("w") as stderr:
        proc = subprocess.Popen(
            [*CLI, "serve", str(demo_run.path), str(products_run.path), "--port", str(port), "--api-key-env", "K",
             "--log-dir", str(logs), "--adapter-store", str(server.settings.adapter_store)],
            stdout=stdout, stderr=stderr, env={**os.environ, "K": api_key}, start_new_session=True,
        )  # fmt: skip
    try:
        deadline = time.monotonic() + 600
        while "Ctrl-C stops the server" not in announced.read_text():
            assert proc.poll() is None, (logs / "stderr.txt").read_text()[-3000:]
            assert time.monotonic() < deadline
            time.sleep(0.5)
        assert f"store:     {server.settings.adapter_store}" in announced.read_text()
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.send_signal(signal.SIGINT)  # serve stops its vLLM by process group
        try:
            proc.wait(120)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)  # its lifeline then stops vLLM
            proc.wait()


def test_one_serve_two_tables_two_concurrent_jobs_each_valid_under_its_own_schema_only(
    two_tables: str, demo_run: RunDirectory, products_run: RunDirectory, api_key: str, tmp_path: Path
) -> None:
    text = cli(["adapters", "list", "--base-url", two_tables, "--api-key-env", "K"], api_key).stdout
    assert (
        f"{adapter_name_for(demo_run)}\tadapter on" in text and f"{adapter_name_for(products_run)}\tadapter on" in text
    )
    jobs = {}
    for run in (demo_run, products_run):
        out = tmp_path / f"{run.path.name}.csv"
        jobs[run] = (out, subprocess.Popen(
            [*CLI, "generate", str(run.path), "--base-url", two_tables, "--api-key-env", "K", "--num-records", "1000",
             "--output", str(out)],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env={**os.environ, "K": api_key},
        ))  # fmt: skip
    for _, proc in jobs.values():
        _, stderr = proc.communicate(timeout=900)
        assert proc.returncode == 0, stderr[-3000:]
    customers, products = (pd.read_csv(out) for out, _ in jobs.values())
    assert len(customers) == len(products) == 1000
    assert list(customers.columns) == list(demo_run.schema["properties"])
    assert list(products.columns) == list(products_run.schema["properties"])
    assert rows_valid(customers, demo_run) == [] and rows_valid(products, products_run) == []
    assert len(rows_valid(customers, products_run)) == len(rows_valid(products, demo_run)) == 1000


def completed_requests(base_url: str, api_key: str) -> float:
    """vLLM's count of finished requests (``vllm:request_success_total``, every label set summed)."""
    text = httpx.get(f"{base_url}/metrics", headers={"Authorization": f"Bearer {api_key}"}, timeout=30).text
    return sum(
        float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith("vllm:request_success_total")
    )


@pytest.fixture
def router(server: VllmServer, two_tables: str, tmp_path: Path) -> Iterator[str]:
    """vllm-router (consistent hashing) in front of two replicas: the session server and ``two_tables``."""
    port = free_port()
    binary = Path(sys.executable).with_name("vllm-router")
    with (tmp_path / "router.log").open("w") as log:
        proc = subprocess.Popen(
            [str(binary), "--worker-urls", server.base_url, two_tables, "--policy", "consistent_hash",
             "--port", str(port), "--prometheus-port", str(free_port()), "--health-check-interval-secs", "1",
             "--log-level", "warning"],
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while not _answers(f"http://127.0.0.1:{port}/health"):
            assert proc.poll() is None and time.monotonic() < deadline, (tmp_path / "router.log").read_text()[-3000:]
            time.sleep(0.3)
        yield f"http://127.0.0.1:{port}"
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def _answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def _vllm_group_on(port: str) -> int:
    """The process group of the vLLM listening on ``port`` (for a hard kill, not through its owner)."""
    for entry in Path("/proc").iterdir():
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"vllm.entrypoints.openai.api_server" in argv and port.encode() in argv:
            return os.getpgid(int(entry.name))
    raise AssertionError(f"no vLLM on port {port}")


def test_two_replicas_one_store_behind_vllm_router_serve_tenants_published_after_they_started(
    router: str, server: VllmServer, demo_run: RunDirectory, products_run: RunDirectory, api_key: str, tmp_path: Path
) -> None:
    """Two tenants' adapters published into the store the replicas share, two concurrent jobs through
    the router (each replica loads an adapter on its first request for it), one watched by Prometheus."""
    store = server.settings.adapter_store
    tenants = {"tenant-c": demo_run, "tenant-p": products_run}
    for name, run in tenants.items():
        published = cli(["adapters", "publish", str(run.path), "--store", str(store), "--adapter-name", name], api_key)
        assert published.returncode == 0, published.stderr
    metrics_port = free_port()
    jobs = {}
    for name, run in tenants.items():
        watch = ["--metrics-port", str(metrics_port)] if name == "tenant-c" else []
        jobs[name] = subprocess.Popen(
            [*CLI, "generate", str(run.path), "--base-url", router, "--api-key-env", "K", "--adapter-name", name,
             "--num-records", "600", "--output", str(tmp_path / f"{name}.csv"), *watch],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env={**os.environ, "K": api_key},
        )  # fmt: skip
    scrapes = []
    while jobs["tenant-c"].poll() is None:
        with contextlib.suppress(httpx.HTTPError):
            scrapes.append(httpx.get(f"http://127.0.0.1:{metrics_port}/metrics", timeout=2).text)
        time.sleep(0.2)
    for proc in jobs.values():
        _, stderr = proc.communicate(timeout=900)
        assert proc.returncode == 0, stderr[-3000:]
    for name, run in tenants.items():
        df = pd.read_csv(tmp_path / f"{name}.csv")
        assert len(df) == 600 and rows_valid(df, run) == []
    labels = 'gen_ai_operation_name="text_completion",gen_ai_request_model="tenant-c"'
    sent = [
        line
        for text in scrapes
        for line in text.splitlines()
        if line.startswith(f"remote_synth_requests_total{{{labels}}}")
    ]
    assert sent and float(sent[-1].rsplit(" ", 1)[1]) > 0, scrapes[-1:]  # scraped while it ran
    assert not _answers(f"http://127.0.0.1:{metrics_port}/metrics")  # and gone with the job


def test_through_vllm_router_affinity_keeps_one_replica_and_a_killed_replica_loses_nothing(
    router: str, server: VllmServer, two_tables: str, demo_run: RunDirectory, api_key: str, tmp_path: Path
) -> None:
    replicas = (server.base_url, two_tables)
    before = [completed_requests(url, api_key) for url in replicas]
    affine = cli(["generate", str(demo_run.path), "--base-url", router, "--api-key-env", "K", "--num-records", "300",
                  "--session-affinity", "--output", str(tmp_path / "affine.csv")], api_key)  # fmt: skip
    assert affine.returncode == 0, affine.stderr[-3000:]
    served = [completed_requests(url, api_key) - b for url, b in zip(replicas, before, strict=True)]
    assert sorted(served)[0] == 0 and sorted(served)[1] > 0, served  # one replica did all of it

    out, journal = tmp_path / "rows.csv", tmp_path / "rows.csv.journal"
    with (tmp_path / "stderr.txt").open("w") as stderr:
        proc = subprocess.Popen(
            [*CLI, "generate", str(demo_run.path), "--base-url", router, "--api-key-env", "K", "--num-records", "3000",
             "--output", str(out)],
            stdout=subprocess.DEVNULL, stderr=stderr, env={**os.environ, "K": api_key},
        )  # fmt: skip
        deadline = time.monotonic() + 600
        while not (journal.exists() and journal.read_text().count("\n") >= 6):
            assert proc.poll() is None and time.monotonic() < deadline, (tmp_path / "stderr.txt").read_text()[-3000:]
            time.sleep(0.2)
        os.killpg(_vllm_group_on(two_tables.rsplit(":", 1)[1]), signal.SIGKILL)  # a replica dies mid-job
        assert proc.wait(900) == 0, (tmp_path / "stderr.txt").read_text()[-3000:]
    df = pd.read_csv(out)
    assert len(df) == 3000 and rows_valid(df, demo_run) == []
