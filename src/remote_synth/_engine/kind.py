"""What differs between a tabular (or grouped) run and a time-series run: one object, asked once.

``RemoteBackend`` asks ``run_kind(...)`` once and then never branches on the kind: the processor
that validates, the prompt the preflight sends, the structured outputs (none for time series, as in
NSS), the engine's job source, how many leading fields a journal entry names, and how the results
are finished (tabular results are cut at the target; time series are sorted by group and time).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Any, Protocol

from ..nss.processors import Processor
from ..nss.results import GenerateJobResults, GenerationBatches, GenerationStatus
from .accounting import CompletionLog, Logged, Progress
from .scheduler import JobSource

__all__ = ["Jobs", "RunKind", "complete_when_done"]


class Jobs(JobSource, Protocol):
    """A job source that can also replay a journal and count what a stopped job accepted."""

    def replay(self, entries: Iterable[Logged]) -> None:
        """Use an earlier run's completions (the journal's) again, exactly as they were used then."""

    def flush(self) -> None:
        """Count what is still open (a failure, an interrupt, or the end) into the batches."""

    def artifacts(self) -> dict[str, str]:
        """Files the job leaves beside its output, by name (NSS 0.1.16's flexible time series' audit)."""


class RunKind(Protocol):
    """One kind of run: tabular (grouped included) or time series."""

    @property
    def processor(self) -> Processor:
        """Validates each completion into records (NSS's processor for this kind)."""

    @property
    def prompt(self) -> str:
        """The prompt the preflight sends (and, for tabular runs, every request)."""

    @property
    def structured_outputs(self) -> dict[str, Any] | None:
        """The constraint requests carry by preference (None: unconstrained sampling)."""

    @property
    def structured_choices(self) -> tuple[dict[str, Any], ...]:
        """The constraints to offer the server, best first (its check keeps the first it accepts)."""

    @property
    def accepts_structured_generation(self) -> bool:
        """Whether ``structured_generation.enabled`` means anything here (NSS ignores it for time series)."""

    @property
    def journal_keys(self) -> int:
        """Leading fields of a journal entry that are not completions (a time series names its group)."""

    def jobs(
        self,
        batches: GenerationBatches,
        body: Mapping[str, object],
        *,
        on_batch: Callable[[Progress], None] | None,
        log: CompletionLog | None,
        tokenize: Callable[[str], Awaitable[list[int]]] | None = None,
    ) -> Jobs:
        """The engine's job source for one ``generate()`` call (``tokenize``: the server's tokenizer,
        for runs whose prompts are token ids)."""

    def finish(self, batches: GenerationBatches, *, done: bool, elapsed: float) -> GenerateJobResults:
        """Results from what was generated so far (kept even when generation stops early)."""


def complete_when_done(batches: GenerationBatches, *, done: bool) -> None:
    """A job still in progress is complete once it reached its target or its jobs are done.

    Stopped by a stop rule, it keeps that status; cut short (a failure, an interrupt), it stays in progress.
    """
    reached = batches.target_num_records is not None and batches.num_valid_records >= batches.target_num_records
    if batches.status is GenerationStatus.IN_PROGRESS and (reached or done):
        batches.job_complete()
