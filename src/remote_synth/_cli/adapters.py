"""``remote-synth adapters``: list, load and unload adapters on a running server."""

from __future__ import annotations

import dataclasses
import functools
import typing
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import click

from .._exceptions import ConfigError
from .._settings import RemoteSettings
from ..nss.rundir import RunDirectory
from .options import api_key_from, settings_options

if TYPE_CHECKING:
    from .._transport.client import InferenceClient

F = TypeVar("F", bound=Callable[..., Any])
T = TypeVar("T")


@click.group()
def adapters() -> None:
    """Adapters on a running server (list, load, unload) and in an adapter store (publish).

    Loading needs a server started with VLLM_ALLOW_RUNTIME_LORA_UPDATING=1; a server started with
    `serve --adapter-store DIR` loads what is published in DIR on its first request.
    """


@adapters.command("publish")
@click.argument("run_dir", type=click.Path(path_type=Path))
@click.option("--store", required=True, type=click.Path(path_type=Path), help="The adapter store (a directory).")
@click.option("--adapter-name", help="Name to publish it under (default: derived from its files, as generate does).")
@click.option("--base-model", help="The base model the server runs (its --model; default: the run's).")
def adapters_publish(run_dir: Path, store: Path, adapter_name: str | None, base_model: str | None) -> None:
    """Copy RUN_DIR's adapter into the adapter store STORE, where servers load it on first use.

    Atomic (a server never sees half of it) and idempotent; another adapter under a name already
    published is refused.
    """
    from .._server.store import publish_adapter

    run = RunDirectory.open(run_dir).check()
    published = publish_adapter(run, store, name=adapter_name, base_model=base_model)
    click.echo(
        f"published {published.name} in {store}" if published.created else f"{published.name} is already in {store}"
    )


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
                self.base_url, api_key=api_key_from(None, self.api_key_env), ca_bundle=settings.ca_bundle
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

    wrapped = settings_options("ca_bundle")(wrapper)
    wrapped = click.option("--api-key-env", help="Name of an environment variable holding the server's API key.")(
        wrapped
    )
    return typing.cast(F, click.option("--base-url", required=True, help="The running server.")(wrapped))


@adapters.command("list")
@_server_options
def adapters_list(server: _Server) -> None:
    """What the server serves: base models and the adapters on them."""
    for model in server.run(lambda client: client.models()):
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
    from .._urls import redact_url

    if not server.run(lambda client: unregister_adapter(client, name)):
        raise ConfigError(f"{name} is not served by {redact_url(server.base_url)}")
    click.echo(f"unloaded {name}")
