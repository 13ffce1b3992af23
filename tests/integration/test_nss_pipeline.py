"""NSS 0.1.16's own pipeline, generating through us: ``SafeSynthesizer(...).load_from_save_path()`` on
the demo run (laid out as 0.1.16 saves it), ``generate_remotely``, then NSS's ``evaluate()`` and
``save_results()`` on what we return."""

from __future__ import annotations

import shutil
from pathlib import Path

import pandas as pd
import pytest
from checks import rows_valid

from remote_synth import RemoteSettings, RunDirectory, generate_remotely

pytestmark = pytest.mark.integration

sdk = pytest.importorskip("nemo_safe_synthesizer.sdk.library_builder", reason="make installs NSS 0.1.16")
DATA = Path(__file__).parents[2] / "src" / "remote_synth" / "demo" / "data"


def nss_run(demo_run: RunDirectory, tmp_path: Path) -> Path:
    """The demo run where NSS keeps its runs (``<config>---<dataset>/<run>``), with its training split."""
    run = tmp_path / "demo---customers" / "run"
    shutil.copytree(demo_run.path, run)
    (run / "dataset").mkdir()
    shutil.copyfile(DATA / "customers.csv", run / "dataset" / "training.csv")
    return run


def test_nss_pipeline_generates_through_the_server_and_saves_nss_results(
    demo_run: RunDirectory, external: RemoteSettings, tmp_path: Path
) -> None:
    from nemo_safe_synthesizer.cli.artifact_structure import Workdir
    from nemo_safe_synthesizer.config import SafeSynthesizerParameters
    from nemo_safe_synthesizer.generation.backend import GeneratorBackend
    from nemo_safe_synthesizer.generation.results import GenerateJobResults

    workdir = Workdir.from_path(nss_run(demo_run, tmp_path)).new_generation_run()
    runtime = SafeSynthesizerParameters.model_validate(
        {"evaluation": {"enabled": False}, "generation": {"num_records": 30}}
    )
    nss = sdk.SafeSynthesizer(workdir=workdir).load_from_save_path(runtime_config=runtime)
    assert nss._llm_metadata.max_tokens_per_example  # 0.1.16's metadata, read by NSS itself

    generate_remotely(nss, external).evaluate().save_results()

    assert isinstance(nss.generator, GeneratorBackend) and nss.generator.remote is True
    results = nss.generator.gen_results
    assert type(results) is GenerateJobResults and results.status.value == "complete"
    assert results.num_completion_tokens and results.num_completion_tokens > 0
    assert nss.results.synthetic_data is not None and len(nss.results.synthetic_data) == 30
    saved = pd.read_csv(workdir.output_file)
    assert len(saved) == 30 and rows_valid(saved, demo_run) == []


def test_nss_pipeline_generates_a_flexible_series_and_leaves_its_audit_files_in_the_workdir(
    visits_run: RunDirectory, tmp_path: Path
) -> None:
    """A run in NSS 0.1.16's flexible time-series mode, read by NSS itself, generated through us
    (on a vLLM launched for it: its adapter is on a base of its own)."""
    from nemo_safe_synthesizer.cli.artifact_structure import Workdir
    from nemo_safe_synthesizer.config import SafeSynthesizerParameters
    from nemo_safe_synthesizer.generation.results import GenerateJobResults

    run = tmp_path / "demo---visits" / "run"
    shutil.copytree(visits_run.path, run)
    (run / "dataset").mkdir()
    shutil.copyfile(DATA / "visits.csv", run / "dataset" / "training.csv")
    workdir = Workdir.from_path(run).new_generation_run()
    runtime = SafeSynthesizerParameters.model_validate({"evaluation": {"enabled": False}})
    nss = sdk.SafeSynthesizer(workdir=workdir).load_from_save_path(runtime_config=runtime)
    assert nss._llm_metadata.timeseries_metadata.flexible is not None  # NSS reads it as its own

    generate_remotely(nss, RemoteSettings(server_log=tmp_path / "vllm.log"))

    results = nss.generator.gen_results
    assert type(results) is GenerateJobResults
    assert list(results.df.columns) == list(nss._llm_metadata.timeseries_metadata.source_columns)
    generated = workdir.generate.path
    for name in ("raw_generations.jsonl", "flexible_timeseries_metrics.json", "synthetic_data_internal.csv"):
        assert (generated / name).is_file(), name
    internal = pd.read_csv(generated / "synthetic_data_internal.csv")
    assert len(internal) == len(results.df) and {"_time_idx", "_is_last_row"} <= set(internal.columns)
