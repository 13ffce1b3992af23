"""``remote-synth generate``: a job against a running server, or one we launch and stop.

Accepted records go to a journal next to the output as they come; ``--resume`` continues a job
that stopped, and from the first request on every failure exits 1 with what was accepted kept.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from .._exceptions import ConfigError, GenerationError, JournalMismatchError, RemoteSynthError
from .._io.journal import Journal
from .._io.output import OutputFile, write_artifacts
from .._settings import RemoteSettings
from ..nss.params import GenerateParameters
from ..nss.results import GenerateJobResults
from ..nss.rundir import RunDirectory
from .exits import GenerationFailed
from .logs import use_log_format
from .metrics import chain, serving_metrics
from .options import (
    api_key_from,
    generation_options,
    json_object,
    nest_overrides,
    parse_headers,
    settings_options,
    take_settings,
)
from .progress import ProgressBar, with_log_line
from .sections import SectionedCommand
from .signals import signals_raise_interrupt

GENERATE_SETTINGS = (
    "retry_deadline", "log_dir", "load_adapter", "server_adapter_path", "adapter_check", "adapter_naming",
    "share", "priority", "cache_salt", "session_affinity", "wait_for_server", "ca_bundle", "metrics_port",
    "metrics_host", "log_format",
)  # fmt: skip
"""``RemoteSettings`` fields that are ``generate`` flags (after the ones grouped near the top)."""


HELP_SECTIONS = {
    "Connection": ["base_urls", "api_key_envs", "adapter_name", "base_model", "wait_for_server", "ca_bundle",
                   "load_adapter", "server_adapter_path", "adapter_check", "adapter_naming", "log_dir"],
    "Sampling (NSS's generation parameters)": [
        "num_records", "temperature", "top_p", "repetition_penalty", "patience", "invalid_fraction_threshold",
        "max_tokens_multiplier", "max_new_tokens", "structured_generation__enabled",
        "structured_generation__schema_method", "structured_generation__backend",
        "structured_generation__use_single_sequence", "structured_generation__max_records_per_sequence",
        "validation__enforce_numeric_range"],
    "Engine": ["max_concurrency", "prompts_per_request", "window", "share", "use_detailed_logs"],
    "Observing": ["metrics_port", "metrics_host", "log_format"],
    "Durability": ["output", "resume", "overwrite", "retry_deadline"],
    "Tenancy (shared servers and gateways)": ["priority", "cache_salt", "session_affinity", "headers", "extra_body"],
}  # fmt: skip
"""How ``generate --help`` groups its options."""


@click.command(cls=SectionedCommand, sections=HELP_SECTIONS)
@click.argument("run_dir", required=False, type=click.Path(path_type=Path))
@click.option(
    "--base-url",
    "base_urls",
    multiple=True,
    help="A running server; repeat for replicas (default: launch a local one, and stop it after).",
)
@click.option(
    "--api-key-env",
    "api_key_envs",
    multiple=True,
    help="Environment variable holding the server's API key; repeat for one per --base-url.",
)
@settings_options("adapter_name", "base_model")
@generation_options("num_records")
@click.option(
    "--output",
    type=click.Path(path_type=Path),
    help="Output .csv, .jsonl or .parquet.  [default: RUN_DIR/generate/synthetic_data.csv]",
)
@generation_options(
    "temperature", "top_p", "repetition_penalty", "patience", "invalid_fraction_threshold", "max_tokens_multiplier",
    "structured_generation.enabled", "structured_generation.schema_method", "structured_generation.backend",
    "structured_generation.use_single_sequence", "structured_generation.max_records_per_sequence",
    "validation.enforce_numeric_range",
)  # fmt: skip
@click.option(
    "--max-new-tokens",
    type=click.IntRange(min=1),
    help="Tokens per completion (default: the run's longest training example × max_tokens_multiplier, "
    "fitted to the server; runs saved before NSS 0.1.16: max_seq_length).",
)
@settings_options("max_concurrency", "prompts_per_request", "window", "use_detailed_logs",
                  flags={"use_detailed_logs": "--detailed-errors"})  # fmt: skip
@click.option("--resume", is_flag=True, help="Continue the job whose journal is next to --output.")
@click.option("--overwrite", is_flag=True, help="Replace an existing output (and drop its journal).")
@settings_options(*GENERATE_SETTINGS)
@click.option("--header", "headers", multiple=True, help="'Name: value' sent with every request (repeatable).")
@click.option("--extra-body", help="JSON object merged into every completions request (a gateway's fields).")
def generate(run_dir: Path | None, base_urls: tuple[str, ...], api_key_envs: tuple[str, ...], output: Path | None,
             max_new_tokens: int | None, resume: bool, overwrite: bool, headers: tuple[str, ...],
             extra_body: str | None, **values: Any) -> None:  # fmt: skip
    """Generate records for RUN_DIR (default: the bundled demo run, built if missing).

    \b
    Examples:
      remote-synth generate RUN_DIR --num-records 5000      # launch a local vLLM, stop it after
      REMOTE_SYNTH_API_KEY=... remote-synth generate RUN_DIR --base-url http://gpu-host:8000

    Accepted records go to a journal next to the output as they come; after a crash or a
    stop, the same command with --resume continues the job without losing or repeating any.
    """
    from .._backend import RemoteBackend

    run = RunDirectory.open(run_dir) if run_dir is not None else _demo_run()
    keys = [api_key_from(None, name) for name in api_key_envs]
    settings = RemoteSettings.load(base_url=list(base_urls) or None, api_key=keys or None,
                                   extra_headers=parse_headers(headers) or None,
                                   extra_body=json_object("--extra-body", extra_body), **take_settings(values))  # fmt: skip
    overrides = nest_overrides(values)  # what is left: NSS's generation parameters
    target = OutputFile(output if output is not None else run.output_file).check()
    journal_path = Journal.path_for(target.path)
    _check_existing(target.path, journal_path, resume=resume, overwrite=overwrite)
    use_log_format(settings.log_format)
    backend = RemoteBackend(run, overrides, settings=settings)
    serving = serving_metrics(backend, settings.metrics_host, settings.metrics_port)
    with signals_raise_interrupt(), ProgressBar(backend.config.num_records) as bar, serving as metrics:
        backend.on_batch = chain(bar.update, metrics.on_batch if metrics is not None else None)
        backend.on_status = _with_server_log(backend, bar.status)
        try:
            backend.initialize()
            if max_new_tokens is not None:
                backend.prepare_params(max_new_tokens=max_new_tokens)
            replayed = _open_journal(backend, journal_path, resume=resume)
            if replayed:
                click.echo(f"resuming: {replayed} completions from {journal_path}", err=True)
            results = _generate(backend, target)
        finally:
            backend.teardown()
    path = _write_output(target, results)
    _write_artifacts(target, backend.artifacts)
    if backend.journal is not None:
        backend.journal.remove()
    click.echo(_summary(results, path))


def _with_server_log(backend: Any, status: Callable[[str], None]) -> Callable[[str], None]:
    """With -v, what we wait for comes with the launched server's last log line."""

    def show(text: str) -> None:
        if logging.getLogger().isEnabledFor(logging.INFO) and backend.server is not None:
            text = with_log_line(text, backend.server)
        status(text)

    return show


def _open_journal(backend: Any, path: Path, *, resume: bool) -> int:
    try:
        return int(backend.open_journal(path, resume=resume))
    except JournalMismatchError as exc:
        raise ConfigError(f"--resume: {exc}; resume with the first run's settings, or pass --overwrite") from None
    except ConfigError as exc:
        raise ConfigError(f"--resume: {exc}; pass --overwrite to start the job again") from None


def _check_existing(output: Path, journal: Path, *, resume: bool, overwrite: bool) -> None:
    """An earlier job's output or journal is never replaced unless asked (it may be NSS's own file)."""
    if resume and overwrite:
        raise ConfigError("--resume and --overwrite contradict each other; pass one")
    if overwrite:  # the old output stays until the new one replaces it, atomically
        journal.unlink(missing_ok=True)
        return
    if resume:
        if output.exists() and not journal.exists():
            raise ConfigError(f"--resume: {output} exists and has no journal (that job finished); pass --overwrite")
        return
    for path in (journal, output):
        if path.exists():
            what = "an unfinished job's journal" if path == journal else "an earlier output"
            raise ConfigError(
                f"{path} exists ({what}): pass --resume to continue that job, or --overwrite to replace it"
            )


def _generate(backend: Any, target: OutputFile) -> GenerateJobResults:
    """Generation proper: from here every failure exits 1, and what was accepted is kept."""
    try:
        results: GenerateJobResults = backend.generate()
        return results
    except KeyboardInterrupt:
        _save_partial(backend, target)
        raise
    except GenerationError as exc:
        _save_partial(backend, target)
        raise GenerationFailed(
            f"{exc}{_remedies(backend.config, structured=backend.kind.accepts_structured_generation)}"
        ) from exc
    except RemoteSynthError as exc:
        _save_partial(backend, target)
        raise GenerationFailed(str(exc)) from exc


def _remedies(config: GenerateParameters, *, structured: bool = True) -> str:
    """The command-line spelling of the library's advice on invalid records, for this job's settings
    (time series generate without structured outputs, as in NSS)."""
    flags = [f"--temperature {config.temperature / 2:g}"] if config.temperature > 0.05 else []
    if not config.structured_generation.enabled and structured:
        flags.append("--structured-generation-enabled")
    return f" On the command line: {' or '.join(flags)}." if flags else ""


def _write_output(target: OutputFile, results: GenerateJobResults) -> Path:
    try:
        return target.write(results.df)
    except OSError as exc:
        kept = f"; the records are kept in {Journal.path_for(target.path)}: --resume writes them"
        raise GenerationFailed(f"cannot write {target.path} ({exc.strerror or exc}){kept}") from None


def _write_artifacts(target: OutputFile, files: dict[str, str]) -> None:
    """Files the job leaves beside its output (a flexible time series' audit), in ``<stem>.artifacts/``."""
    if not files:
        return
    try:
        written = write_artifacts(target.artifacts_dir, files)
    except OSError as exc:
        raise GenerationFailed(f"wrote {target.path}, but not {target.artifacts_dir} ({exc.strerror or exc})") from None
    click.echo(f"audit files: {', '.join(p.name for p in written)} in {target.artifacts_dir}", err=True)


def _demo_run() -> RunDirectory:
    try:
        from ..demo.build import ensure_demo_run

        return RunDirectory.open(ensure_demo_run(report=lambda line: click.echo(line, err=True)))
    except ImportError as exc:
        raise ConfigError(
            f"the bundled demo needs the cpu extra (pip install 'remote-synth[cpu]'), or pass RUN_DIR: {exc}"
        ) from None


def _save_partial(backend: Any, target: OutputFile) -> None:
    """Rows from before a stop: in the journal (``--resume`` continues), and readable now in a .partial file."""
    results: GenerateJobResults | None = backend.gen_results
    journal = backend.journal.path if backend.journal is not None else None
    if results is None or results.df.empty:
        return
    where = f"the journal {journal} (--resume continues the job)" if journal else "memory only"
    try:
        path = target.write(results.df, target.partial_path)
    except OSError as exc:
        click.echo(f"remote-synth: {len(results.df)} rows are kept in {where}; no .partial file "
                   f"({exc.strerror or exc})", err=True)  # fmt: skip
        return
    click.echo(f"remote-synth: kept {len(results.df)} rows in {path}, and in {where}", err=True)


def _summary(results: GenerateJobResults, path: Path) -> str:
    rate = results.num_valid_records / results.elapsed_time if results.elapsed_time else 0.0
    return (
        f"wrote {len(results.df)} rows to {path} (status {results.status.value}; {results.num_valid_records} valid, "
        f"{results.num_invalid_records} invalid, valid fraction {results.valid_record_fraction:.2f}; "
        f"{results.num_prompts} prompts in {results.elapsed_time:.1f} s, {rate:.0f} records/s)"
    )
