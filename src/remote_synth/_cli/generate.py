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
from .._io.output import OutputFile
from .._settings import RemoteSettings
from ..nss.params import GenerateParameters
from ..nss.results import GenerateJobResults
from ..nss.rundir import RunDirectory
from .exits import GenerationFailed
from .options import api_key_from, ca_bundle_option, generation_options, json_object, parse_headers
from .progress import ProgressBar
from .signals import signals_raise_interrupt


@click.command()
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
@click.option("--adapter-name", help="The adapter's name on the server (default: derived from its files).")
@click.option("--base-model", help="Base model path or id for a launched server.")
@generation_options("num_records")
@click.option(
    "--output",
    type=click.Path(path_type=Path),
    help="Output .csv, .jsonl or .parquet.  [default: RUN_DIR/generate/synthetic_data.csv]",
)
@generation_options(
    "temperature", "top_p", "repetition_penalty", "patience", "invalid_fraction_threshold",
    "use_structured_generation", "structured_generation_schema_method", "structured_generation_backend",
    "structured_generation_use_single_sequence",
)  # fmt: skip
@click.option(
    "--max-new-tokens", type=int, help="Tokens per completion (default: NSS's max_seq_length, fitted to the server)."
)
@click.option("--max-concurrency", type=int, help="Requests in flight at once, at most.  [default: 256]")
@click.option("--prompts-per-request", type=int, help="Prompts carried by one request.  [default: 25]")
@click.option(
    "--window",
    type=int,
    help="Prompts in flight at first; the fixed window where the server has no /metrics.  [default: 256]",
)
@click.option(
    "--detailed-errors", is_flag=True, default=None, help="Detailed validation messages (they quote record values)."
)
@click.option("--resume", is_flag=True, help="Continue the job whose journal is next to --output.")
@click.option("--overwrite", is_flag=True, help="Replace an existing output (and drop its journal).")
@click.option(
    "--retry-deadline", type=float, help="Seconds a request may keep failing before the job gives up.  [default: 600]"
)
@click.option(
    "--log-dir",
    type=click.Path(path_type=Path),
    help="A launched server's log.  [default: RUN_DIR/generate/logs, or $XDG_STATE_HOME/remote-synth]",
)
@click.option("--load-adapter", is_flag=True, default=None, help="Register the adapter on the running server first.")
@click.option("--server-adapter-path", help="The adapter's directory on the server's machine (--load-adapter).")
@click.option(
    "--adapter-check",
    type=click.Choice(["strict", "lazy"]),
    help="lazy: accept an adapter the server does not list yet (a resolver plugin loads it).  [default: strict]",
)
@click.option("--share", type=float, help="This job's share of a shared server's capacity, in (0, 1].  [default: 1]")
@click.option("--priority", type=int, help="Request priority, for a server with --scheduling-policy priority.")
@click.option("--cache-salt", help="This tenant's prefix-cache salt (no cache sharing with other salts).")
@click.option(
    "--session-affinity",
    is_flag=True,
    default=None,
    help="Send X-Session-ID: ADAPTER, so a router hashing on it (vllm-router consistent_hash) keeps "
    "this table on one replica.",
)
@click.option(
    "--wait-for-server",
    type=float,
    help="Seconds to wait for a --base-url server to be ready (a stack starting it alongside).  [default: 0]",
)
@ca_bundle_option
@click.option("--header", "headers", multiple=True, help="'Name: value' sent with every request (repeatable).")
@click.option("--extra-body", help="JSON object merged into every completions request (a gateway's fields).")
def generate(run_dir: Path | None, base_urls: tuple[str, ...], api_key_envs: tuple[str, ...], adapter_name: str | None,
             base_model: str | None, output: Path | None, max_new_tokens: int | None, max_concurrency: int | None,
             prompts_per_request: int | None, window: int | None, detailed_errors: bool | None, resume: bool,
             overwrite: bool, retry_deadline: float | None, log_dir: Path | None, priority: int | None,
             cache_salt: str | None, headers: tuple[str, ...], extra_body: str | None, load_adapter: bool | None,
             server_adapter_path: str | None, adapter_check: str | None, share: float | None,
             session_affinity: bool | None, wait_for_server: float | None, ca_bundle: Path | None, **params: Any) -> None:  # fmt: skip
    """Generate records for RUN_DIR (default: the bundled demo run, built if missing).

    Accepted records go to a journal next to the output as they come; after a crash or a
    stop, the same command with --resume continues the job without losing or repeating any.
    """
    from .._backend import RemoteBackend

    run = RunDirectory.open(run_dir) if run_dir is not None else _demo_run()
    keys = [api_key_from(None, name) for name in api_key_envs]
    settings = RemoteSettings.load(base_url=list(base_urls) or None, api_key=keys or None, adapter_name=adapter_name,
                         base_model=base_model, max_concurrency=max_concurrency, prompts_per_request=prompts_per_request,
                         window=window, use_detailed_logs=detailed_errors, retry_deadline=retry_deadline,
                         log_dir=log_dir, priority=priority, cache_salt=cache_salt,
                         extra_headers=parse_headers(headers) or None, extra_body=json_object("--extra-body", extra_body),
                         load_adapter=load_adapter, server_adapter_path=server_adapter_path,
                         adapter_check=adapter_check, share=share, session_affinity=session_affinity,
                         wait_for_server=wait_for_server, ca_bundle=ca_bundle)  # fmt: skip
    overrides = {k: v for k, v in params.items() if v is not None}
    target = OutputFile(output if output is not None else run.output_file).check()
    journal_path = Journal.path_for(target.path)
    _check_existing(target.path, journal_path, resume=resume, overwrite=overwrite)
    backend = RemoteBackend(run, overrides, settings=settings)
    with signals_raise_interrupt(), ProgressBar(backend.config.num_records) as bar:
        backend.on_batch, backend.on_status = bar.update, _with_server_log(backend, bar.status)
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
    if backend.journal is not None:
        backend.journal.remove()
    click.echo(_summary(results, path))


def _with_server_log(backend: Any, status: Callable[[str], None]) -> Callable[[str], None]:
    """With -v, what we wait for comes with the launched server's last log line."""

    def show(text: str) -> None:
        if logging.getLogger().isEnabledFor(logging.INFO) and backend.server is not None:
            last = backend.server.log_tail(1).strip()
            text = f"{text} | {last[-120:]}" if last else text
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
    if not config.use_structured_generation and structured:
        flags.append("--use-structured-generation")
    return f" On the command line: {' or '.join(flags)}." if flags else ""


def _write_output(target: OutputFile, results: GenerateJobResults) -> Path:
    try:
        return target.write(results.df)
    except OSError as exc:
        kept = f"; the records are kept in {Journal.path_for(target.path)}: --resume writes them"
        raise GenerationFailed(f"cannot write {target.path} ({exc.strerror or exc}){kept}") from None


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
