"""The job journal: every completion a job used, in order, so a killed job resumes exactly.

Next to the output (``synthetic_data.csv.journal``), one line per request that
came back: a JSON object of the completion texts (``c``), why each ended (``f``, vLLM's
``finish_reason``: NSS 0.1.16's first-batch rule reads it) and the tokens each took (``t``),
written (to the kernel) before
they are validated, and fsync'd at each NSS batch end. The first line is a
header that names the job: adapter, schema, prompt and every generation
setting.

Resuming replays those completions through the same validation and NSS batch
accounting, so the batches, counters, stop rules and records come out exactly
as in the first run: nothing is lost and nothing is counted twice. Only requests
in flight when the process died are lost (they were never used). Replaying
costs validation time (tens of thousands of records per second), not server time.

A line cut short (a kill mid-write, a full disk) is dropped on resume; any other
unreadable line means the file is not a journal we wrote, and is refused.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

from .._exceptions import ConfigError, JournalMismatchError, StorageError

__all__ = ["Journal", "JournalEntry", "job_header"]

logger = logging.getLogger("remote_synth.journal")

FORMAT = "remote-synth journal"
VERSION = 2
"""2: entries are objects with finish reasons and tokens (1: arrays of texts)."""


class JournalEntry(NamedTuple):
    """One request's completions as used: texts, and (where known) finish reasons and tokens."""

    texts: list[str]
    finish_reasons: Sequence[str | None] = ()
    tokens: Sequence[int] = ()


class Journal:
    """Append-only record of a job's completions.

    ```python
    journal = Journal(Journal.path_for(output), header)
    entries = journal.open(resume=True)     # what the earlier run used (empty when new)
    journal.append(["{...}\\n", ...])        # as each request comes back
    journal.commit()                          # at each batch end: durable
    journal.remove()                          # once the output is written
    ```
    """

    def __init__(self, path: str | Path, header: Mapping[str, object]) -> None:
        self.path = Path(path)
        # As it reads back from JSON (tuples become lists), so that comparing is exact.
        self.header = json.loads(json.dumps({"format": FORMAT, "version": VERSION, **header}, default=str))
        self._fd: int | None = None
        self._offset = 0

    @staticmethod
    def path_for(output: str | Path) -> Path:
        output = Path(output)
        return output.with_name(output.name + ".journal")

    # -- opening ---------------------------------------------------------------------------

    def open(self, *, resume: bool) -> list[JournalEntry]:
        """Create the journal, or (``resume``) check it is this job's and return its completions."""
        if resume and self.path.exists():
            entries = self._read()
            with self._storage("open"):
                self._fd = os.open(self.path, os.O_WRONLY)
                os.ftruncate(self._fd, self._offset)  # drop a last line cut short
                os.lseek(self._fd, self._offset, os.SEEK_SET)
            return entries
        with self._storage("create"):
            self._fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o666)
        self._offset = 0
        self._write_line(self.header)
        self.commit()
        _sync_dir(self.path.parent)
        return []

    def _read(self) -> list[JournalEntry]:
        """Entries of a journal on disk; a last line without its newline was cut short and is dropped."""
        try:
            data = self.path.read_bytes()
        except OSError as exc:
            raise ConfigError(f"{self.path}: cannot read the journal ({exc.strerror})") from None
        *complete, torn = data.split(b"\n")
        if not complete:
            raise ConfigError(f"{self.path}: not a remote-synth journal (no header)")
        self._check_header(complete[0])
        entries: list[JournalEntry] = []
        for number, line in enumerate(complete[1:], start=2):
            entry = _entry(line)
            if entry is None:
                raise ConfigError(f"{self.path}: line {number} is not a journal entry (damaged)")
            entries.append(entry)
        if torn:
            logger.warning("%s: dropping a last entry that was cut short", self.path)
        self._offset = len(data) - len(torn)
        return entries

    def _check_header(self, line: bytes) -> None:
        try:
            theirs = json.loads(line)
        except ValueError:
            theirs = None
        if not isinstance(theirs, dict) or theirs.get("format") != FORMAT:
            raise ConfigError(f"{self.path}: not a remote-synth journal")
        for name, ours in self.header.items():
            if theirs.get(name) != ours:
                raise JournalMismatchError(self.path, name, ours, theirs.get(name))

    # -- writing ---------------------------------------------------------------------------

    def append(
        self, texts: Sequence[str], finish_reasons: Sequence[str | None] = (), tokens: Sequence[int] = ()
    ) -> None:
        """One request's completions, handed to the kernel now (survives a kill; fsync'd by ``commit``)."""
        self._write_line({"c": list(texts), "f": list(finish_reasons), "t": list(tokens)})

    def commit(self) -> None:
        """Make everything appended so far durable (a batch end)."""
        with self._storage("sync"):
            os.fsync(self._fd_or_fail())

    def close(self) -> None:
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.fsync(self._fd)
            os.close(self._fd)
            self._fd = None

    def remove(self) -> None:
        """The job's output is written: the journal is no longer needed."""
        self.close()
        self.path.unlink(missing_ok=True)

    def _write_line(self, value: object) -> None:
        data = (json.dumps(value, ensure_ascii=False) + "\n").encode()
        fd = self._fd_or_fail()
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
        except OSError as exc:
            with contextlib.suppress(OSError):  # leave no half line behind for the next append
                os.ftruncate(fd, self._offset)
                os.lseek(fd, self._offset, os.SEEK_SET)
            raise self._error("write", exc) from None
        self._offset += len(data)

    def _fd_or_fail(self) -> int:
        if self._fd is None:
            raise RuntimeError("open() the journal first")
        return self._fd

    @contextlib.contextmanager
    def _storage(self, what: str) -> Iterator[None]:
        try:
            yield
        except OSError as exc:
            raise self._error(what, exc) from None

    def _error(self, what: str, exc: OSError) -> StorageError:
        return StorageError(f"cannot {what} the journal {self.path}: {exc.strerror or exc}", errno=exc.errno)


def _entry(line: bytes) -> JournalEntry | None:
    try:
        value = json.loads(line)
    except ValueError:
        return None
    if not isinstance(value, dict):
        return None
    texts, reasons, tokens = value.get("c"), value.get("f", []), value.get("t", [])
    if not isinstance(texts, list) or not all(isinstance(t, str) for t in texts):
        return None
    if not isinstance(reasons, list) or not all(r is None or isinstance(r, str) for r in reasons):
        return None
    if not isinstance(tokens, list) or not all(type(n) is int for n in tokens):
        return None
    return JournalEntry(texts, reasons, tokens)


def _sync_dir(directory: Path) -> None:
    """The journal's directory entry, durable too (best effort: not every filesystem allows it)."""
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def job_header(
    adapter: str, schema: object, prompt: str, config: Mapping[str, Any], body: Mapping[str, Any]
) -> dict[str, object]:
    """What makes two runs the same job: adapter, schema, prompt, settings and the request's sampling.

    One named field per setting (``validation.x``), so a mismatch on resume names the field.
    """
    header: dict[str, object] = {"adapter": adapter, "schema": _digest(schema), "prompt": _digest(prompt)}
    header.update(_flatten(config))
    header.update({f"request.{k}": v for k, v in sorted(body.items()) if k != "structured_outputs"})
    header["request.structured_outputs"] = _digest(body.get("structured_outputs"))
    return header


def _digest(value: object) -> str:
    text = value if isinstance(value, str) else json.dumps(value, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _flatten(values: Mapping[str, Any], prefix: str = "") -> dict[str, object]:
    """``{"validation": {"x": 1}}`` → ``{"validation.x": 1}``: one named field per setting."""
    flat: dict[str, object] = {}
    for key, value in values.items():
        if isinstance(value, Mapping):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat
