"""``/v1/models``, read in one place: what a server serves, as typed entries.

Every caller (the preflight, readiness, recovery, runtime adapters, the launched server's start)
reads the list through ``parse_models``, so an answer of the wrong shape is one
``MalformedResponseError`` naming the route, never a traceback deep in a caller.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from .._exceptions import ConfigError, MalformedResponseError
from .._naming import AdapterNaming

ENDPOINT = "GET /v1/models"

__all__ = ["ServedModel", "context_length", "parse_models", "request_name", "serves"]


@dataclass(frozen=True)
class ServedModel:
    """One entry of ``/v1/models``: a base model (no parent) or an adapter on one."""

    id: str
    parent: str | None = None
    root: str | None = None
    max_model_len: int | None = None

    @property
    def is_adapter(self) -> bool:
        return self.parent is not None


def parse_models(data: object) -> list[ServedModel]:
    """The entries of a ``/v1/models`` answer (``{"data": [{"id": ...}, ...]}``)."""
    if not isinstance(data, Mapping):
        raise MalformedResponseError("GET /v1/models: the answer is not a JSON object", endpoint=ENDPOINT)
    entries = data.get("data", [])
    if not isinstance(entries, list) or not all(isinstance(e, Mapping) and "id" in e for e in entries):
        raise MalformedResponseError("GET /v1/models: `data` is not a list of models with ids", endpoint=ENDPOINT)
    return [
        ServedModel(
            id=str(e["id"]),
            parent=str(e["parent"]) if e.get("parent") else None,
            root=str(e["root"]) if e.get("root") else None,
            max_model_len=e["max_model_len"] if _is_int(e.get("max_model_len")) else None,
        )
        for e in entries
    ]


def serves(models: Iterable[ServedModel], *names: str) -> bool:
    """Whether every one of ``names`` is listed."""
    served = {m.id for m in models}
    return all(name in served for name in names)


def request_name(models: Iterable[ServedModel], adapter: str, naming: AdapterNaming, base: str | None = None) -> str:
    """The ``model`` a request names ``adapter`` by.

    ``base:adapter`` prefixes the base model (``base``, else the one base the server lists);
    ``auto`` takes the adapter's own name when it is listed (or nothing names it otherwise), and
    ``<base>:<adapter>`` when that is what the list holds.
    """
    listed = list(models)
    if naming == "plain":
        return adapter
    if naming == "base:adapter":
        bases = [m.id for m in listed if not m.is_adapter and ":" not in m.id]
        chosen = base or (bases[0] if len(bases) == 1 else None)
        if chosen is None:
            raise ConfigError(
                f"adapter naming base:adapter: the server lists {len(bases)} base models ({', '.join(bases)}); "
                "name the base model"
            )
        return f"{chosen}:{adapter}"
    if serves(listed, adapter):
        return adapter
    prefixed = [m.id for m in listed if m.id.endswith(f":{adapter}")]
    return prefixed[0] if len(prefixed) == 1 else adapter


def context_length(models: Iterable[ServedModel], adapter: str) -> int | None:
    """The adapter's context: its own, else its parent's or root's, else the smallest the server lists."""
    by_id = {m.id: m for m in models}
    entry = by_id.get(adapter)
    if entry is not None:
        for candidate in (entry, by_id.get(entry.parent or ""), by_id.get(entry.root or "")):
            if candidate is not None and candidate.max_model_len is not None:
                return candidate.max_model_len
    lengths = [m.max_model_len for m in by_id.values() if m.max_model_len is not None]
    return min(lengths) if lengths else None


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)
