"""What NSS 0.1.16 writes beside a flexible time series' output, for audit.

- ``raw_generations.jsonl``: every completion as the model wrote it, with its group, the group's
  request number, its tokens and finish reason;
- ``flexible_timeseries_metrics.json``: each group's end (``terminal``: its marker; ``cap``: the
  largest source group's length; ``failure``), rows, requests and tokens, and their totals;
- ``synthetic_data_internal.csv``: the accepted rows with the index and marker columns.

Kept in memory and handed over as file texts (``RemoteBackend.artifacts``); the CLI and
``generate_remotely`` write them (``_io.artifacts``).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import pandas as pd

from .._transport.types import Completion
from ..nss.results import GenerationStatus

__all__ = ["FlexibleAudit", "GroupTally"]

RAW = "raw_generations.jsonl"
METRICS = "flexible_timeseries_metrics.json"
INTERNAL = "synthetic_data_internal.csv"
ENDS = ("terminal", "cap", "failure")


@dataclass
class GroupTally:
    """One group's counts, as NSS's ``GroupState`` keeps them for its metrics."""

    group_id: object
    ordinal: int
    prompts: int = 0
    """Requests for this group (each of ``n`` samples)."""
    prompt_tokens: int = 0
    completion_tokens: int = 0
    rows: int = 0
    end: str | None = None


@dataclass
class FlexibleAudit:
    internal: Callable[[], pd.DataFrame]
    """The accepted rows, sorted, with the control columns (read at the end)."""
    max_records: int
    raw: list[str] = field(default_factory=list)
    tallies: dict[str, GroupTally] = field(default_factory=dict)

    def group(self, key: str, group_id: object) -> GroupTally:
        if key not in self.tallies:
            self.tallies[key] = GroupTally(group_id, len(self.tallies) + 1)
        return self.tallies[key]

    def request(self, tally: GroupTally, completions: Sequence[Completion], prompt_tokens: int) -> None:
        """One request's completions; its prompt's tokens are counted once, on the first."""
        tally.prompts += 1
        tally.prompt_tokens += prompt_tokens
        for i, completion in enumerate(completions):
            tally.completion_tokens += completion.tokens
            shown = prompt_tokens if i == 0 else 0
            line = {"group": tally.group_id, "group_ordinal": tally.ordinal, "prompt": tally.prompts,
                    "completion": completion.text, "prompt_tokens": shown, "completion_tokens": completion.tokens,
                    "total_tokens": shown + completion.tokens,
                    "finish_reason": completion.finish_reason or "unknown"}  # fmt: skip
            self.raw.append(json.dumps(line, ensure_ascii=False, default=str))

    def files(self, status: GenerationStatus) -> dict[str, str]:
        """The three files' names and texts."""
        return {RAW: "".join(f"{line}\n" for line in self.raw), METRICS: json.dumps(self.metrics(status), indent=2),
                INTERNAL: self.internal().to_csv(index=False)}  # fmt: skip

    def metrics(self, status: GenerationStatus) -> dict[str, object]:
        """NSS's metrics: a group not ended (an interrupted job) counts as a failure, but keeps its rows."""
        tallies = list(self.tallies.values())
        rows = [0 if t.end == "failure" else t.rows for t in tallies]
        ends = [t.end or "failure" for t in tallies]
        groups = [
            {
                "group": t.group_id,
                "group_ordinal": t.ordinal,
                "reason": end,
                "rows": n,
                "prompts": t.prompts,
                "prompt_tokens": t.prompt_tokens,
                "completion_tokens": t.completion_tokens,
                "total_tokens": t.prompt_tokens + t.completion_tokens,
            }  # fmt: skip
            for t, end, n in zip(tallies, ends, rows, strict=True)
        ]
        prompt_tokens = sum(t.prompt_tokens for t in tallies)
        completion_tokens = sum(t.completion_tokens for t in tallies)
        aggregate = {"groups": len(tallies), "rows": sum(rows), "prompts": sum(t.prompts for t in tallies),
                     "prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                     "total_tokens": prompt_tokens + completion_tokens,
                     "reason_counts": {end: ends.count(end) for end in ENDS}}  # fmt: skip
        return {
            "status": status.value,
            "flexible_timeseries": True,
            "sequence_max_records": self.max_records,
            "groups": groups,
            "aggregate": aggregate,
        }
