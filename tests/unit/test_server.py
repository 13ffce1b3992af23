"""Owning a server process, with a stand-in for vLLM: command, readiness, failures, stopping."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from remote_synth import ConfigError, ServerError, ServerStartError
from remote_synth._server import ServerSettings, VllmServer
from remote_synth._server.vllm import lora_rank_limit, port_is_free

FAKE = Path(__file__).parents[1] / "fakes" / "fake_vllm.py"


@pytest.fixture
def fake_python(tmp_path: Path) -> str:
    """An executable that runs the stand-in whatever module it is asked to run."""
    script = tmp_path / "python"
    script.write_text(f'#!/bin/sh\nexec "{sys.executable}" "{FAKE}" "$@"\n')
    script.chmod(0o755)
    return str(script)


def settings(tmp_path: Path, python: str, **kw: object) -> ServerSettings:
    return ServerSettings(
        model="/models/base", adapter_name="tenant-a", adapter_path=tmp_path / "adapter", max_lora_rank=12,
        python=python, log_file=tmp_path / "vllm.log", startup_timeout=20, stop_timeout=2, **kw,
    )  # fmt: skip


@pytest.fixture
def server_factory(tmp_path: Path, fake_python: str, monkeypatch: pytest.MonkeyPatch):  # type: ignore[no-untyped-def]
    started: list[VllmServer] = []

    def make(mode: str = "ok", **kw: object) -> VllmServer:
        monkeypatch.setenv("FAKE_MODE", mode)
        server = VllmServer(settings(tmp_path, fake_python, **kw))
        started.append(server)
        return server

    yield make
    for server in started:  # a failing test must not leave processes behind
        server.stop()


def test_command_and_environment(tmp_path: Path) -> None:
    server = VllmServer(settings(tmp_path, "/usr/bin/python3", api_key="s3cret", max_model_len=600))
    cmd = server.command
    assert cmd[:3] == ["/usr/bin/python3", "-m", "vllm.entrypoints.openai.api_server"]
    assert cmd[cmd.index("--model") + 1] == "/models/base"
    assert "--enable-lora" in cmd
    assert cmd[cmd.index("--max-lora-rank") + 1] == "16"
    assert cmd[cmd.index("--max-model-len") + 1] == "600"
    assert cmd[cmd.index("--host") + 1] == "127.0.0.1"
    assert '"name": "tenant-a"' in cmd[cmd.index("--lora-modules") + 1]
    assert all("s3cret" not in part for part in cmd)
    env = server._env()  # noqa: SLF001
    assert env["VLLM_API_KEY"] == "s3cret" and env["HF_HUB_OFFLINE"] == "1"


def test_random_key_and_free_port(tmp_path: Path) -> None:
    a, b = VllmServer(settings(tmp_path, "p")), VllmServer(settings(tmp_path, "p"))
    assert a.api_key != b.api_key and len(a.api_key) >= 24
    assert a.port > 0 and a.base_url == f"http://127.0.0.1:{a.port}"


@pytest.mark.parametrize(("r", "limit"), [(1, 1), (8, 8), (12, 16), (32, 32), (33, 64)])
def test_lora_rank_limits(r: int, limit: int) -> None:
    assert lora_rank_limit(r) == limit


def test_rank_too_large() -> None:
    with pytest.raises(ConfigError):
        lora_rank_limit(1024)


def test_ready_then_stopped_with_port_free(server_factory) -> None:  # type: ignore[no-untyped-def]
    server = server_factory()
    with server:
        assert server.group_alive()
        port = server.port
        assert not port_is_free("127.0.0.1", port)
    assert not server.group_alive()
    assert port_is_free("127.0.0.1", port)
    server.stop()  # idempotent


def test_early_exit_fails_fast_with_the_log_tail(server_factory) -> None:  # type: ignore[no-untyped-def]
    server = server_factory("exit")
    server.start()
    with pytest.raises(ServerStartError, match="exited with code 3") as info:
        server.wait_ready()
    assert "model not found" in info.value.log_tail
    assert info.value.returncode == 3
    message = str(info.value)  # one line: why (the log's telling line) and where the whole log is
    assert "\n" not in message and "model not found" in message and str(server.log_file) in message
    assert "--lora-modules" in server.log_file.read_text()  # the command is in the log, not the message


async def _no_sleep(seconds: float) -> None:
    return None


def test_never_ready_times_out(server_factory) -> None:  # type: ignore[no-untyped-def]
    server = server_factory("hang")
    server.start()
    clock = iter(range(0, 10_000, 5))
    with pytest.raises(ServerStartError, match="did not become ready within 20 s"):
        server.wait_ready(sleep=_no_sleep, clock=lambda: float(next(clock)))
    server.stop()
    assert not server.group_alive()


def test_stubborn_group_is_killed(server_factory) -> None:  # type: ignore[no-untyped-def]
    server = server_factory("stubborn")
    server.start()
    server.wait_ready()
    pgid = server.pid
    server.stop()
    with pytest.raises(ProcessLookupError):
        os.killpg(pgid, 0)


def test_context_manager_stops_on_failure(server_factory) -> None:  # type: ignore[no-untyped-def]
    server = server_factory("exit")
    with pytest.raises(ServerStartError):
        with server:
            pass
    assert not server.group_alive()


def test_start_twice_is_a_bug(server_factory) -> None:  # type: ignore[no-untyped-def]
    server = server_factory()
    server.start()
    with pytest.raises(RuntimeError):
        server.start()


def test_every_route_but_health_is_behind_the_key(tmp_path: Path) -> None:
    server = VllmServer(settings(tmp_path, "/usr/bin/python3", api_key="s3cret"))
    assert server.command[server.command.index("--middleware") + 1] == "remote_synth_authgate.AuthGate"
    insecure = VllmServer(settings(tmp_path, "/usr/bin/python3", insecure=True))
    assert insecure.api_key is None and "--middleware" not in insecure.command
    assert "VLLM_API_KEY" not in insecure._env()  # noqa: SLF001


def test_a_server_dies_with_its_owner_even_on_sigkill(tmp_path: Path, fake_python: str) -> None:
    """The owner is SIGKILLed (no cleanup runs); the lifeline takes the server's whole group down."""
    import signal
    import subprocess
    import time

    owner_code = (
        "import sys, time\n"
        "from pathlib import Path\n"
        "from remote_synth._server import ServerSettings, VllmServer\n"
        f"s = ServerSettings(model='/m', adapter_name='a', adapter_path=Path('/a'), python={fake_python!r},\n"
        f"                   log_file=Path({str(tmp_path / 'log')!r}), startup_timeout=20)\n"
        "server = VllmServer(s).start(); server.wait_ready()\n"
        "print(server.pid, flush=True); time.sleep(3600)\n"
    )
    owner = subprocess.Popen([sys.executable, "-c", owner_code], stdout=subprocess.PIPE, text=True,
                             env={**os.environ, "FAKE_MODE": "stubborn"})  # fmt: skip
    try:
        assert owner.stdout is not None
        pgid = int(owner.stdout.readline())
        os.killpg(pgid, 0)  # the server's group runs
        owner.send_signal(signal.SIGKILL)
        owner.wait(10)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                os.killpg(pgid, 0)
            except ProcessLookupError:
                break
            time.sleep(0.2)
        with pytest.raises(ProcessLookupError):  # stubborn ignores SIGTERM: the lifeline's SIGKILL got it
            os.killpg(pgid, 0)
    finally:
        if owner.poll() is None:
            owner.kill()
            owner.wait(10)
        if owner.stdout is not None:
            owner.stdout.close()


def test_restart_starts_a_dead_server_again_on_the_same_port(server_factory) -> None:  # type: ignore[no-untyped-def]
    import signal
    import time

    server = server_factory()
    server.start()
    server.wait_ready()
    port, first = server.port, server.pid
    os.killpg(first, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while server.returncode is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert server.returncode == -signal.SIGKILL or server.returncode == 128 + signal.SIGKILL
    server.restart()
    assert server.restarts == 1 and server.pid != first and server.port == port and server.returncode is None
    server.stop()
    with pytest.raises(ServerError, match="not restarted"):
        server.restart()
    assert not server.group_alive()


def test_a_supervised_server_that_dies_is_restarted_and_the_work_goes_on(server_factory) -> None:  # type: ignore[no-untyped-def]
    import asyncio
    import signal

    from remote_synth._server.supervisor import run_supervised

    server = server_factory()
    server.start()
    server.wait_ready()
    first = server.pid

    async def work() -> str:
        os.killpg(first, signal.SIGKILL)
        while server.restarts == 0 or server.returncode is not None:
            await asyncio.sleep(0.05)
        return "done"

    assert asyncio.run(run_supervised(work(), server, max_restarts=2, interval=0.05)) == "done"
    assert server.restarts == 1 and server.pid != first


def test_a_supervised_server_out_of_restarts_ends_the_work_with_its_log_tail(server_factory) -> None:  # type: ignore[no-untyped-def]
    import asyncio
    import signal

    from remote_synth._server.supervisor import run_supervised

    server = server_factory()
    server.start()
    server.wait_ready()
    cancelled = []

    async def work() -> None:
        os.killpg(server.pid, signal.SIGKILL)
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            cancelled.append(True)
            raise

    with pytest.raises(ServerError, match="exited with code -9 during generation, after 0 restart") as info:
        asyncio.run(run_supervised(work(), server, max_restarts=0, interval=0.05))
    assert cancelled and "fake vllm starting" in info.value.log_tail and info.value.returncode == -9


def _rope_run(tmp_path: Path, name: str, factor: float) -> Path:
    import json

    from remote_synth.demo.layout import write_run_dir

    base = tmp_path / "base"
    base.mkdir(exist_ok=True)
    (base / "config.json").write_text(json.dumps({"max_position_embeddings": 1024}))
    run = write_run_dir(tmp_path / name, {"properties": {"a": {"type": "integer"}}, "required": ["a"]},
                        base_model=str(base), base_max_seq_length=1024)  # fmt: skip
    meta_file = run / "train" / "adapter" / "metadata_v2.json"
    meta = json.loads(meta_file.read_text())
    meta["rope_scaling"] = {"rope_type": "default", "factor": factor, "theta": 500000.0,
                            "rope_parameters": {"rope_type": "default", "rope_theta": 500000.0, "extra": 1}}  # fmt: skip
    meta_file.write_text(json.dumps(meta))
    return run


def test_a_rope_scaled_run_is_served_at_its_scaled_context_with_nss_overrides(tmp_path: Path) -> None:
    """NSS 0.1.16 applies the trained RoPE scaling at inference; without it the context stays native."""
    import json

    from remote_synth import RemoteSettings, RunDirectory
    from remote_synth._server import launch_settings

    launch = launch_settings(RunDirectory.open(_rope_run(tmp_path, "r", 2.0)), RemoteSettings())
    assert launch.max_model_len == 2048
    expected = {"rope_type": "linear", "rope_theta": 500000.0, "extra": 1, "factor": 2.0,
                "original_max_position_embeddings": 1024}  # fmt: skip
    assert launch.hf_overrides == {"rope_parameters": expected}
    cmd = VllmServer(launch)._command()  # noqa: SLF001
    assert json.loads(cmd[cmd.index("--hf-overrides") + 1]) == {"rope_parameters": expected}
    plain = launch_settings(RunDirectory.open(_rope_run(tmp_path, "p", 1.0)), RemoteSettings())
    assert plain.hf_overrides is None and plain.max_model_len == 1024
    assert "--hf-overrides" not in VllmServer(plain)._command()  # noqa: SLF001


def test_runs_with_different_rope_scaling_are_not_served_together(tmp_path: Path) -> None:
    from remote_synth import RunDirectory
    from remote_synth._server import serve_settings

    runs = [RunDirectory.open(_rope_run(tmp_path, n, f)) for n, f in (("a", 2.0), ("b", 1.0))]
    with pytest.raises(ConfigError, match="different RoPE scaling"):
        serve_settings(runs)
