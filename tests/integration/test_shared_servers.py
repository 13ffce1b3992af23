"""Adapters on a running vLLM server: load, list, a job that loads its own, unload."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
from checks import rows_valid

from remote_synth import RunDirectory, VllmServer

CLI = [sys.executable, "-m", "remote_synth._cli"]


def cli(args: list[str], key: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CLI, *args], capture_output=True, text=True, env={**os.environ, "K": key}, timeout=900)


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

    from remote_synth import RemoteSettings, launch_settings

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
