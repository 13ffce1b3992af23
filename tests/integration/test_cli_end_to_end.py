"""The CLI end to end: the embedded default, the client-only install, and bad input."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from checks import rows_valid

from remote_synth import RunDirectory
from remote_synth._server import VllmServer

CLI = [sys.executable, "-m", "remote_synth._cli"]


def run_cli(args: list[str], python: str | None = None, env: dict[str, str] | None = None, timeout: float = 900):
    cmd = [python, "-m", "remote_synth._cli"] if python else CLI
    return subprocess.run(
        cmd + args, capture_output=True, text=True, env={**os.environ, **(env or {})}, timeout=timeout
    )


def close_pipes(proc: subprocess.Popen[str]) -> None:
    """A test's own pipes are closed, not left to the collector (pytest reports what it finds there)."""
    for pipe in (proc.stdin, proc.stdout, proc.stderr):
        if pipe is not None:
            pipe.close()


def vllm_pids() -> set[str]:
    """Processes that belong to any vLLM server (API servers and their engine children)."""
    found = subprocess.run(["pgrep", "-f", "vllm|VLLM"], capture_output=True, text=True).stdout.split()
    return set(found) - {str(os.getpid())}


def pids_with(marker: str) -> set[str]:
    """Processes whose environment holds ``marker``: a job's server inherits the job's environment,
    so this finds that server's processes and no one else's (another test run's fakes included)."""
    found = set()
    for pid in vllm_pids():
        with contextlib.suppress(OSError):
            if marker.encode() in Path(f"/proc/{pid}/environ").read_bytes():
                found.add(pid)
    return found


def test_generate_with_only_num_records_and_output_runs_the_embedded_default(
    tmp_path: Path, demo_run: RunDirectory
) -> None:
    before = vllm_pids()
    out = tmp_path / "demo.csv"
    result = run_cli(["generate", "--num-records", "40", "--output", str(out)])
    assert result.returncode == 0, result.stderr
    df = pd.read_csv(out)
    assert len(df) == 40 and list(df.columns) == demo_run.columns
    assert rows_valid(df, demo_run) == []
    assert "wrote 40 rows" in result.stdout
    assert vllm_pids() <= before  # the server it launched is gone


@pytest.fixture(scope="module")
def client_python() -> str:
    python = os.environ.get("REMOTE_SYNTH_CLIENT_PYTHON")
    if not python:
        pytest.skip("set REMOTE_SYNTH_CLIENT_PYTHON to the client-only venv's python (make test does)")
    return python


def test_client_only_install_generates_against_the_server(
    client_python: str, server: VllmServer, api_key: str, demo_run: RunDirectory, tmp_path: Path
) -> None:
    for heavy in ("torch", "vllm"):
        probe = subprocess.run([client_python, "-c", f"import {heavy}"], capture_output=True, text=True)
        assert probe.returncode != 0, f"{heavy} is importable in the client-only install"
    out = tmp_path / "rows.jsonl"
    result = run_cli(
        ["generate", str(demo_run.path), "--base-url", server.base_url, "--api-key-env", "MY_KEY",
         "--num-records", "25", "--output", str(out)],
        python=client_python,
        env={"MY_KEY": api_key},
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    df = pd.read_json(out, lines=True)
    assert len(df) == 25 and rows_valid(df, demo_run) == []
    assert api_key not in result.stdout + result.stderr


@pytest.mark.parametrize(
    ("args", "env", "message"),
    [
        (["--api-key-env", "K"], {"K": "wrong"}, "refused the API key"),
        (["--api-key-env", "K", "--adapter-name", "ghost"], None, "'ghost' is not served"),
        (["--api-key-env", "UNSET_VARIABLE_X"], None, "UNSET_VARIABLE_X"),
    ],
)
def test_cli_bad_input_is_one_line_and_exit_2(
    server: VllmServer,
    api_key: str,
    demo_run: RunDirectory,
    tmp_path: Path,
    args: list[str],
    env: dict | None,
    message: str,
) -> None:
    env = env if env is not None else {"K": api_key}
    result = run_cli(
        ["generate", str(demo_run.path), "--base-url", server.base_url, "--num-records", "5",
         "--output", str(tmp_path / "x.csv"), *args],
        env=env,
    )  # fmt: skip
    assert result.returncode == 2
    assert message in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.stderr
    assert not (tmp_path / "x.csv").exists()


def test_serve_prints_where_and_stops_cleanly_on_ctrl_c(demo_run: RunDirectory, tmp_path: Path) -> None:
    import signal
    import time

    from remote_synth._server.vllm import free_port, port_is_free

    before = vllm_pids()
    port = free_port()
    env = {**os.environ, "SERVE_KEY": "serve-test-key"}
    proc = subprocess.Popen(
        [*CLI, "serve", str(demo_run.path), "--port", str(port), "--api-key-env", "SERVE_KEY",
         "--log-file", str(tmp_path / "serve.log")],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, start_new_session=True,
    )  # fmt: skip
    try:
        lines = []
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            lines.append(line)
            if line.startswith("Ctrl-C"):
                break
        text = "".join(lines)
        assert f"base URL:  http://127.0.0.1:{port}" in text
        assert "adapter:   nss-" in text and "serve-test-key" not in text
        proc.send_signal(signal.SIGINT)
        assert proc.wait(120) == 0, proc.stderr.read()
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        close_pipes(proc)
    time.sleep(0.5)
    assert port_is_free("127.0.0.1", port)
    with pytest.raises(ProcessLookupError):
        os.killpg(proc.pid, 0)
    assert vllm_pids() <= before  # the server's whole group is gone


def test_sigterm_during_generate_stops_the_launched_server(demo_run: RunDirectory, tmp_path: Path) -> None:
    import signal
    import time

    before = vllm_pids()
    log = tmp_path / "vllm.log"
    out = tmp_path / "rows.csv"
    proc = subprocess.Popen(
        [*CLI, "generate", str(demo_run.path), "--num-records", "100000", "--output", str(out)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
        env={**os.environ, "REMOTE_SYNTH_SERVER_LOG": str(log)},
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline and "startup complete" not in (log.read_text() if log.exists() else ""):
            assert proc.poll() is None, proc.stderr.read()
            time.sleep(1)
        time.sleep(6)  # past the start-up checks, into the first batches
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(120) == 143
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert "terminated" in proc.stderr.read()
    close_pipes(proc)
    assert vllm_pids() <= before or not pids_with(str(log)), pids_with(str(log))  # the launched server is gone
