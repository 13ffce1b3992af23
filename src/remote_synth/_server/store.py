"""An adapter store: the directory vLLM's filesystem resolver loads adapters from, a folder a name.

A vLLM started with ``VLLM_LORA_RESOLVER_CACHE_DIR=<store>`` and runtime adapter updating on
loads ``<store>/<name>/`` the first time a request names ``<name>``, on every replica that mounts
the store: adapters placed on demand, without registering them anywhere. The resolver takes a
folder only when its ``adapter_config.json`` names the server's ``--model`` as its base, so a
published copy names the base model it will be served on.

Publishing writes the copy under a hidden temporary name in the store and renames it into
place (a replica never sees half an adapter); publishing the same adapter again is a no-op, and
another adapter under a name already taken is refused. A manifest in each folder records what
was published (a digest of the run's adapter files) so that both can be told apart.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
import shutil
import tempfile
from pathlib import Path

from .._exceptions import ConfigError
from ..nss.rundir import RunDirectory
from .launch import adapter_name_for

__all__ = ["MANIFEST", "Published", "publish_adapter", "store_ranks"]

MANIFEST = "remote-synth-adapter.json"
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
"""A store folder's name is a request's ``model``: one path segment, nothing hidden."""


@dataclasses.dataclass(frozen=True)
class Published:
    name: str
    path: Path
    created: bool
    """False: the same adapter was published there already."""


def publish_adapter(
    run: RunDirectory, store: Path, *, name: str | None = None, base_model: str | None = None
) -> Published:
    """Copy ``run``'s adapter into ``store`` as ``name`` (default: its derived name), for ``base_model``
    (default: the base it was trained on, which is also what ``serve`` launches by default)."""
    name = adapter_name_for(run) if name is None else name
    if not _NAME.fullmatch(name):
        raise ConfigError(f"{name!r} cannot name a folder of the adapter store (letters, digits, '.', '_', '-')")
    if not store.is_dir():
        raise ConfigError(f"{store}: the adapter store is not a directory")
    manifest = {
        "name": name,
        "digest": adapter_digest(run.adapter_dir),
        "base_model": base_model or run.metadata.model_name_or_path,
    }
    target = store / name
    if target.exists():
        return _already(target, manifest)
    try:
        staging = Path(tempfile.mkdtemp(prefix=f".{name}.", dir=store))
    except OSError as exc:
        raise ConfigError(f"{store}: cannot write to the adapter store ({exc.strerror})") from None
    try:
        _stage(run.adapter_dir, staging, manifest)
        os.rename(staging, target)
    except OSError as exc:
        if target.exists():  # another publisher won the race: the same adapter, or refused
            return _already(target, manifest)
        raise ConfigError(f"{target}: cannot publish the adapter ({exc.strerror})") from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return Published(name, target, created=True)


def adapter_digest(adapter_dir: Path) -> str:
    """The adapter's files, by relative path and content: two adapters differ in it. NSS's run
    metadata (``metadata*.json``: the run's name) is left out, so a copied run is the same adapter."""
    digest = hashlib.sha256()
    files = (p for p in adapter_dir.rglob("*") if p.is_file() and not _is_run_metadata(p, adapter_dir))
    for path in sorted(files):
        digest.update(str(path.relative_to(adapter_dir)).encode() + b"\0")
        with path.open("rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                digest.update(chunk)
        digest.update(b"\0")
    return digest.hexdigest()


def _is_run_metadata(path: Path, adapter_dir: Path) -> bool:
    return path.parent == adapter_dir and path.name.startswith("metadata") and path.suffix == ".json"


def store_ranks(store: Path) -> list[int]:
    """The LoRA ranks of the adapters published in ``store`` (a server must hold the largest)."""
    ranks = []
    for config in store.glob(f"*/{MANIFEST}"):
        try:
            ranks.append(int(json.loads((config.parent / "adapter_config.json").read_text())["r"]))
        except (OSError, ValueError, KeyError, TypeError):
            continue
    return ranks


def _stage(adapter_dir: Path, staging: Path, manifest: dict[str, str]) -> None:
    """The adapter's files, its config naming the base it is served on, and the manifest, flushed."""
    shutil.copytree(adapter_dir, staging, dirs_exist_ok=True)
    config_file = staging / "adapter_config.json"
    config = json.loads(config_file.read_text())
    config["base_model_name_or_path"] = manifest["base_model"]
    config_file.write_text(json.dumps(config, indent=2))
    (staging / MANIFEST).write_text(json.dumps(manifest, indent=2))
    for path in staging.rglob("*"):
        if path.is_file():
            with path.open("rb") as f:
                os.fsync(f.fileno())
    os.chmod(staging, 0o755)  # mkdtemp's 0700 would hide it from a server running as another user


def _already(target: Path, manifest: dict[str, str]) -> Published:
    """``target`` exists: the same adapter for the same base is a no-op, anything else is refused."""
    try:
        there = json.loads((target / MANIFEST).read_text())
    except (OSError, ValueError):
        raise ConfigError(
            f"{target} exists and was not published by remote-synth: choose another name or remove it"
        ) from None
    if there.get("digest") != manifest["digest"]:
        raise ConfigError(f"{target}: another adapter is published under the name {manifest['name']!r}")
    if there.get("base_model") != manifest["base_model"]:
        raise ConfigError(
            f"{target}: this adapter is published for base model {there.get('base_model')!r}, "
            f"not {manifest['base_model']!r}"
        )
    return Published(manifest["name"], target, created=False)
