"""Checks shared by the tests."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pandas as pd

from remote_synth import RemoteBackend, RunDirectory
from remote_synth.nss import RecordValidator


def rows_valid(df: pd.DataFrame, run: RunDirectory) -> list[str]:
    """Problems of output rows against the schema (empty when every row is valid)."""
    validator = RecordValidator(run.schema)
    problems = []
    for row in df.to_dict("records"):
        record = {k: (int(v) if isinstance(v, float) and v.is_integer() else v) for k, v in row.items()}
        error = validator.check(record)
        if error is not None:
            problems.append(error[0])
    return problems


def journal_then_resume(
    make: Callable[[], RemoteBackend], journal: Path, asked: Callable[[], int]
) -> tuple[pd.DataFrame, pd.DataFrame, RemoteBackend]:
    """A job run with a journal, then run again resuming from it: the first frame, the resumed one,
    and the resumed backend. The resume replays something and asks the server for nothing more
    (``asked()``: requests the server has had)."""
    with make() as first:
        first.open_journal(journal)
        before = first.generate().df
    requests = asked()
    with make() as resumed:
        assert resumed.open_journal(journal, resume=True) > 0
        after = resumed.generate().df
    assert asked() == requests  # every group finished in the replay: nothing asked again
    return before, after, resumed


CLI = [sys.executable, "-m", "remote_synth._cli"]
"""The command line, as a user runs it."""


def cli(args: list[str], key: str) -> subprocess.CompletedProcess[str]:
    """``remote-synth ARGS`` with the server's key in ``$K`` (pass ``--api-key-env K``)."""
    return subprocess.run([*CLI, *args], capture_output=True, text=True, env={**os.environ, "K": key}, timeout=900)
