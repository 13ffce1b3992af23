"""Options shared by the commands, derived from the models where the models know them.

``generation_options`` makes flags of NSS's ``GenerateParameters`` fields and ``settings_options``
of ``RemoteSettings`` fields: their types, choices, help (the field's docstring) and defaults come
from one place, so a new setting is one field there and its name in a command's list.
"""

from __future__ import annotations

import json
import os
import re
import types
import typing
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar

import click
from pydantic import BaseModel
from pydantic.fields import FieldInfo

from .._exceptions import ConfigError
from .._settings import RemoteSettings
from ..nss.params import LEGACY_ALIASES, GenerateParameters

F = TypeVar("F", bound=Callable[..., Any])


def api_key_from(value: str | None, env_name: str | None) -> str | None:
    if value:
        return value
    if env_name:
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", env_name):  # perhaps the key itself: never echo it
            raise ConfigError("--api-key-env takes the NAME of an environment variable holding the key, "
                              "and what was given is not a variable name (it is not shown)")  # fmt: skip
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


#: Flags NSS's names had before 0.1.16, kept working (``--use-structured-generation``).
LEGACY_FLAGS = {f"structured_generation.{field}": "--" + old.replace("_", "-") for old, field in LEGACY_ALIASES.items()}


def generation_options(*paths: str) -> Callable[[F], F]:
    """Options for NSS's generation parameters, from ``GenerateParameters``: one source for their
    types, choices, help and defaults (the run's saved value wins over the default shown).

    A nested field is named by its path (``structured_generation.enabled``): its flag is the path
    with dashes (``--structured-generation-enabled``), its keyword ``structured_generation__enabled``
    (``nest_overrides`` puts it back), and NSS's flat name before 0.1.16 stays a second flag.
    """

    def decorate(command: F) -> F:
        for path in reversed(paths):
            field = _generation_field(path)
            flags = ["--" + path.replace(".", "-").replace("_", "-")]
            if path in LEGACY_FLAGS and LEGACY_FLAGS[path] not in flags:
                flags.append(LEGACY_FLAGS[path])
            if _value_type(field.annotation) is bool:
                flags = [f"{flag}/--no-{flag[2:]}" for flag in flags]
            help_text = f"{field.description}  [default: the run's, else {shown(field.default)}]"
            command = _field_option(flags, path.replace(".", "__"), field.annotation, help_text)(command)
        return command

    return decorate


def _generation_field(path: str) -> FieldInfo:
    model: type[BaseModel] = GenerateParameters
    *parents, name = path.split(".")
    for parent in parents:
        model = typing.cast(type[BaseModel], model.model_fields[parent].annotation)
    return model.model_fields[name]


def nest_overrides(values: Mapping[str, Any]) -> dict[str, Any]:
    """Given options (``structured_generation__enabled``) as the nested overrides of ``GenerateParameters``."""
    nested: dict[str, Any] = {}
    for key, value in values.items():
        if value is None:
            continue
        *parents, name = key.split("__")
        into = nested
        for parent in parents:
            into = into.setdefault(parent, {})
        into[name] = value
    return nested


def settings_options(*names: str, flags: Mapping[str, str] | None = None) -> Callable[[F], F]:
    """Options for ``RemoteSettings`` fields, handed to the command under the field's name.

    Type, choices and help (the field's docstring) come from the field; ``flags`` renames one
    (``{"use_detailed_logs": "--detailed-errors"}``, or ``"--offline/--online"`` for a pair).
    Each option defaults to None, so what is not given falls through to ``REMOTE_SYNTH_*`` and
    then to the field's default, which the help shows.
    """
    renamed = dict(flags or {})

    def decorate(command: F) -> F:
        for name in reversed(names):
            field = RemoteSettings.model_fields[name]
            flag = renamed.get(name) or "--" + name.replace("_", "-")
            default = field.get_default(call_default_factory=True)
            on_flag = default is False and "/" not in flag
            shown_default = f"  [default: {shown(default)}]" if default not in (None, {}, []) and not on_flag else ""
            help_text = f"{(field.description or '').strip()}{shown_default}"
            command = _field_option([flag], name, field.annotation, help_text)(command)
        return command

    return decorate


def _field_option(flags: list[str], name: str, annotation: object, help_text: str) -> Callable[[F], F]:
    """One option for a model field: a flag (a pair with ``/``) for a bool, choices for a Literal."""
    kind = _value_type(annotation)
    if kind is bool:
        if all("/" in flag for flag in flags):
            return click.option(*flags, name, default=None, help=help_text)
        return click.option(*flags, name, is_flag=True, default=None, help=help_text)
    if typing.get_origin(kind) is typing.Literal:
        return click.option(*flags, name, type=click.Choice(typing.get_args(kind)), help=help_text, show_default=False)
    if isinstance(kind, type) and issubclass(kind, Path):
        return click.option(*flags, name, type=click.Path(path_type=Path), help=help_text, show_default=False)
    return click.option(*flags, name, type=kind, help=help_text, show_default=False)


def _value_type(annotation: object) -> Any:
    """``int | None`` → ``int``; ``Annotated[Path, ...]`` (``FilePath``) → ``Path``."""
    if typing.get_origin(annotation) is typing.Annotated:
        return _value_type(typing.get_args(annotation)[0])
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    if args and typing.get_origin(annotation) in (typing.Union, types.UnionType):
        return _value_type(args[0])
    return annotation


def take_settings(values: dict[str, Any]) -> dict[str, Any]:
    """The ``RemoteSettings`` fields among a command's keyword arguments, removed from them."""
    return {name: values.pop(name) for name in list(values) if name in RemoteSettings.model_fields}


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
