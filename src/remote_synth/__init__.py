"""remote-synth: NSS-compatible synthetic table generation against a remote vLLM server."""

from ._backend import GeneratorBackend
from ._batch import Batch, error_statistics, normalize_dataframe
from ._client import InferenceClient, ServerLoad, TimeoutPolicy
from ._config import GenerateParameters, RemoteSettings, ValidationParameters
from ._engine import EngineStats, Progress
from ._exceptions import (
    APIConnectionError,
    APIError,
    APIStatusError,
    APITimeoutError,
    AuthenticationError,
    BackendStateError,
    BadRequestError,
    ConfigError,
    GenerationError,
    JournalMismatchError,
    MalformedResponseError,
    NotFoundError,
    RemoteSynthError,
    RunDirError,
    ServerCheckError,
    ServerError,
    ServerOverloadedError,
    ServerStartError,
    StorageError,
    UnsupportedSchemaError,
)
from ._journal import Journal
from ._launch import adapter_name_for, launch_settings
from ._processors import GroupedDataProcessor, Processor, TabularDataProcessor, create_processor
from ._prompt import DEFAULT_INSTRUCTION, build_prompt
from ._records import ParsedResponse, RecordValidator, extract_records
from ._remote import RemoteBackend
from ._results import (
    GenerateJobResults,
    GenerationBatches,
    GenerationStatus,
    GenerationStopCondition,
    RunningStatistics,
)
from ._retry import RetryPolicy
from ._rundir import AdapterConfig, ModelMetadata, NSSConfig, PromptConfig, RunDirectory
from ._server import ServerSettings, VllmServer
from ._structured import build_json_based_regex, build_record_regex, structured_outputs_payload

__all__ = [
    "DEFAULT_INSTRUCTION",
    "APIConnectionError",
    "APIError",
    "APIStatusError",
    "APITimeoutError",
    "AdapterConfig",
    "AuthenticationError",
    "BackendStateError",
    "BadRequestError",
    "Batch",
    "EngineStats",
    "ConfigError",
    "GenerateJobResults",
    "GenerateParameters",
    "GenerationBatches",
    "GenerationError",
    "GenerationStatus",
    "GenerationStopCondition",
    "GeneratorBackend",
    "GroupedDataProcessor",
    "InferenceClient",
    "Journal",
    "JournalMismatchError",
    "MalformedResponseError",
    "ModelMetadata",
    "NSSConfig",
    "NotFoundError",
    "ParsedResponse",
    "Processor",
    "Progress",
    "PromptConfig",
    "RecordValidator",
    "RemoteBackend",
    "RemoteSettings",
    "RemoteSynthError",
    "RetryPolicy",
    "RunDirError",
    "RunDirectory",
    "RunningStatistics",
    "ServerCheckError",
    "ServerError",
    "ServerLoad",
    "ServerOverloadedError",
    "ServerSettings",
    "ServerStartError",
    "StorageError",
    "TabularDataProcessor",
    "TimeoutPolicy",
    "UnsupportedSchemaError",
    "ValidationParameters",
    "VllmServer",
    "adapter_name_for",
    "build_json_based_regex",
    "build_prompt",
    "build_record_regex",
    "create_processor",
    "error_statistics",
    "extract_records",
    "launch_settings",
    "normalize_dataframe",
    "structured_outputs_payload",
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
