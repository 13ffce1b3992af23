"""Exit codes by phase, and how the library's errors become one line on stderr.

0 done; 2 bad input found before generation (run directory, parameters, URL, API key, adapter,
output path, a journal that is another job's); 1 once generation has started, or when a server
fails (a launched one that does not start, one that goes away for good, a full disk); 130
interrupted (Ctrl-C); 143 terminated (SIGTERM, or SIGHUP, handled alike).
"""

from __future__ import annotations

import sys
from typing import NoReturn

import click

from .._exceptions import APIError, APIStatusError, ConfigError, Remedy, RemoteSynthError, ServerError, StorageError

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_BAD_INPUT = 2
EXIT_INTERRUPTED = 130
EXIT_TERMINATED = 143


class Terminated(KeyboardInterrupt):
    """SIGTERM or SIGHUP: unwinds like Ctrl-C (servers stopped, rows kept), exits 143."""


class GenerationFailed(Exception):
    """Anything that ends a job once generation has started: exit 1, never 2."""


REMEDIES: dict[Remedy, str] = {
    "adapter_name": "; pass the served name with --adapter-name, or launch it with `remote-synth serve RUN_DIR`",
    "max_model_len": "; launch the server with a larger --max-model-len",
    "base_url": "; check --base-url and that the server runs",
    "api_key": "; pass the right key with --api-key-env NAME or REMOTE_SYNTH_API_KEY",
    "runtime_adapters": ": start it with `remote-synth serve --runtime-adapters`",
    "request_timeout": "; give it longer with REMOTE_SYNTH_REQUEST_TIMEOUT=SECONDS",
}
"""The library's remedies (``RemoteSynthError.remedy``) as command-line advice."""


def setup_exit_code(exc: RemoteSynthError) -> int:
    """Before generation: what the user gave is wrong (2), or a server or the disk failed (1)."""
    if isinstance(exc, (ServerError, StorageError)):
        return EXIT_FAILURE
    if isinstance(exc, APIStatusError) and exc.status_code >= 500:
        return EXIT_FAILURE
    if isinstance(exc, (ConfigError, APIError)):
        return EXIT_BAD_INPUT
    return EXIT_FAILURE


def fail(message: str, code: int) -> NoReturn:
    click.echo(f"remote-synth: error: {message}", err=True)
    sys.exit(code)
