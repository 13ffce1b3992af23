"""Checks shared by the integration tests."""

from __future__ import annotations

import os
import subprocess
import sys

import pandas as pd

from remote_synth import RunDirectory
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


CLI = [sys.executable, "-m", "remote_synth._cli"]
"""The command line, as a user runs it."""


def cli(args: list[str], key: str) -> subprocess.CompletedProcess[str]:
    """``remote-synth ARGS`` with the server's key in ``$K`` (pass ``--api-key-env K``)."""
    return subprocess.run([*CLI, *args], capture_output=True, text=True, env={**os.environ, "K": key}, timeout=900)
