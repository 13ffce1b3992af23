"""Hypothesis strategies: NSS-style record schemas and records that satisfy them."""

from __future__ import annotations

import string
from typing import Any

from hypothesis import strategies as st

# Text as a table holds it: any code point but lone surrogates.
TEXT_CHARS = st.characters(blacklist_categories=("Cs",))
NAMES = st.text(alphabet=string.ascii_letters + string.digits + "_ -/é", min_size=1, max_size=12)


@st.composite
def column_schemas(draw: st.DrawFn) -> dict[str, Any]:
    """One column, in one of the shapes NSS's schema inference writes."""
    kind = draw(st.sampled_from(["enum", "integer", "number", "string", "boolean", "nullable", "list"]))
    if kind == "enum":
        values = draw(st.lists(st.text(TEXT_CHARS, max_size=8), min_size=1, max_size=6, unique=True))
        if draw(st.booleans()):
            values.append(None)
        return {"enum": values}
    if kind in ("integer", "number"):
        low = draw(st.integers(-10_000, 10_000))
        high = draw(st.integers(low, low + 100_000))
        return {"type": kind, "minimum": float(low), "maximum": float(high)}
    if kind == "string":
        low = draw(st.integers(0, 5))
        return {"type": "string", "minLength": low, "maxLength": draw(st.integers(max(low, 1), 20))}
    if kind == "boolean":
        return {"type": "boolean"}
    if kind == "list":
        return {"type": ["array"]}
    return {"type": ["string", "null"]}


@st.composite
def record_schemas(draw: st.DrawFn) -> dict[str, Any]:
    names = draw(st.lists(NAMES, min_size=1, max_size=6, unique=True))
    properties = {name: draw(column_schemas()) for name in names}
    required = [n for n in names if draw(st.booleans()) or properties[n].get("type") != ["string", "null"]]
    return {"type": "object", "properties": properties, "required": required}


def value_for(draw: st.DrawFn, schema: dict[str, Any]) -> Any:
    if "enum" in schema:
        return draw(st.sampled_from(schema["enum"]))
    kind = schema["type"]
    if kind == "integer":
        return draw(st.integers(int(schema["minimum"]), int(schema["maximum"])))
    if kind == "number":
        # Four decimals survive pandas' to_json (10 significant digits) unchanged.
        x = draw(st.floats(schema["minimum"], schema["maximum"], allow_nan=False))
        return min(max(round(x, 4), schema["minimum"]), schema["maximum"])
    if kind == "string":
        return draw(st.text(TEXT_CHARS, min_size=schema["minLength"], max_size=schema["maxLength"]))
    if kind == "boolean":
        return draw(st.booleans())
    if kind == ["array"]:
        return draw(
            st.lists(st.one_of(st.integers(-99, 99), st.text(TEXT_CHARS, max_size=4), st.booleans()), max_size=3)
        )
    return draw(st.one_of(st.none(), st.text(TEXT_CHARS, max_size=10)))


@st.composite
def schema_and_records(draw: st.DrawFn, max_records: int = 5) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    schema = draw(record_schemas())
    n = draw(st.integers(1, max_records))
    records = [{name: value_for(draw, sub) for name, sub in schema["properties"].items()} for _ in range(n)]
    return schema, records


def training_text(records: list[dict[str, Any]]) -> str:
    """Records as NSS writes its training text: pandas JSON lines, non-ASCII kept raw."""
    import pandas as pd

    text = str(pd.DataFrame.from_records(records).to_json(orient="records", lines=True, force_ascii=False))
    return text.rstrip("\n") + "\n"
