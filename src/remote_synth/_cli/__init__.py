"""The ``remote-synth`` command: a thin shell over the library.

Exit codes, by phase: 0 done; 2 bad input found before generation (run
directory, parameters, URL, API key, adapter, output path, a journal that is
another job's); 1 once generation has started, or when a server fails (a
launched one that does not start, one that goes away for good, a full disk);
130 interrupted (Ctrl-C); 143 terminated (SIGTERM, or SIGHUP, handled alike).
Errors are one line on stderr, never a traceback (``-v`` adds detail).
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import logging
import os
import secrets
import signal
import socket
import sys
import threading
import time
import typing
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn, TypeVar

import click

from .._engine import Progress
from .._exceptions import (
    APIError,
    APIStatusError,
    ConfigError,
    GenerationError,
    JournalMismatchError,
    Remedy,
    RemoteSynthError,
    ServerError,
    StorageError,
)
from .._io.journal import Journal
from .._io.output import OutputFile
from .._settings import RemoteSettings
from ..nss.params import GenerateParameters
from ..nss.results import GenerateJobResults
from ..nss.rundir import RunDirectory

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_BAD_INPUT = 2
EXIT_INTERRUPTED = 130
EXIT_TERMINATED = 143

logger = logging.getLogger("remote_synth.cli")
F = TypeVar("F", bound=Callable[..., Any])
T = TypeVar("T")

if TYPE_CHECKING:
    from .._transport.client import InferenceClient


class Terminated(KeyboardInterrupt):
    """SIGTERM or SIGHUP: unwinds like Ctrl-C (servers stopped, rows kept), exits 143."""


class GenerationFailed(Exception):
    """Anything that ends a job once generation has started: exit 1, never 2."""


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
    except (click.exceptions.Abort, KeyboardInterrupt) as exc:
        # click turns an interrupt into Abort, keeping it as the cause
        if isinstance(exc, Terminated) or isinstance(exc.__cause__, Terminated):
            _fail("terminated", EXIT_TERMINATED)
        _fail("interrupted", EXIT_INTERRUPTED)
    except GenerationFailed as exc:
        _fail(str(exc), EXIT_FAILURE)
    except RemoteSynthError as exc:
        advice = REMEDIES.get(exc.remedy, "") if exc.remedy is not None else ""
        _fail(f"{exc}{advice}", setup_exit_code(exc))


REMEDIES: dict[Remedy, str] = {
    "adapter_name": "; pass the served name with --adapter-name, or launch it with `remote-synth serve RUN_DIR`",
    "max_model_len": "; launch the server with a larger --max-model-len",
    "base_url": "; check --base-url and that the server runs",
    "api_key": "; pass the right key with --api-key-env NAME or REMOTE_SYNTH_API_KEY",
}
"""The library's remedies (``RemoteSynthError.remedy``) as command-line advice."""


def setup_exit_code(exc: RemoteSynthError) -> int:
    """Before generation: what the user gave is wrong (2), or a server or the disk failed (1)."""
    if isinstance(exc, (ServerError, StorageError)):
        return EXIT_FAILURE
    if isinstance(exc, APIStatusError) and exc.status_code >= 500:
        return EXIT_FAILURE
    if isinstance(exc, (ConfigError, APIError)):
        return EXIT_BAD_INPUT
    return EXIT_FAILURE


def _fail(message: str, code: int) -> NoReturn:
    click.echo(f"remote-synth: error: {message}", err=True)
    sys.exit(code)


@click.group(context_settings={"help_option_names": ["-h", "--help"], "show_default": True})
@click.version_option(package_name="remote-synth", message="remote-synth %(version)s")
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


@cli.command(context_settings={"ignore_unknown_options": True})
@click.argument("args", nargs=-1, required=True, type=click.UNPROCESSED, metavar="RUN_DIR... [-- VLLM_ARGS...]")
@click.option("--base-model", help="Base model path or hub id (default: the runs' metadata).")
@click.option("--host", default="127.0.0.1", help="Address to listen on (0.0.0.0 for other hosts: needs a key).")
@click.option("--port", type=int, default=8000, help="Port to listen on.")
@click.option("--api-key", help="API key clients must send (visible in `ps`: prefer --api-key-env).")
@click.option("--api-key-env", help="Name of an environment variable holding the API key.")
@click.option("--insecure", is_flag=True, help="Serve beyond loopback with no key: every route open to anyone.")
@click.option("--adapter-name", help="Name to serve the adapter under, with one RUN_DIR (default: from its files).")
@click.option("--max-model-len", type=int, help="Server context length (default: fits NSS's max_seq_length).")
@click.option("--max-loras", type=int, help="Adapters in one batch.  [default: one per RUN_DIR, up to 8]")
@click.option("--max-cpu-loras", type=int, help="Adapters kept in CPU memory.  [default: vLLM's]")
@click.option(
    "--offline/--online",
    default=None,
    help="Keep vLLM off the model hub.  [default: offline when the base model is a local path]",
)
@click.option(
    "--runtime-adapters", is_flag=True, help="Let clients load and unload adapters (`adapters load`, --load-adapter)."
)
@click.option("--log-file", type=click.Path(path_type=Path), help="vLLM's log (default: in --log-dir).")
@click.option(
    "--log-dir",
    type=click.Path(path_type=Path),
    help="Logs and the key file.  [default: RUN_DIR/generate/logs, or $XDG_STATE_HOME/remote-synth]",
)
def serve(args: tuple[str, ...], base_model: str | None, host: str, port: int, api_key: str | None,
          api_key_env: str | None, insecure: bool, adapter_name: str | None, max_model_len: int | None,
          max_loras: int | None, max_cpu_loras: int | None, offline: bool | None, runtime_adapters: bool,
          log_file: Path | None, log_dir: Path | None) -> None:  # fmt: skip
    """Serve the adapters of one or more RUN_DIRs (one base model) with vLLM until Ctrl-C.

    Every route but /health needs the key. Beyond loopback a key must be given (or --insecure).
    vLLM's own flags go after `--` (e.g. `-- --tensor-parallel-size 2 --gpu-memory-utilization 0.8`).
    """
    from .._server.launch import files_dir, is_loopback, serve_settings
    from .._server.vllm import VllmServer, port_is_free

    run_dirs, vllm_args = _split_pass_through(args)
    key = _api_key(api_key, api_key_env)
    if not is_loopback(host) and key is None and not insecure:
        raise ConfigError(
            f"--host {host} listens beyond this machine, so clients need a key: pass --api-key-env NAME "
            "(or --api-key), or --insecure to serve with every route open"
        )
    key_note = f"from ${api_key_env}" if api_key_env else "as given" if api_key else None
    settings = RemoteSettings.load(base_model=base_model, host=host, port=port, api_key=key,
                         adapter_name=adapter_name, max_model_len=max_model_len, server_log=log_file,
                         log_dir=log_dir, max_loras=max_loras, max_cpu_loras=max_cpu_loras, offline=offline)  # fmt: skip
    runs = [RunDirectory.open(d).check() for d in run_dirs]
    launch = dataclasses.replace(serve_settings(runs, settings), extra_args=vllm_args)
    if runtime_adapters:  # behind the key, like every other route
        launch = dataclasses.replace(launch, extra_env=(*launch.extra_env, (RUNTIME_LORA_VARIABLE, "1")))
    if not port_is_free(host, port):
        raise ConfigError(f"--port {port}: something already listens on {host}:{port}; choose another port")
    if insecure and key is None:
        launch = dataclasses.replace(launch, insecure=True)
        key_note = "none (--insecure: every route is open to anyone who can reach the port)"
    elif key is None:
        key = secrets.token_urlsafe(24)
        key_note = f"random, written to {write_key(files_dir(runs[0], settings) / KEY_FILE, key)}"
    server = VllmServer(dataclasses.replace(launch, api_key=key))
    adapters = [
        (launch.adapter_name, runs[0].path),
        *((n, r.path) for (n, _), r in zip(launch.more_adapters, runs[1:], strict=True)),
    ]
    with _signals_raise_interrupt():
        try:
            click.echo(f"starting vLLM for {len(adapters)} adapter(s) on {host}:{port} (log: {server.log_file})")
            server.start()
            server.wait_ready(on_wait=_every(15.0, lambda waited: click.echo(f"starting vLLM… {waited:.0f} s")))
            _serve_until_interrupted(server, adapters, key_note)
        finally:
            server.stop()  # a second Ctrl-C while stopping kills the group at once


def _every(seconds: float, report: Callable[[float], None]) -> Callable[[float], None]:
    """``report`` at most once per ``seconds`` of the waited time it is given (a line, not a flood)."""
    last = {"at": 0.0}

    def maybe(waited: float) -> None:
        if waited - last["at"] >= seconds:
            last["at"] = waited
            report(waited)

    return maybe


def _split_pass_through(args: tuple[str, ...]) -> tuple[list[Path], tuple[str, ...]]:
    """Run directories first; from the first argument that is a flag on, vLLM's own (after `--`)."""
    flags = next((i for i, a in enumerate(args) if a.startswith("-")), len(args))
    if flags == 0:
        raise ConfigError("name at least one RUN_DIR before vLLM's flags (serve RUN_DIR... -- VLLM_ARGS...)")
    return [Path(a) for a in args[:flags]], tuple(args[flags:])


def client_base_url(host: str, port: int) -> str:
    """The URL a client uses: this machine's name for a wildcard address, else the address itself."""
    if host in ("0.0.0.0", "::", ""):  # noqa: S104 - naming the wildcard, not binding it
        return f"http://{socket.getfqdn()}:{port}"
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def _serve_until_interrupted(server: Any, adapters: list[tuple[str, Path]], key_note: str | None) -> None:
    """Print where the server is and what it serves, then watch it until Ctrl-C.

    The interrupt handler covers the announcement too: a Ctrl-C sent the moment the last line appears
    is a clean stop (exit 0), not an interrupted start-up.
    """
    try:
        click.echo(f"base URL:  {client_base_url(server.settings.host, server.port)}")
        for name, run_dir in adapters:
            click.echo(f"adapter:   {name}  ({run_dir})")
        click.echo(f"API key:   {key_note}")
        click.echo(f"log:       {server.log_file}")
        click.echo("Ctrl-C stops the server.")
        sys.stdout.flush()
        while True:
            time.sleep(1.0)
            server.raise_if_exited()
    except KeyboardInterrupt:
        click.echo("stopping the server")


KEY_FILE = ".vllm-api-key"
RUNTIME_LORA_VARIABLE = "VLLM_ALLOW_RUNTIME_LORA_UPDATING"


def write_key(path: Path, key: str) -> Path:
    """The key, readable by its owner only, also when the file was there before with another mode."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.fchmod(fd, 0o600)
            os.write(fd, key.encode())
        finally:
            os.close(fd)
    except OSError as exc:
        raise ConfigError(f"{path}: cannot write the key file ({exc.strerror}); pass --log-dir") from None
    return path


@contextlib.contextmanager
def _signals_raise_interrupt() -> Iterator[None]:
    """SIGTERM and SIGHUP (``kill``, a container stop, a closed terminal) unwind like Ctrl-C.

    So the server we started is stopped and the rows are kept; the exit code says which (143).
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def terminate(signum: int, frame: object) -> None:
        raise Terminated(signum)

    previous = {sig: signal.signal(sig, terminate) for sig in (signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _generation_options(*names: str) -> Callable[[F], F]:
    """Options for NSS's generation parameters, from ``GenerateParameters``: one source for their
    types, choices, help and defaults (the run's saved value wins over the default shown)."""

    def decorate(command: F) -> F:
        for name in reversed(names):
            field = GenerateParameters.model_fields[name]
            flag = "--" + name.replace("_", "-")
            help_text = f"{field.description}  [default: the run's, else {_shown(field.default)}]"
            if field.annotation is bool:
                decorator = click.option(f"{flag}/--no-{flag[2:]}", default=None, help=help_text)
            elif typing.get_origin(field.annotation) is typing.Literal:
                choices = click.Choice(typing.get_args(field.annotation))
                decorator = click.option(flag, type=choices, help=help_text, show_default=False)
            else:
                decorator = click.option(flag, type=field.annotation, help=help_text, show_default=False)
            command = decorator(command)
        return command

    return decorate


def _ca_bundle_option(command: F) -> F:
    return click.option(
        "--ca-bundle",
        type=click.Path(path_type=Path),
        help="PEM file of the CAs to trust for https base URLs (also REMOTE_SYNTH_CA_BUNDLE).  "
        "[default: SSL_CERT_FILE, else certifi's]",
    )(command)


def _shown(value: object) -> str:
    return str(value).lower() if isinstance(value, bool) else str(value)


@cli.command()
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
@_generation_options("num_records")
@click.option(
    "--output",
    type=click.Path(path_type=Path),
    help="Output .csv, .jsonl or .parquet.  [default: RUN_DIR/generate/synthetic_data.csv]",
)
@_generation_options(
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
@_ca_bundle_option
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
    keys = [_api_key(None, name) for name in api_key_envs]
    settings = RemoteSettings.load(base_url=list(base_urls) or None, api_key=keys or None, adapter_name=adapter_name,
                         base_model=base_model, max_concurrency=max_concurrency, prompts_per_request=prompts_per_request,
                         window=window, use_detailed_logs=detailed_errors, retry_deadline=retry_deadline,
                         log_dir=log_dir, priority=priority, cache_salt=cache_salt,
                         extra_headers=_headers(headers) or None, extra_body=_json_object("--extra-body", extra_body),
                         load_adapter=load_adapter, server_adapter_path=server_adapter_path,
                         adapter_check=adapter_check, share=share, session_affinity=session_affinity,
                         wait_for_server=wait_for_server, ca_bundle=ca_bundle)  # fmt: skip
    overrides = {k: v for k, v in params.items() if v is not None}
    target = OutputFile(output if output is not None else run.output_file).check()
    journal_path = Journal.path_for(target.path)
    _check_existing(target.path, journal_path, resume=resume, overwrite=overwrite)
    backend = RemoteBackend(run, overrides, settings=settings)
    with _signals_raise_interrupt(), _ProgressBar(backend.config.num_records) as bar:
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


def _headers(values: tuple[str, ...]) -> dict[str, str]:
    headers = {}
    for value in values:
        name, sep, text = value.partition(":")
        if not sep or not name.strip():
            raise ConfigError(f"--header {value!r}: write it as 'Name: value'")
        headers[name.strip()] = text.strip()
    return headers


def _json_object(flag: str, text: str | None) -> dict[str, Any] | None:
    if text is None:
        return None
    try:
        value = json.loads(text)
    except ValueError as exc:
        raise ConfigError(f"{flag}: not JSON ({exc})") from None
    if not isinstance(value, dict):
        raise ConfigError(f"{flag}: give a JSON object, like '{{\"field\": 1}}'")
    return value


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
        raise GenerationFailed(f"{exc}{_remedies(backend.config, series=backend.series is not None)}") from exc
    except RemoteSynthError as exc:
        _save_partial(backend, target)
        raise GenerationFailed(str(exc)) from exc


def _remedies(config: GenerateParameters, *, series: bool = False) -> str:
    """The command-line spelling of the library's advice on invalid records, for this job's settings
    (time series generate without structured outputs, as in NSS)."""
    flags = [f"--temperature {config.temperature / 2:g}"] if config.temperature > 0.05 else []
    if not config.use_structured_generation and not series:
        flags.append("--use-structured-generation")
    return f" On the command line: {' or '.join(flags)}." if flags else ""


def _write_output(target: OutputFile, results: GenerateJobResults) -> Path:
    try:
        return target.write(results.df)
    except OSError as exc:
        kept = f"; the records are kept in {Journal.path_for(target.path)}: --resume writes them"
        raise GenerationFailed(f"cannot write {target.path} ({exc.strerror or exc}){kept}") from None


@cli.group()
def adapters() -> None:
    """Adapters on a running server: list them, load a run's adapter, unload one.

    Loading needs a server started with VLLM_ALLOW_RUNTIME_LORA_UPDATING=1.
    """


@dataclasses.dataclass(frozen=True)
class _Server:
    """A running server as the adapters commands are told it."""

    base_url: str
    api_key_env: str | None
    ca_bundle: Path | None

    def run(self, work: Callable[[InferenceClient], Awaitable[T]]) -> T:
        """``work(client)`` against the server, then the client closed."""
        import asyncio

        from .._transport.client import InferenceClient

        settings = RemoteSettings.load(ca_bundle=self.ca_bundle)

        async def go() -> T:
            client = InferenceClient(
                self.base_url, api_key=_api_key(None, self.api_key_env), ca_bundle=settings.ca_bundle
            )
            try:
                return await work(client)
            finally:
                await client.aclose()

        return asyncio.run(go())


def _server_options(command: F) -> F:
    """``--base-url``, ``--api-key-env`` and ``--ca-bundle``, handed to the command as ``server``."""

    @functools.wraps(command)
    def wrapper(base_url: str, api_key_env: str | None, ca_bundle: Path | None, **kwargs: Any) -> Any:
        return command(server=_Server(base_url, api_key_env, ca_bundle), **kwargs)

    wrapped = _ca_bundle_option(wrapper)
    wrapped = click.option("--api-key-env", help="Name of an environment variable holding the server's API key.")(
        wrapped
    )
    return typing.cast(F, click.option("--base-url", required=True, help="The running server.")(wrapped))


@adapters.command("list")
@_server_options
def adapters_list(server: _Server) -> None:
    """What the server serves: base models and the adapters on them."""
    from .._transport.adapters import served_models

    for model in server.run(served_models):
        kind = f"adapter on {model.parent}" if model.is_adapter else "base model"
        click.echo(f"{model.id}\t{kind}")


@adapters.command("load")
@click.argument("run_dir", type=click.Path(path_type=Path))
@_server_options
@click.option("--adapter-name", help="Name to serve it under (default: derived from its files).")
@click.option("--server-adapter-path", help="The adapter's directory on the server's machine (default: the run's).")
def adapters_load(run_dir: Path, server: _Server, adapter_name: str | None, server_adapter_path: str | None) -> None:
    """Load RUN_DIR's adapter into the running server (nothing happens if it is served already)."""
    from .._server.launch import adapter_name_for
    from .._transport.adapters import register_adapter

    run = RunDirectory.open(run_dir).check()
    name = adapter_name or adapter_name_for(run)
    path = server_adapter_path or str(run.adapter_dir)
    loaded = server.run(lambda client: register_adapter(client, name, path))
    click.echo(f"loaded {name}" if loaded else f"{name} is already served")


@adapters.command("unload")
@click.argument("name")
@_server_options
def adapters_unload(name: str, server: _Server) -> None:
    """Stop serving adapter NAME."""
    from .._transport.adapters import unregister_adapter
    from .._transport.client import redact_url

    if not server.run(lambda client: unregister_adapter(client, name)):
        raise ConfigError(
            f"{name} is not served by {redact_url(server.base_url)} (or it does not unload adapters at runtime)"
        )
    click.echo(f"unloaded {name}")


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


class _ProgressBar:
    """valid/target, valid fraction and one rate (valid records/s since generation began), on stderr.

    Before generation it shows what the job waits for ("starting vLLM… 35 s"); log lines go
    through it, so they do not break the bar. Off a terminal, the bar is off and the waiting is
    a line every ``STATUS_EVERY`` seconds.
    """

    STATUS_EVERY = 15.0
    FORMAT = "{desc}: {percentage:3.0f}%|{bar}| {n_fmt}/{total_fmt} [{elapsed}{postfix}]"

    def __init__(self, total: int) -> None:
        from tqdm import tqdm
        from tqdm.contrib.logging import logging_redirect_tqdm

        self._total = total
        self._bar = tqdm(total=total, unit="rec", desc="valid records", disable=None, file=sys.stderr,
                         bar_format=self.FORMAT)  # fmt: skip
        self._logs = logging_redirect_tqdm()
        self._last_status = -self.STATUS_EVERY

    def status(self, text: str) -> None:
        if not self._bar.disable:
            self._bar.set_description_str(text)
        elif time.monotonic() - self._last_status >= self.STATUS_EVERY:
            self._last_status = time.monotonic()
            click.echo(text, err=True)

    def update(self, progress: Progress) -> None:
        self._bar.set_description_str("valid records", refresh=False)
        self._bar.update(min(progress.valid, self._total) - self._bar.n)
        self._bar.set_postfix_str(f"valid {progress.valid_fraction:.2f}, {progress.records_per_second:.0f} rec/s")

    def __enter__(self) -> _ProgressBar:
        self._logs.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self._bar.close()
        self._logs.__exit__(None, None, None)


if __name__ == "__main__":  # pragma: no cover
    main()
