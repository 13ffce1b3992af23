"""The generation prompt, built exactly as NSS builds it (``utils.create_schema_prompt``)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

__all__ = ["DEFAULT_INSTRUCTION", "build_prompt"]

DEFAULT_INSTRUCTION = "Generate a JSONL dataset with the following columns: "


def build_prompt(
    columns: Sequence[str],
    template: str,
    instruction: str = DEFAULT_INSTRUCTION,
    prefill: str = "",
    exclude_columns: Iterable[str] = (),
) -> str:
    """Fill the model family's template with NSS's schema fragment.

    Column names are deliberately not JSON-escaped: the adapter was trained on
    NSS's unescaped fragment (``"q"x":<unk>``), and the prompt must match it.
    """
    excluded = set(exclude_columns)
    schema = ",".join(f'"{c}":<unk>' for c in columns if c not in excluded)
    return template.format(instruction=instruction, schema=schema, prefill=prefill)
