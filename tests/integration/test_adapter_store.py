"""An adapter store for real: adapters published after vLLM started are served on their first request."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
from checks import cli, rows_valid

from remote_synth import RunDirectory
from remote_synth._server import VllmServer, adapter_name_for


def test_an_adapter_published_after_the_server_started_is_generated_from_without_registering_it(
    server: VllmServer, api_key: str, products_run: RunDirectory, tmp_path: Path
) -> None:
    store = server.settings.adapter_store
    assert store is not None
    on_server = ["--base-url", server.base_url, "--api-key-env", "K"]
    name = adapter_name_for(products_run)
    assert name not in cli(["adapters", "list", *on_server], api_key).stdout

    published = cli(["adapters", "publish", str(products_run.path), "--store", str(store)], api_key)
    assert published.returncode == 0 and published.stdout.strip() == f"published {name} in {store}", published.stderr
    again = cli(["adapters", "publish", str(products_run.path), "--store", str(store)], api_key)
    assert again.returncode == 0 and "already in" in again.stdout
    assert (
        json.loads((store / name / "adapter_config.json").read_text())["base_model_name_or_path"]
        == server.settings.model
    )
    assert name not in cli(["adapters", "list", *on_server], api_key).stdout  # not loaded before a request names it

    out = tmp_path / "rows.csv"
    job = cli(["generate", str(products_run.path), *on_server, "--num-records", "20", "--output", str(out)], api_key)
    assert job.returncode == 0, job.stderr
    df = pd.read_csv(out)
    assert len(df) == 20 and rows_valid(df, products_run) == []
    assert f"{name}\tadapter on" in cli(["adapters", "list", *on_server], api_key).stdout


def test_a_name_in_no_store_is_one_clear_line_and_exit_2(
    server: VllmServer, api_key: str, demo_run: RunDirectory
) -> None:
    job = cli(["generate", str(demo_run.path), "--base-url", server.base_url, "--api-key-env", "K",
               "--adapter-name", "nowhere", "--num-records", "5"], api_key)  # fmt: skip
    assert job.returncode == 2
    assert "adapter 'nowhere' is not served by" in job.stderr and "Traceback" not in job.stderr
