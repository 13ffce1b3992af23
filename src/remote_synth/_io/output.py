"""Writing results: CSV (NSS's format), JSON lines or Parquet, chosen by the file's suffix.

The target is checked before generation starts, and written atomically, so a
bad path costs nothing and a failed write never leaves half a file. Files get
the mode the user's umask gives (0644 under umask 022), like any other tool's.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path

import pandas as pd

from .._exceptions import ConfigError

__all__ = ["FORMATS", "OutputFile", "write_artifacts", "write_atomically"]

FORMATS = (".csv", ".jsonl", ".parquet")


def current_umask() -> int:
    """The process umask (reading it means setting it; it is set straight back)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


NAME_MAX = 255
"""Bytes in a file name on Linux and macOS file systems."""
NAME_OVERHEAD = len(".journal") + len("..12345678.tmp")
"""What the journal (``<name>.journal``) and an atomic write (``.<name>.XXXXXXXX.tmp``) add to the name."""


class OutputFile:
    """Where results go; ``check()`` before generating, ``write(df)`` after."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path).expanduser()
        if self.path.suffix.lower() not in FORMATS:
            raise ConfigError(f"--output {self.path}: unknown format; use a file ending in {', '.join(FORMATS)}")

    @property
    def partial_path(self) -> Path:
        """Where rows go when generation stops before the target."""
        return self.path.with_name(f"{self.path.stem}.partial{self.path.suffix}")

    def check(self) -> OutputFile:
        """Fail now, not after an hour of generation, if the file cannot be written."""
        longest = len(os.fsencode(self.path.name)) + NAME_OVERHEAD  # first: stat() itself fails on a name too long
        if longest > NAME_MAX:
            raise ConfigError(f"--output: the file name is too long ({longest - NAME_OVERHEAD} bytes; at most "
                              f"{NAME_MAX - NAME_OVERHEAD}, with room for the journal's and the temporary file's)")  # fmt: skip
        try:
            if self.path.is_dir():
                raise ConfigError(f"--output {self.path}: is a directory; name a file")
            blocking = next((p for p in self.path.parents if p.exists() and not p.is_dir()), None)
        except OSError as exc:  # a folder name too long, no permission to look
            raise ConfigError(f"--output {self.path}: cannot use that path ({exc.strerror}); choose another") from None
        if blocking is not None:
            raise ConfigError(f"--output {self.path}: {blocking} is a file, not a directory; choose another path")
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with tempfile.NamedTemporaryFile(dir=self.path.parent, prefix=".remote-synth-check-"):
                pass
        except OSError as exc:
            raise ConfigError(
                f"--output {self.path}: cannot write there ({exc.strerror}); choose another path"
            ) from None
        if self.path.suffix.lower() == ".parquet":
            try:
                import pyarrow  # noqa: F401
            except ImportError:
                raise ConfigError("--output: parquet needs pyarrow (pip install pyarrow)") from None
        return self

    def write(self, df: pd.DataFrame, path: Path | None = None) -> Path:
        target = path or self.path
        suffix = target.suffix.lower()
        if suffix == ".csv":
            return write_atomically(target, lambda tmp: df.to_csv(tmp, index=False))
        if suffix == ".jsonl":
            return write_atomically(
                target, lambda tmp: df.to_json(tmp, orient="records", lines=True, force_ascii=False)
            )
        return write_atomically(target, lambda tmp: df.to_parquet(tmp, index=False))

    @property
    def artifacts_dir(self) -> Path:
        """Where files a job leaves beside its output go (NSS 0.1.16's flexible time-series audit)."""
        return self.path.with_name(f"{self.path.stem}.artifacts")


def write_atomically(target: Path, write: Callable[[Path], object]) -> Path:
    """``write(tmp)`` into a temporary file beside ``target``, then renamed over it: a failed
    write never leaves half a file. The file gets the mode the umask gives."""
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o666 & ~current_umask())  # mkstemp makes 0600
    finally:
        os.close(fd)
    tmp = Path(tmp_name)
    try:
        write(tmp)
        tmp.replace(target)
    finally:
        tmp.unlink(missing_ok=True)
    return target


def write_artifacts(folder: Path, files: Mapping[str, str]) -> list[Path]:
    """Each named text as a file in ``folder`` (made if missing), each written atomically."""
    return [write_atomically(folder / name, _text_writer(text)) for name, text in files.items()]


def _text_writer(text: str) -> Callable[[Path], object]:
    def write(path: Path) -> int:
        return path.write_text(text, encoding="utf-8")

    return write
