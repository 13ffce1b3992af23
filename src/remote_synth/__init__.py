"""remote-synth: NSS-compatible synthetic table generation against a remote vLLM server.

The names here are the library's surface: the backend, its settings and parameters, the results,
the errors, and ``generate_remotely`` (NSS's own pipeline, generating through the backend). Everything else is importable from its layer: ``remote_synth.nss`` (what NSS
means: run directories, processors, records, batches), and the private layers ``_engine``,
``_transport``, ``_server``, ``_io`` and ``_cli`` (see docs/architecture.md).
"""

from ._backend import RemoteBackend
from ._engine import Progress
from ._exceptions import (
    APIConnectionError,
    APIError,
    APIStatusError,
    BackendStateError,
    ConfigError,
    GenerationError,
    JournalMismatchError,
    ModelMismatchError,
    RemoteSynthError,
    RunDirError,
    ServerError,
    ServerStartError,
    StorageError,
)
from ._pipeline import generate_remotely
from ._settings import RemoteSettings
from .nss import (
    GenerateJobResults,
    GenerateParameters,
    GenerationStatus,
    GeneratorBackend,
    RunDirectory,
    ValidationParameters,
)

__all__ = [
    "APIConnectionError",
    "APIError",
    "APIStatusError",
    "BackendStateError",
    "ConfigError",
    "GenerateJobResults",
    "GenerateParameters",
    "GenerationError",
    "GenerationStatus",
    "GeneratorBackend",
    "JournalMismatchError",
    "ModelMismatchError",
    "Progress",
    "RemoteBackend",
    "RemoteSettings",
    "RemoteSynthError",
    "RunDirError",
    "RunDirectory",
    "ServerError",
    "ServerStartError",
    "StorageError",
    "ValidationParameters",
    "generate_remotely",
]

__version__ = "0.1.0"

for _name in __all__:
    _obj = globals()[_name]
    if hasattr(_obj, "__module__") and not isinstance(_obj, str):
        try:
            _obj.__module__ = "remote_synth"
        except (AttributeError, TypeError):
            pass
del _name, _obj
