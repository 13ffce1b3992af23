"""The progress bar on stderr, and the waiting lines before generation starts."""

from __future__ import annotations

import sys
import time
from typing import Protocol

import click

from .._engine import Progress


class ProgressBar:
    """valid/target, valid fraction and one rate (valid records/s since generation began), on stderr.

    Before generation it shows what the job waits for ("starting vLLM… 35 s"); log lines go
    through it, so they do not break the bar. Off a terminal, the bar is off and the waiting is
    a line every ``STATUS_EVERY`` seconds.
    """

    STATUS_EVERY = 15.0
    FORMAT = "{desc}: {percentage:3.0f}%|{bar}| {n_fmt}/{total_fmt} [{elapsed}{postfix}]"

    def __init__(self, total: int) -> None:
        from tqdm import tqdm
        from tqdm.contrib.logging import logging_redirect_tqdm

        self._total = total
        self._bar = tqdm(total=total, unit="rec", desc="valid records", disable=None, file=sys.stderr,
                         bar_format=self.FORMAT)  # fmt: skip
        self._logs = logging_redirect_tqdm()
        self._last_status = -self.STATUS_EVERY

    def status(self, text: str) -> None:
        if not self._bar.disable:
            self._bar.set_description_str(text)
        elif time.monotonic() - self._last_status >= self.STATUS_EVERY:
            self._last_status = time.monotonic()
            click.echo(text, err=True)

    def update(self, progress: Progress) -> None:
        self._bar.set_description_str("valid records", refresh=False)
        self._bar.update(min(progress.valid, self._total) - self._bar.n)
        self._bar.set_postfix_str(f"valid {progress.valid_fraction:.2f}, {progress.records_per_second:.0f} rec/s")

    def __enter__(self) -> ProgressBar:
        self._logs.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self._bar.close()
        self._logs.__exit__(None, None, None)


class _HasLog(Protocol):
    def log_tail(self, lines: int = ...) -> str: ...


def with_log_line(text: str, server: _HasLog) -> str:
    """``text``, then what a starting server last wrote to its log (the tail of that line)."""
    last = server.log_tail(1).strip()
    return f"{text} | {last[-120:]}" if last else text
