"""Base URLs in messages: the one way credentials in them are masked (standard library only, so the
settings, which check URLs before anything starts, and the transport, which uses them, share it)."""

from __future__ import annotations

import urllib.parse

__all__ = ["redact_url"]


def redact_url(url: str) -> str:
    """``http://user:secret@host`` → ``http://***@host``: messages and logs never show credentials."""
    parts = urllib.parse.urlsplit(url)
    if "@" not in parts.netloc:
        return url
    return parts._replace(netloc="***@" + parts.netloc.rpartition("@")[2]).geturl()
