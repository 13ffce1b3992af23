"""``--log-format json``: one JSON object a log line, for a log shipper (Loki, Fluent Bit, Vector).

Ten lines of the standard library rather than a dependency. Each object has ``time`` (UTC, ISO
8601), ``level``, ``logger`` and ``message`` (the line as text would show it), and ``exception``
when one is logged. What the text lines hold is what these hold: no record contents unless
detailed errors are on, never a key.
"""

from __future__ import annotations

import datetime
import json
import logging

__all__ = ["JsonFormatter", "use_log_format"]


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line = {
            "time": datetime.datetime.fromtimestamp(record.created, datetime.UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return json.dumps(line, ensure_ascii=False)


def use_log_format(log_format: str) -> None:
    """Every handler of the root logger writes ``log_format`` (``text`` leaves them as they are)."""
    if log_format == "json":
        for handler in logging.getLogger().handlers:
            handler.setFormatter(JsonFormatter())
