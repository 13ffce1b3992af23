"""The ``remote-synth`` command: a thin shell over the library.

Exit codes: 0 done; 1 generation or the server failed; 2 bad input (run
directory, parameters, URL, API key, adapter, output path); 130 interrupted.
Errors are one line on stderr, never a traceback (``-v`` adds detail).
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import secrets
import signal
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NoReturn

import click

from ._config import RemoteSettings
from ._engine import Progress
from ._exceptions import APIError, ConfigError, GenerationError, RemoteSynthError
from ._output import OutputFile
from ._results import GenerateJobResults
from ._rundir import RunDirectory

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_BAD_INPUT = 2
EXIT_INTERRUPTED = 130

logger = logging.getLogger("remote_synth.cli")


def main() -> None:
    """Console entry point."""
    try:
        cli.main(standalone_mode=False)
        sys.exit(EXIT_OK)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except click.ClickException as exc:
        exc.show()
        sys.exit(EXIT_BAD_INPUT)
    except click.exceptions.Abort:
        _fail("interrupted", EXIT_INTERRUPTED)
    except KeyboardInterrupt:
        _fail("interrupted", EXIT_INTERRUPTED)
    except (ConfigError, APIError) as exc:
        _fail(str(exc), EXIT_BAD_INPUT)
    except RemoteSynthError as exc:
        _fail(str(exc), EXIT_FAILURE)


def _fail(message: str, code: int) -> NoReturn:
    click.echo(f"remote-synth: error: {message}", err=True)
    sys.exit(code)


@click.group(context_settings={"help_option_names": ["-h", "--help"], "show_default": True})
@click.option("-v", "--verbose", count=True, help="More logging (-v info, -vv debug).")
def cli(verbose: int) -> None:
    """Generate synthetic tables through a vLLM server that serves an NSS LoRA adapter."""
    level = logging.WARNING if verbose == 0 else logging.INFO if verbose == 1 else logging.DEBUG
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    logging.getLogger("httpx").setLevel(logging.DEBUG if verbose >= 2 else logging.WARNING)


def _api_key(value: str | None, env_name: str | None) -> str | None:
    if value:
        return value
    if env_name:
        key = os.environ.get(env_name)
        if not key:
            raise ConfigError(f"--api-key-env {env_name}: that environment variable is not set")
        return key
    return None


@cli.command()
@click.argument("run_dir", type=click.Path(path_type=Path))
@click.option("--base-model", help="Base model path or id (default: the run's metadata).")
@click.option("--host", default="127.0.0.1", help="Address to listen on (0.0.0.0 for other hosts).")
@click.option("--port", type=int, default=8000)
@click.option("--api-key", help="API key clients must send (visible in `ps`: prefer --api-key-env).")
@click.option("--api-key-env", help="Name of an environment variable holding the API key.")
@click.option("--adapter-name", help="Name to serve the adapter under (default: derived from its files).")
@click.option("--max-model-len", type=int, help="Server context length (default: fits NSS's max_seq_length).")
@click.option("--log-file", type=click.Path(path_type=Path), help="vLLM's log (default: RUN_DIR/generate/logs/).")
def serve(run_dir: Path, base_model: str | None, host: str, port: int, api_key: str | None, api_key_env: str | None,
          adapter_name: str | None, max_model_len: int | None, log_file: Path | None) -> None:  # fmt: skip
    """Serve RUN_DIR's adapter with vLLM until Ctrl-C (for the GPU host)."""
    from ._launch import launch_settings
    from ._server import VllmServer

    key = _api_key(api_key, api_key_env)
    key_note = f"from ${api_key_env}" if api_key_env else "as given" if api_key else None
    settings = RemoteSettings.load(base_model=base_model, host=host, port=port, api_key=key,
                         adapter_name=adapter_name, max_model_len=max_model_len, server_log=log_file)  # fmt: skip
    run = RunDirectory.open(run_dir).check()
    launch = launch_settings(run, settings)
    if key is None:
        key = secrets.token_urlsafe(24)
        key_note = f"random, written to {_write_key(run.path, key)}"
    server = VllmServer(dataclasses.replace(launch, api_key=key))
    with _sigterm_raises_interrupt():
        try:
            server.start()
            server.wait_ready()
            _serve_until_interrupted(server, launch.adapter_name, key_note)
        finally:
            server.stop()  # a second Ctrl-C while stopping kills the group at once


def _serve_until_interrupted(server: Any, adapter_name: str, key_note: str | None) -> None:
    """Print where the server is, then watch it until Ctrl-C.

    The interrupt handler covers the announcement too: a Ctrl-C sent the moment the last line appears
    is a clean stop (exit 0), not an interrupted start-up.
    """
    try:
        click.echo(f"base URL:  http://{server.settings.host}:{server.port}")
        click.echo(f"adapter:   {adapter_name}")
        click.echo(f"API key:   {key_note}")
        click.echo(f"log:       {server.log_file}")
        click.echo("Ctrl-C stops the server.")
        sys.stdout.flush()
        while True:
            time.sleep(1.0)
            server.raise_if_exited()
    except KeyboardInterrupt:
        click.echo("stopping the server")


def _write_key(run_dir: Path, key: str) -> Path:
    path = Path(run_dir) / "generate" / ".vllm-api-key"
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(key)
    return path


@contextlib.contextmanager
def _sigterm_raises_interrupt() -> Iterator[None]:
    """SIGTERM (``kill``, a container stop) unwinds like Ctrl-C, so the server we started is stopped."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@cli.command()
@click.argument("run_dir", required=False, type=click.Path(path_type=Path))
@click.option("--base-url", help="A running server (default: launch a local one, and stop it after).")
@click.option("--api-key-env", help="Name of an environment variable holding the server's API key.")
@click.option("--adapter-name", help="The adapter's name on the server (default: derived from its files).")
@click.option("--base-model", help="Base model path or id for a launched server.")
@click.option("--num-records", type=int, help="Valid records to generate (default: the run's num_records).")
@click.option(
    "--output",
    type=click.Path(path_type=Path),
    help="Output .csv, .jsonl or .parquet.  [default: RUN_DIR/generate/synthetic_data.csv]",
)
@click.option("--temperature", type=float)
@click.option("--top-p", type=float)
@click.option("--repetition-penalty", type=float)
@click.option("--patience", type=int)
@click.option("--invalid-fraction-threshold", type=float)
@click.option("--use-structured-generation/--no-use-structured-generation", default=None)
@click.option("--structured-generation-schema-method", type=click.Choice(["regex", "json_schema"]))
@click.option(
    "--structured-generation-backend",
    type=click.Choice(["auto", "xgrammar", "guidance", "outlines", "lm-format-enforcer"]),
)
@click.option(
    "--structured-generation-use-single-sequence/--no-structured-generation-use-single-sequence", default=None
)
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
def generate(run_dir: Path | None, base_url: str | None, api_key_env: str | None, adapter_name: str | None,
             base_model: str | None, output: Path | None, max_new_tokens: int | None, max_concurrency: int | None,
             prompts_per_request: int | None, window: int | None, detailed_errors: bool | None,
             **params: Any) -> None:  # fmt: skip
    """Generate records for RUN_DIR (default: the bundled demo run, built if missing)."""
    from ._remote import RemoteBackend

    run = RunDirectory.open(run_dir) if run_dir is not None else _demo_run()
    settings = RemoteSettings.load(base_url=base_url, api_key=_api_key(None, api_key_env), adapter_name=adapter_name,
                         base_model=base_model, max_concurrency=max_concurrency, prompts_per_request=prompts_per_request,
                         window=window, use_detailed_logs=detailed_errors)  # fmt: skip
    overrides = {k: v for k, v in params.items() if v is not None}
    target = OutputFile(output if output is not None else run.output_file).check()
    backend = RemoteBackend(run, overrides, settings=settings)
    with _sigterm_raises_interrupt(), _ProgressBar(backend.config.num_records) as bar:
        backend.on_batch = bar.update
        try:
            backend.initialize()
            if max_new_tokens is not None:
                backend.prepare_params(max_new_tokens=max_new_tokens)
            results = backend.generate()
        except (GenerationError, APIError, KeyboardInterrupt):
            _save_partial(backend.gen_results, target)
            raise
        finally:
            backend.teardown()
    path = target.write(results.df)
    click.echo(_summary(results, path))


def _demo_run() -> RunDirectory:
    try:
        from .demo.build import ensure_demo_run

        return RunDirectory.open(ensure_demo_run())
    except ImportError as exc:
        raise ConfigError(
            f"the bundled demo needs the cpu extra (pip install 'remote-synth[cpu]'), or pass RUN_DIR: {exc}"
        ) from None


def _save_partial(results: GenerateJobResults | None, target: OutputFile) -> None:
    """Nothing generated is lost: rows from before a failure go to a .partial file."""
    if results is None or results.df.empty:
        return
    path = target.write(results.df, target.partial_path)
    click.echo(f"remote-synth: kept {len(results.df)} rows generated before the stop in {path}", err=True)


def _summary(results: GenerateJobResults, path: Path) -> str:
    rate = results.num_valid_records / results.elapsed_time if results.elapsed_time else 0.0
    return (
        f"wrote {len(results.df)} rows to {path} (status {results.status.value}; {results.num_valid_records} valid, "
        f"{results.num_invalid_records} invalid, valid fraction {results.valid_record_fraction:.2f}; "
        f"{results.num_prompts} prompts in {results.elapsed_time:.1f} s, {rate:.0f} records/s)"
    )


class _ProgressBar:
    """valid/target, valid fraction and records/s, on stderr when it is a terminal."""

    def __init__(self, total: int) -> None:
        from tqdm import tqdm

        self._total = total
        self._bar = tqdm(total=total, unit="rec", desc="valid records", disable=None, file=sys.stderr)

    def update(self, progress: Progress) -> None:
        self._bar.update(min(progress.valid, self._total) - self._bar.n)
        self._bar.set_postfix(
            valid_fraction=f"{progress.valid_fraction:.2f}", rec_s=f"{progress.records_per_second:.0f}"
        )

    def __enter__(self) -> _ProgressBar:
        return self

    def __exit__(self, *exc: object) -> None:
        self._bar.close()


if __name__ == "__main__":  # pragma: no cover
    main()
