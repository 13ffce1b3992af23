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
