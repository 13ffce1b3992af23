"""One batch of completions and its error statistics (NSS ``generation/batch.py``).

Counts are kept as responses arrive, so no property re-sums the batch.
"""

from __future__ import annotations

import csv
import io
import logging
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable
from typing import Any

import pandas as pd

from .records import ErrorTuple, ParsedResponse

__all__ = [
    "HUMAN_READABLE_ERR_MSGS",
    "LOG_NUM_ERRORS",
    "Batch",
    "error_statistics",
    "normalize_dataframe",
    "valid_fraction",
]

logger = logging.getLogger("remote_synth.batch")

LOG_NUM_ERRORS = 10
"""Error rows kept in the statistics besides data_config rejections (NSS ``LOG_NUM_ERRORS``)."""

#: NSS ``defaults.HUMAN_READABLE_ERR_MSGS``: validator keyword → what a person reads.
HUMAN_READABLE_ERR_MSGS = {
    "type": "Invalid field type",
    "enum": "Invalid field value",
    "const": "Invalid field value",
    "multipleOf": "Field value must be a multiple of a given number",
    "maximum": "Field value must be less than or equal to a given number",
    "exclusiveMaximum": "Field value must be less than a given number",
    "minimum": "Field value must be greater than or equal to a given number",
    "exclusiveMinimum": "Field value must be greater than a given number",
    "maxLength": "Field value must be at most a given length",
    "minLength": "Field value must be at least a given length",
    "pattern": "Field value must match a given pattern",
    "maxItems": "Field value must have at most a given number of items",
    "minItems": "Field value must have at least a given number of items",
    "uniqueItems": "Field value must have unique items",
    "maxContains": "Field value must contain at most a given number of items",
    "minContains": "Field value must contain at least a given number of items",
    "maxProperties": "Field value must have at most a given number of properties",
    "minProperties": "Field value must have at least a given number of properties",
    "required": "Missing required field",
    "dependentRequired": "Missing required field based on another field",
    "Invalid JSON: Unterminated string starting at": "Invalid JSON: Unterminated string",
    "groupby": "Groupby generation failed",
}

_GROUPED_SUFFIXES = (
    " is not one of ",
    " is a required property",
    " is greater than the maximum of ",
    " is less than the minimum of ",
)


def valid_fraction(valid: int, invalid: int) -> float:
    """valid / (valid + invalid), or 0 when there were no records at all (NSS's convention)."""
    total = valid + invalid
    return valid / total if total else 0.0


class Batch:
    """The parsed completions of one generation call.

    ```python
    batch = Batch(processor)
    for i, text in enumerate(texts):
        batch.process(i, text)
    batch.num_valid_records, batch.stopping_metric, batch.to_dataframe()
    ```
    """

    def __init__(self, processor: Callable[[int, str], ParsedResponse] | None = None) -> None:
        self._processor = processor
        self._responses: list[ParsedResponse] = []
        self._actions: ParsedResponse | None = None  # what data actions replaced the valid records with
        self.num_valid_records = 0
        self.num_invalid_records = 0
        self.finish_reasons: Counter[str] = Counter()
        """Why each completion ended (vLLM's ``finish_reason``: stop, length, abort), as NSS 0.1.16 counts."""
        self.num_completion_tokens = 0
        """Tokens the server generated for these completions (its ``usage``), where it said."""

    def process(
        self, prompt_number: int, text: str, finish_reason: str | None = None, completion_tokens: int = 0
    ) -> ParsedResponse:
        """Parse one completion with the batch's processor and keep the result."""
        if self._processor is None:
            raise TypeError("this Batch has no processor; use add_response()")
        if finish_reason is not None:
            self.finish_reasons[finish_reason] += 1
        self.num_completion_tokens += completion_tokens
        return self.add_response(self._processor(prompt_number, text))

    @property
    def num_length_truncated_completions(self) -> int:
        """Completions that stopped at ``max_tokens``."""
        return self.finish_reasons["length"]

    @property
    def is_inconclusive(self) -> bool:
        """No valid record, but every completion was cut at ``max_tokens``: it says nothing of the model
        (NSS 0.1.16), so it does not stop a job as a first batch and the probe is sent again."""
        return self.num_valid_records == 0 and 0 < self.num_prompts == self.num_length_truncated_completions

    def add_response(self, response: ParsedResponse) -> ParsedResponse:
        self._responses.append(response)
        self.num_valid_records += len(response.valid_records)
        self.num_invalid_records += len(response.invalid_records)
        return response

    def replace_valid_records(self, valid: list[dict[str, Any]], invalid: list[str], errors: list[ErrorTuple]) -> None:
        """Swap in what a data action kept; its rejections become invalid records."""
        self._actions = ParsedResponse(valid_records=valid, invalid_records=invalid, errors=errors)
        for response in self._responses:
            response.valid_records = []
        self.num_valid_records = len(valid)
        self.num_invalid_records += len(invalid)

    @property
    def responses(self) -> tuple[ParsedResponse, ...]:
        """The parsed completions, plus a last entry with data-action results if any."""
        return (*self._responses, self._actions) if self._actions else tuple(self._responses)

    @property
    def num_prompts(self) -> int:
        """Completions in this batch."""
        return len(self._responses)

    @property
    def valid_record_fraction(self) -> float:
        return valid_fraction(self.num_valid_records, self.num_invalid_records)

    @property
    def stopping_metric(self) -> float:
        """Invalid fraction; a batch with no records at all counts as fully invalid."""
        return 1.0 - self.valid_record_fraction

    @property
    def errors(self) -> list[ErrorTuple]:
        return [e for r in self.responses for e in r.errors]

    @property
    def num_data_config_rejected_records(self) -> int:
        return sum(1 for e in self.errors if "data_config" in e[1])

    def valid_records(self) -> list[dict[str, Any]]:
        return [rec for r in self.responses for rec in r.valid_records]

    def to_dataframe(self) -> pd.DataFrame | None:
        """Valid records, normalised as NSS does; None when there are none."""
        records = self.valid_records()
        return normalize_dataframe(pd.DataFrame(records)) if records else None

    def error_statistics(self, detailed_errors: bool) -> pd.DataFrame:
        return error_statistics(self.errors, detailed_errors)

    def summary(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "num_prompts": self.num_prompts,
            "num_valid_records": self.num_valid_records,
            "num_invalid_records": self.num_invalid_records,
            "valid_record_fraction": round(self.valid_record_fraction, 2),
        }
        if rejected := self.num_data_config_rejected_records:
            data["num_data_config_rejected_records"] = rejected
        return data

    def log_summary(self, detailed_errors: bool = False) -> None:
        """Log the batch counts and error shares; never raises, never logs record values.

        Detailed messages quote values, so they appear only with ``detailed_errors``.
        """
        if not logger.isEnabledFor(logging.INFO):
            return  # the error table costs a DataFrame per batch: build it only for a reader
        summary = self.summary()
        logger.info(
            "batch: %d prompts, %d valid, %d invalid (valid fraction %.2f)",
            summary["num_prompts"],
            summary["num_valid_records"],
            summary["num_invalid_records"],
            summary["valid_record_fraction"],
            extra={"summary": summary},
        )
        stats = self.error_statistics(detailed_errors)
        if not stats.empty:
            shares = {str(k): round(float(v), 2) for k, v in stats["Percentage"].items()}
            logger.info(
                "batch errors: %s", "; ".join(f"{k}: {v:.0%}" for k, v in shares.items()), extra={"errors": shares}
            )


def error_statistics(errors: Iterable[ErrorTuple], detailed_errors: bool) -> pd.DataFrame:
    """Share of each error, most frequent first (NSS ``Batch.error_statistics``).

    Index: the message (detailed) or category (summary), mapped to readable text;
    column ``Percentage``: count / number of errors. data_config rejections are
    always kept, plus the ``LOG_NUM_ERRORS`` most frequent others. Unlike NSS the
    final sort is stable, so equal shares keep a deterministic order.
    """
    idx = 0 if detailed_errors else 1
    messages = [HUMAN_READABLE_ERR_MSGS.get(e[idx], e[idx]) for e in errors]
    if detailed_errors:
        for suffix in _GROUPED_SUFFIXES:
            messages = group_error_messages(messages, suffix)
    if not messages:
        return pd.DataFrame({"Percentage": pd.Series(dtype=float)})
    counts = Counter(messages)
    stats = pd.DataFrame.from_dict(counts, orient="index", columns=["cnt"])
    stats["Percentage"] = stats["cnt"] / stats["cnt"].sum()
    stats = stats.drop(columns="cnt").sort_index().sort_values("Percentage", ascending=False, kind="mergesort")
    is_config = stats.index.astype(str).str.contains("data_config", regex=False)
    stats = pd.concat([stats[is_config], stats[~is_config].head(LOG_NUM_ERRORS)])
    return stats.sort_values("Percentage", ascending=False, kind="mergesort")


def group_error_messages(messages: list[str], common: str) -> list[str]:
    """Merge messages that differ only before ``common`` (NSS ``_group_error_messages``).

    ``'a' is a required property`` and ``'b' is a required property`` become
    ``Grouped error message: 'a'/'b' is a required property``. Splits at the first
    occurrence only, so a value containing ``common`` cannot crash it (NSS bug).
    """
    prefixes: dict[str, set[str]] = defaultdict(set)
    for msg in messages:
        if common in msg:
            first, _, rest = msg.partition(common)
            prefixes[rest].add(first)
    joined = {}
    for rest, firsts in prefixes.items():
        names = sorted(firsts)
        names = names[:5] + ["..."] if len(names) > 5 else names
        joined[rest] = "/".join(names)
    out = []
    for msg in messages:
        if common not in msg:
            out.append(msg)
            continue
        _, _, rest = msg.partition(common)
        if len(prefixes[rest]) < 2:
            out.append(msg[:100] + "..." if len(msg) > 100 else msg)
        else:
            tail = rest[:50] + "..." if len(rest) > 50 else rest
            out.append("Grouped error message: " + joined[rest] + common + tail)
    return out


def normalize_dataframe(df: pd.DataFrame) -> pd.DataFrame:
    """NSS's CSV round trip: the output has the dtypes a CSV reader would give.

    Empty strings and "NA"/"null"/"None"… become NaN, numeric-looking columns
    become numbers, lists and dicts become their string form.
    """
    text = df.to_csv(index=False, quoting=csv.QUOTE_NONNUMERIC)
    try:
        return pd.read_csv(io.StringIO(text))
    except Exception:  # noqa: BLE001 - NSS retries any failure once, dropping bad bytes
        logger.debug("normalising a batch failed; retrying without undecodable characters", exc_info=True)
        return pd.read_csv(io.StringIO(text), encoding_errors="ignore")
