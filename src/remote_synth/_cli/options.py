"""Options shared by the commands, derived from the models where the models know them.

``generation_options`` makes flags of NSS's ``GenerateParameters`` fields and ``settings_options``
of ``RemoteSettings`` fields: their types, choices, help (the field's docstring) and defaults come
from one place, so a new setting is one field there and its name in a command's list.
"""

from __future__ import annotations

import json
import os
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from .._exceptions import ConfigError
from ..nss.params import GenerateParameters

F = TypeVar("F", bound=Callable[..., Any])


def api_key_from(value: str | None, env_name: str | None) -> str | None:
    if value:
        return value
    if env_name:
        key = os.environ.get(env_name)
        if not key:
            raise ConfigError(f"--api-key-env {env_name}: that environment variable is not set")
        return key
    return None


def every(seconds: float, report: Callable[[float], None]) -> Callable[[float], None]:
    """``report`` at most once per ``seconds`` of the waited time it is given (a line, not a flood)."""
    last = {"at": 0.0}

    def maybe(waited: float) -> None:
        if waited - last["at"] >= seconds:
            last["at"] = waited
            report(waited)

    return maybe


def generation_options(*names: str) -> Callable[[F], F]:
    """Options for NSS's generation parameters, from ``GenerateParameters``: one source for their
    types, choices, help and defaults (the run's saved value wins over the default shown)."""

    def decorate(command: F) -> F:
        for name in reversed(names):
            field = GenerateParameters.model_fields[name]
            flag = "--" + name.replace("_", "-")
            help_text = f"{field.description}  [default: the run's, else {shown(field.default)}]"
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


def ca_bundle_option(command: F) -> F:
    return click.option(
        "--ca-bundle",
        type=click.Path(path_type=Path),
        help="PEM file of the CAs to trust for https base URLs (also REMOTE_SYNTH_CA_BUNDLE).  "
        "[default: SSL_CERT_FILE, else certifi's]",
    )(command)


def shown(value: object) -> str:
    return str(value).lower() if isinstance(value, bool) else str(value)


def parse_headers(values: tuple[str, ...]) -> dict[str, str]:
    headers = {}
    for value in values:
        name, sep, text = value.partition(":")
        if not sep or not name.strip():
            raise ConfigError(f"--header {value!r}: write it as 'Name: value'")
        headers[name.strip()] = text.strip()
    return headers


def json_object(flag: str, text: str | None) -> dict[str, Any] | None:
    if text is None:
        return None
    try:
        value = json.loads(text)
    except ValueError as exc:
        raise ConfigError(f"{flag}: not JSON ({exc})") from None
    if not isinstance(value, dict):
        raise ConfigError(f"{flag}: give a JSON object, like '{{\"field\": 1}}'")
    return value
