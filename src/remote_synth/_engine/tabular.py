"""The tabular run kind (grouped runs too): one prompt, NSS's batches, structured outputs if asked."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

from ..nss.params import GenerateParameters
from ..nss.processors import Processor, create_processor
from ..nss.prompt import build_prompt
from ..nss.results import GenerateJobResults, GenerationBatches, GenerationStatus
from ..nss.rundir import ModelMetadata, RunDirectory
from ..nss.schema import generation_schema
from ..nss.structured import structured_outputs_choices
from .accounting import CompletionLog, Progress, TabularJobs
from .kind import complete_when_done

__all__ = ["TabularKind"]


@dataclass(frozen=True)
class TabularKind:
    processor: Processor
    prompt: str
    structured_choices: tuple[dict[str, Any], ...]
    columns: list[str]
    config: GenerateParameters
    grouped: bool
    detailed_errors: bool
    journal_keys: int = 0
    accepts_structured_generation: bool = True
    most_records: int | None = None
    """The most records a completion holds, where the run says (an ungrouped table's
    ``max_sequences_per_example``; a group's records are not bounded by it)."""

    @classmethod
    def open(
        cls, run: RunDirectory, metadata: ModelMetadata, config: GenerateParameters, detailed_errors: bool
    ) -> TabularKind:
        prompt_config = metadata.prompt_config
        group_by = run.config.data.group_training_examples_by
        schema = generation_schema(run.schema, config.validation)
        processor = create_processor(
            schema,
            group_by=group_by,
            order_by=run.config.data.order_training_examples_by,
            bos_token=prompt_config.bos_token,
            eos_token=prompt_config.eos_token,
            validation=config.validation,
            detailed_errors=detailed_errors,
        )
        structured = structured_outputs_choices(
            config,
            schema,
            grouped=group_by is not None,
            bos_token=prompt_config.bos_token,
            eos_token=prompt_config.eos_token,
            max_sequences_per_example=run.config.max_sequences_per_example,
            max_records_per_group=metadata.max_records_per_group,
        )
        prompt = build_prompt(run.columns, prompt_config.template, metadata.instruction)
        most_records = None if group_by is not None else _records_bound(run, metadata)
        return cls(processor, prompt, tuple(structured), run.columns, config, group_by is not None, detailed_errors,
                   most_records=most_records)  # fmt: skip

    @property
    def structured_outputs(self) -> dict[str, Any] | None:
        return self.structured_choices[0] if self.structured_choices else None

    def jobs(
        self,
        batches: GenerationBatches,
        body: Mapping[str, object],
        *,
        on_batch: Callable[[Progress], None] | None,
        log: CompletionLog | None,
        tokenize: Callable[[str], Awaitable[list[int]]] | None = None,
    ) -> TabularJobs:
        """Text prompts (``tokenize`` is not needed)."""
        return TabularJobs(batches, self.processor, self.prompt, body, self.config.num_records,
                           detailed_errors=self.detailed_errors, on_batch=on_batch, log=log,
                           most_records=self.most_records)  # fmt: skip

    def finish(self, batches: GenerationBatches, *, done: bool, elapsed: float) -> GenerateJobResults:
        """Complete at the target; ungrouped results are cut at it (a grouped run keeps whole groups)."""
        complete_when_done(batches, done=done)
        truncate = not self.grouped and batches.status is GenerationStatus.COMPLETE
        max_records = self.config.num_records if truncate else None
        return GenerateJobResults.from_batches(batches, max_records, self.columns, elapsed)


def _records_bound(run: RunDirectory, metadata: ModelMetadata) -> int | None:
    """The most records an ungrouped table's completion holds: ``max_sequences_per_example`` as the
    config saves it, else as training wrote it to the metadata (None: examples fill the context)."""
    for most in (run.config.max_sequences_per_example, metadata.max_sequences_per_example):
        if isinstance(most, int) and most >= 1:
            return most
    return None
