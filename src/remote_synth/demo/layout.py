"""Writing an NSS-layout run directory (what NSS's training leaves behind), torch-free.

Used by the demo builder and by tests that need run directories of other shapes.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

from ..nss.params import GenerateParameters

__all__ = ["TINYLLAMA_TEMPLATE", "write_run_dir"]

TINYLLAMA_TEMPLATE = "[INST] {instruction} {schema} [/INST]{prefill}"


def write_run_dir(
    run: Path,
    schema: dict[str, Any],
    *,
    base_model: str,
    lora_r: int = 8,
    template: str = TINYLLAMA_TEMPLATE,
    bos: tuple[str, int] = ("<s>", 1),
    eos: tuple[str, int] = ("</s>", 2),
    base_max_seq_length: int = 2048,
    generation: dict[str, Any] | None = None,
    data: dict[str, Any] | None = None,
    adapter_weights: bytes | None = b"",
    time_series: dict[str, Any] | None = None,
    initial_prefill: dict[str, str] | None = None,
    layout: Literal["48a8f5c", "0.1.16"] = "48a8f5c",
    max_tokens_per_example: int | None = None,
    max_records_per_group: int | None = None,
    timeseries_group_values: list[Any] | None = None,
    source_columns: list[str] | None = None,
    flexible: dict[str, Any] | None = None,
) -> Path:
    """Write ``train/adapter/*`` metadata and ``safe-synthesizer-config.json`` as NSS does.

    The adapter weights themselves are written by peft (the demo) or, for tests,
    as ``adapter_weights`` bytes (None: no weights file). A time-series run gets its
    ``time_series`` section (``is_timeseries`` set) and each group's ``initial_prefill``.
    ``layout`` "0.1.16" writes what that release saves: the whole ``generation`` section
    (nested ``structured_generation``, ``max_tokens_multiplier``, ``validation.enforce_numeric_range``),
    and the metadata's ``max_tokens_per_example`` and ``max_records_per_group``; a time series
    its group registry (``timeseries_group_values``, typed) and ``timeseries_metadata.source_columns``
    (and ``flexible``, the controls of NSS 0.1.16's flexible mode).
    """
    adapter = run / "train" / "adapter"
    adapter.mkdir(parents=True, exist_ok=True)
    metadata = {
        "model_name_or_path": base_model,
        "prompt_config": {
            "template": template,
            "add_bos_token_to_prompt": True,
            "add_eos_token_to_prompt": True,
            "bos_token": bos[0],
            "bos_token_id": bos[1],
            "eos_token": eos[0],
            "eos_token_id": eos[1],
        },
        "base_max_seq_length": base_max_seq_length,
        "rope_scaling": None,
        "max_sequences_per_example": None,
        "workdir": {"base_path": str(run.parent), "config_name": "demo", "dataset_name": "demo", "run_name": run.name},
        "is_adapter": True,
        "instruction": "Generate a JSONL dataset with the following columns: ",
        "rope_parameters_location": "autoconfig",
        "initial_prefill": initial_prefill,
    }
    saved_generation = {"num_records": 1000, **(generation or {})}
    if layout == "0.1.16":
        metadata.pop("initial_prefill")
        metadata.update(max_tokens_per_example=max_tokens_per_example, max_records_per_group=max_records_per_group)
        if time_series is not None:
            columns = source_columns or list(schema["properties"])
            metadata.update(timeseries_group_values=timeseries_group_values,
                            timeseries_metadata={"source_columns": columns, "flexible": flexible})  # fmt: skip
        saved_generation = GenerateParameters.resolve(saved_generation, use_env=False).model_dump(mode="json")
    config = {
        "data": {"group_training_examples_by": None, "order_training_examples_by": None, **(data or {})},
        "training": {"pretrained_model": base_model, "lora_r": lora_r},
        "generation": saved_generation,
        "time_series": {"is_timeseries": time_series is not None, **(time_series or {})},
    }
    _write(adapter / "metadata_v2.json", metadata)
    _write(adapter / "dataset_schema.json", schema)
    _write(run / "train" / "safe-synthesizer-config.json", config)
    if not (adapter / "adapter_config.json").exists():
        _write(
            adapter / "adapter_config.json",
            {"r": lora_r, "lora_alpha": 2 * lora_r, "base_model_name_or_path": base_model},
        )
    if adapter_weights is not None and not (adapter / "adapter_model.safetensors").exists():
        (adapter / "adapter_model.safetensors").write_bytes(adapter_weights)
    return run


def _write(path: Path, data: Any) -> None:
    path.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
