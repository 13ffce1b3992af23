"""``remote-synth serve``: one vLLM for the adapters of one or more run directories, until Ctrl-C."""

from __future__ import annotations

import dataclasses
import os
import secrets
import socket
import sys
import time
from pathlib import Path
from typing import Any

import click

from .._exceptions import ConfigError
from .._settings import RemoteSettings
from ..nss.rundir import RunDirectory
from .options import api_key_from, every, settings_options, take_settings
from .progress import with_log_line
from .signals import signals_raise_interrupt

SERVE_SETTINGS = (
    "adapter_name", "max_model_len", "max_loras", "max_cpu_loras", "offline", "server_log", "log_dir", "adapter_store",
    "otlp_traces_endpoint",
)  # fmt: skip
"""``RemoteSettings`` fields that are ``serve`` flags, besides --base-model and --host."""


@click.command(context_settings={"ignore_unknown_options": True})
@click.argument("args", nargs=-1, required=True, type=click.UNPROCESSED, metavar="RUN_DIR... [-- VLLM_ARGS...]")
@settings_options("base_model", "host")
@click.option("--port", type=int, default=8000, help="Port to listen on.")
@click.option("--api-key", help="API key clients must send (visible in `ps`: prefer --api-key-env).")
@click.option("--api-key-env", help="Name of an environment variable holding the API key.")
@click.option("--insecure", is_flag=True, help="Serve beyond loopback with no key: every route open to anyone.")
@settings_options(*SERVE_SETTINGS, flags={"offline": "--offline/--online", "server_log": "--log-file"})
@click.option(
    "--runtime-adapters", is_flag=True, help="Let clients load and unload adapters (`adapters load`, --load-adapter)."
)
def serve(args: tuple[str, ...], port: int, api_key: str | None, api_key_env: str | None, insecure: bool,
          runtime_adapters: bool, **values: Any) -> None:  # fmt: skip
    """Serve the adapters of one or more RUN_DIRs (one base model) with vLLM until Ctrl-C.

    Every route but /health needs the key. Beyond loopback a key must be given (or --insecure).
    vLLM's own flags go after `--` (e.g. `-- --tensor-parallel-size 2 --gpu-memory-utilization 0.8`).
    """
    from .._server.launch import files_dir, is_loopback, serve_settings
    from .._server.vllm import VllmServer, port_is_free, require_vllm

    require_vllm()  # before anything is written or said
    run_dirs, vllm_args = _split_pass_through(args)
    key = api_key_from(api_key, api_key_env)
    settings = RemoteSettings.load(port=port, api_key=key, **take_settings(values))
    host = settings.host
    if not is_loopback(host) and key is None and not insecure:
        raise ConfigError(
            f"--host {host} listens beyond this machine, so clients need a key: pass --api-key-env NAME "
            "(or --api-key), or --insecure to serve with every route open"
        )
    key_note = f"from ${api_key_env}" if api_key_env else "as given" if api_key else None
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
        key_file = files_dir(runs[0], settings) / f"{KEY_FILE}-{port}"  # one per serve: two may run
        key_note = f"random, written to {write_key(key_file, key)}"
    server = VllmServer(dataclasses.replace(launch, api_key=key))
    adapters = [
        (launch.adapter_name, runs[0].path),
        *((n, r.path) for (n, _), r in zip(launch.more_adapters, runs[1:], strict=True)),
    ]
    with signals_raise_interrupt():
        try:
            click.echo(f"starting vLLM for {len(adapters)} adapter(s) on {host}:{port} (log: {server.log_file})")
            server.start()
            say = every(2.0, lambda waited: click.echo(with_log_line(f"starting vLLM… {waited:.0f} s", server)))
            server.wait_ready(on_wait=say)
            _serve_until_interrupted(server, adapters, key_note)
        finally:
            server.stop()  # a second Ctrl-C while stopping kills the group at once


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
        if server.settings.adapter_store is not None:
            click.echo(f"store:     {server.settings.adapter_store}  (adapters published there load on first request)")
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
