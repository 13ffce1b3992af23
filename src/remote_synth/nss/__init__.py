"""What NSS means, with no HTTP and no processes.

The generation contract, its parameters, the run directory, the prompt, records and their
validation, processors, structured outputs, time-series rules, batches and results. Everything
above this package (engine, transport, server, CLI) speaks NSS through these names.
"""

from .batch import Batch, error_statistics, normalize_dataframe
from .contract import GeneratorBackend
from .params import GenerateParameters, StructuredGenerationParameters, ValidationParameters
from .processors import GroupedDataProcessor, Processor, TabularDataProcessor, TimeSeriesDataProcessor, create_processor
from .prompt import DEFAULT_INSTRUCTION, build_prompt
from .records import ParsedResponse, RecordValidator, extract_records
from .results import GenerateJobResults, GenerationBatches, GenerationStatus, GenerationStopCondition, RunningStatistics
from .rundir import AdapterConfig, ModelMetadata, NSSConfig, PromptConfig, RunDirectory
from .schema import generation_schema, relax_numeric_bounds
from .structured import (
    build_json_based_regex,
    build_record_regex,
    build_structural_tag,
    structured_outputs_choices,
    structured_outputs_payload,
)

__all__ = [
    "DEFAULT_INSTRUCTION",
    "AdapterConfig",
    "Batch",
    "GenerateJobResults",
    "GenerateParameters",
    "GenerationBatches",
    "GenerationStatus",
    "GenerationStopCondition",
    "GeneratorBackend",
    "GroupedDataProcessor",
    "ModelMetadata",
    "NSSConfig",
    "ParsedResponse",
    "Processor",
    "PromptConfig",
    "RecordValidator",
    "RunDirectory",
    "RunningStatistics",
    "StructuredGenerationParameters",
    "TabularDataProcessor",
    "TimeSeriesDataProcessor",
    "ValidationParameters",
    "build_json_based_regex",
    "build_prompt",
    "build_record_regex",
    "build_structural_tag",
    "create_processor",
    "error_statistics",
    "extract_records",
    "generation_schema",
    "normalize_dataframe",
    "relax_numeric_bounds",
    "structured_outputs_choices",
    "structured_outputs_payload",
]
