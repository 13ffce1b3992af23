"""The error tree of remote-synth.

    RemoteSynthError
    ├── ConfigError (ValueError)            bad input: settings, parameters, files
    │   ├── RunDirError                     an NSS run directory is missing or corrupt
    │   └── UnsupportedSchemaError          the regex method cannot express a schema
    ├── GenerationError (RuntimeError)      generation stopped prematurely (NSS's error)
    ├── ServerError (RuntimeError)          a vLLM server process we launched failed (exit code, log tail)
    │   └── ServerStartError                it exited or never became ready
    ├── StorageError (OSError)              a journal or output write failed (disk full…)
    └── APIError                            talking to the server failed
        ├── APIConnectionError              no answer: refused, reset, timed out
        │   └── APITimeoutError
        ├── MalformedResponseError          an answer that cannot be read (truncated JSON…)
        ├── ModelMismatchError              an answer from another model than the one asked for
        ├── APIStatusError                  the server answered with an error status
        │   ├── BadRequestError             400
        │   ├── AuthenticationError         401 / 403
        │   ├── NotFoundError               404 (unknown adapter)
        │   └── ServerOverloadedError       429 / 503 / 529: the server (or a gateway) sheds load
        └── ServerCheckError                the server runs but cannot serve this job
            (missing adapter, ignored structured outputs, context too short)

Mistakes in how the library is called (generate before initialize, reuse after
teardown) raise ``BackendStateError``, a ``RuntimeError`` outside the tree, so
``except RemoteSynthError`` never hides a programming bug.
"""

from __future__ import annotations

from typing import Literal, Self

__all__ = [
    "APIConnectionError",
    "APIError",
    "APIStatusError",
    "APITimeoutError",
    "AuthenticationError",
    "BackendStateError",
    "BadRequestError",
    "ConfigError",
    "GenerationError",
    "JournalMismatchError",
    "MalformedResponseError",
    "ModelMismatchError",
    "NotFoundError",
    "RemoteSynthError",
    "RunDirError",
    "ServerCheckError",
    "ServerError",
    "ServerOverloadedError",
    "ServerStartError",
    "StorageError",
    "UnsupportedSchemaError",
]


Remedy = Literal["adapter_name", "max_model_len", "base_url", "api_key", "runtime_adapters", "request_timeout"]


class RemoteSynthError(Exception):
    """Root of every error remote-synth raises on purpose."""

    remedy: Remedy | None = None
    """Which setting would fix it, for a front end to name in its own terms (the CLI: a flag)."""

    def with_remedy(self, remedy: Remedy) -> Self:
        self.remedy = remedy
        return self


class ConfigError(RemoteSynthError, ValueError):
    """Input the user can fix: a setting, a parameter, a file."""


class RunDirError(ConfigError):
    """A file of an NSS run directory is missing or unreadable."""

    def __init__(self, path: object, problem: str) -> None:
        self.path = str(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}")


class UnsupportedSchemaError(ConfigError):
    """The regex structured-output method cannot express this schema construct."""

    def __init__(self, what: str) -> None:
        super().__init__(
            f"structured generation with the regex method does not support {what}; "
            "set structured_generation.schema_method='json_schema' instead"
        )


class GenerationError(RemoteSynthError, RuntimeError):
    """Generation stopped before the target (NSS's ``GenerationError``)."""


class ServerError(RemoteSynthError, RuntimeError):
    """A vLLM server process launched by remote-synth failed; carries its exit code and log tail."""

    def __init__(
        self, message: str, *, log_tail: str = "", returncode: int | None = None, log_file: object = None
    ) -> None:
        self.log_tail = log_tail
        self.returncode = returncode
        self.log_file = log_file
        cause = _telling_line(log_tail)
        text = f"{message}: {cause}" if cause else message
        super().__init__(f"{text} (the server's log: {log_file})" if log_file else text)


def _telling_line(log: str) -> str:
    """The log line that most likely says why: the last error, else the last line (one line, not a dump)."""
    lines = [line.strip() for line in log.splitlines() if line.strip()]
    errors = [line for line in lines if "Error" in line or "error:" in line]
    line = (errors or lines or [""])[-1]
    return line if len(line) <= 300 else line[:297] + "..."


class ServerStartError(ServerError):
    """The server exited, or did not become ready in time."""


class JournalMismatchError(ConfigError):
    """``--resume`` with settings that differ from the journal's: names the first field."""

    def __init__(self, path: object, field: str, ours: object, theirs: object) -> None:
        self.path = str(path)
        self.field = field
        super().__init__(f"{self.path}: {field} differs from the journal's ({ours!r} now, {theirs!r} in the journal)")


class StorageError(RemoteSynthError, OSError):
    """Writing the journal or the output failed (a full disk, a lost mount)."""

    def __init__(self, message: str, *, errno: int | None = None) -> None:
        super().__init__(message)
        self.errno = errno


class APIError(RemoteSynthError):
    """Talking to the inference server failed.

    Carries where (``endpoint``, e.g. ``POST /v1/completions``) and how many ``attempts``
    were made; the message names both once a request has been retried.
    """

    def __init__(self, message: str, *, endpoint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.endpoint = endpoint
        self.attempts = 1
        self.elapsed = 0.0
        """Seconds from the first attempt to the last failure."""

    def __str__(self) -> str:
        if self.attempts <= 1:
            return self.message
        return f"{self.message} (gave up after {self.attempts} attempts over {self.elapsed:.0f} s)"


class APIConnectionError(APIError):
    """The request never got an answer (refused, reset, DNS, TLS)."""


class APITimeoutError(APIConnectionError):
    """The request timed out."""


class MalformedResponseError(APIError):
    """The server answered 200 with a body that cannot be read (cut off, not JSON, wrong shape)."""


class ModelMismatchError(APIError):
    """The answer came from another model than the one asked for: a gateway serving another version
    under the name, or a replica without the adapter answering from its base model."""

    def __init__(self, message: str, *, endpoint: str, asked: str, answered: str) -> None:
        super().__init__(message, endpoint=endpoint)
        self.asked = asked
        self.answered = answered


class APIStatusError(APIError):
    """The server answered with an error status; carries the code, the body and any Retry-After."""

    def __init__(
        self,
        message: str,
        *,
        status_code: int,
        body: str = "",
        endpoint: str | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message, endpoint=endpoint)
        self.status_code = status_code
        self.body = body
        self.retry_after = retry_after
        """Seconds the server asked us to wait (its ``Retry-After``), if it said."""


class BadRequestError(APIStatusError):
    """HTTP 400: the server rejected the request (parameters, context length)."""


class AuthenticationError(APIStatusError):
    """HTTP 401/403: missing or wrong API key."""


class NotFoundError(APIStatusError):
    """HTTP 404: most often an adapter the server does not serve."""


class ServerOverloadedError(APIStatusError):
    """HTTP 429, 503 or 529: too busy now; the engine shrinks its window and retries later."""


class ServerCheckError(APIError):
    """The server answers but cannot serve this job as asked."""


class BackendStateError(RuntimeError):
    """A backend was used out of order (a caller bug, outside the error tree)."""
