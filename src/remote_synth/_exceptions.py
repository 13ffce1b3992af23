"""The error tree of remote-synth.

    RemoteSynthError
    ├── ConfigError (ValueError)            bad input: settings, parameters, files
    │   ├── RunDirError                     an NSS run directory is missing or corrupt
    │   └── UnsupportedSchemaError          the regex method cannot express a schema
    ├── GenerationError (RuntimeError)      generation stopped prematurely (NSS's error)
    ├── ServerError (RuntimeError)          a vLLM server process we launched failed
    │   └── ServerStartError                it exited or never became ready
    └── APIError                            talking to the server failed
        ├── APIConnectionError              no answer: refused, reset, timed out
        │   └── APITimeoutError
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
    "NotFoundError",
    "RemoteSynthError",
    "RunDirError",
    "ServerCheckError",
    "ServerError",
    "ServerOverloadedError",
    "ServerStartError",
    "UnsupportedSchemaError",
]


class RemoteSynthError(Exception):
    """Root of every error remote-synth raises on purpose."""


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
            "set structured_generation_schema_method='json_schema' instead"
        )


class GenerationError(RemoteSynthError, RuntimeError):
    """Generation stopped before the target (NSS's ``GenerationError``)."""


class ServerError(RemoteSynthError, RuntimeError):
    """A vLLM server process launched by remote-synth failed."""


class ServerStartError(ServerError):
    """The server exited, or did not become ready in time."""

    def __init__(self, message: str, *, log_tail: str = "", returncode: int | None = None) -> None:
        self.log_tail = log_tail
        self.returncode = returncode
        text = message if not log_tail else f"{message}\n--- last lines of the server log ---\n{log_tail}"
        super().__init__(text)


class APIError(RemoteSynthError):
    """Talking to the inference server failed."""


class APIConnectionError(APIError):
    """The request never got an answer (refused, reset, DNS, TLS)."""


class APITimeoutError(APIConnectionError):
    """The request timed out."""


class APIStatusError(APIError):
    """The server answered with an error status; carries the code and the body."""

    def __init__(self, message: str, *, status_code: int, body: str = "") -> None:
        self.status_code = status_code
        self.body = body
        super().__init__(message)


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
