"""vLLM ``structured_outputs`` for a record schema: NSS's regex, json_schema and structural tag methods.

The method is NSS 0.1.16's: ``auto`` is a structural tag (XGrammar: JSONL records, each
checked by the JSON schema, inside BOS…EOS when grouped) on backend auto/xgrammar, else the
regex. Grouped output is bounded to the largest trained group (``max_records_per_group``,
or ``max_records_per_sequence``): one group of 1…N records per completion.

The regex method follows NSS's ``regex_manager.build_json_based_regex``: the
same constructs (``properties``/``required``, ``enum``, ``type`` with string
lengths, patterns and formats, integer ranges, arrays, objects with
``additionalProperties``, type lists), no white space anywhere, keys in
schema order. It is fixed where NSS's regex cannot match NSS's own training
text (docs/deviations.md):

- keys and enum values are spelled as pandas ``to_json(force_ascii=False)``
  spells them (raw non-ASCII, ``\\/``), and strings may hold raw U+007F–U+009F;
- integer ranges are exact for negative and fractional bounds, and a single
  bound is allowed;
- an unanchored ``pattern`` is searched for, as JSON Schema says;
- fractional or one-sided string length bounds work;
- arrays without ``items`` compile (NSS emitted an unbalanced parenthesis);
- objects without ``additionalProperties`` (NSS's dict columns) take flat
  objects of primitive values instead of an unusable ``()``.

``number`` bounds are not enforced by the regex (as in NSS); records outside
them are rejected locally. Anything else raises ``UnsupportedSchemaError``,
which suggests the json_schema method.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

import pandas as pd
from outlines_core.json_schema import BOOLEAN, DATE, DATE_TIME, EMAIL, NULL, NUMBER, TIME, URI, UUID
from range_regex import bounded_regex_for_range

from .._exceptions import ConfigError, UnsupportedSchemaError
from .params import GenerateParameters

__all__ = [
    "build_json_based_regex",
    "build_record_regex",
    "build_structural_tag",
    "structured_outputs_choices",
    "structured_outputs_payload",
]

JSON_STRING_INNER = r'([^"\\\x00-\x1F]|\\["\\/bfnrt]|\\u[0-9a-fA-F]{4})'
JSON_STRING = f'"{JSON_STRING_INNER}*"'
INTEGER = r"(-)?(0|[1-9][0-9]*)"
_FORMATS = {"date-time": DATE_TIME, "date": DATE, "time": TIME, "uuid": UUID, "email": EMAIL, "uri": URI}
_PRIMITIVES = [BOOLEAN, NULL, NUMBER, JSON_STRING]


def structured_outputs_payload(
    params: GenerateParameters,
    schema: dict[str, Any],
    *,
    grouped: bool = False,
    bos_token: str = "",
    eos_token: str = "",
    max_sequences_per_example: int | None = None,
    max_records_per_group: int | None = None,
) -> dict[str, Any] | None:
    """The request's ``structured_outputs`` field, or None when structured generation is off."""
    choices = structured_outputs_choices(
        params,
        schema,
        grouped=grouped,
        bos_token=bos_token,
        eos_token=eos_token,
        max_sequences_per_example=max_sequences_per_example,
        max_records_per_group=max_records_per_group,
    )
    return choices[0] if choices else None


def structured_outputs_choices(
    params: GenerateParameters,
    schema: dict[str, Any],
    *,
    grouped: bool = False,
    bos_token: str = "",
    eos_token: str = "",
    max_sequences_per_example: int | None = None,
    max_records_per_group: int | None = None,
) -> list[dict[str, Any]]:
    """The ``structured_outputs`` fields to try, best first (none when structured generation is off).

    ``schema_method`` auto on backend auto is a structural tag, then NSS's regex for a server
    whose backend cannot serve a tag (the server check keeps the first one it accepts).
    ``max_records_per_group`` is the run's (the largest group in training); the setting
    ``max_records_per_sequence`` overrides it.
    """
    sg = params.structured_generation
    if not sg.enabled:
        return []
    shape: dict[str, Any] = {
        "grouped": grouped,
        "bos_token": bos_token,
        "eos_token": eos_token,
        "single_sequence": sg.use_single_sequence and max_sequences_per_example == 1,
        "max_records": sg.max_records_per_sequence or max_records_per_group,
    }
    if sg.method == "json_schema":
        return [{"json": schema}]
    if sg.method == "regex":
        return [{"regex": build_json_based_regex(schema, **shape)}]
    choices = [{"structural_tag": build_structural_tag(schema, **shape)}]
    if sg.schema_method == "auto" and sg.backend == "auto":
        try:
            choices.append({"regex": build_json_based_regex(schema, **shape)})
        except UnsupportedSchemaError:
            pass  # the tag or nothing
    return choices


def build_json_based_regex(
    schema: dict[str, Any],
    *,
    grouped: bool = False,
    bos_token: str = "",
    eos_token: str = "",
    single_sequence: bool = False,
    max_records: int | None = None,
) -> str:
    """One or more newline-terminated records (inside BOS…EOS when grouped).

    Grouped with a bound: exactly one group of 1…``max_records`` records (NSS 0.1.16), so
    that a model that never closes its group cannot decode to ``max_tokens``.
    """
    record = build_record_regex(schema)
    if not grouped:
        return record if single_sequence else f"({record}\n)+"
    repeat = f"({record}\n){{1,{max_records}}}" if max_records else f"({record}\n)+"
    sequence = f"{re.escape(bos_token)}{repeat}{re.escape(eos_token)}"
    return sequence if single_sequence or max_records else f"({sequence}\n)+"


def build_structural_tag(
    schema: dict[str, Any],
    *,
    grouped: bool = False,
    bos_token: str = "",
    eos_token: str = "",
    single_sequence: bool = False,
    max_records: int | None = None,
) -> str:
    """An XGrammar structural tag (a JSON string) of the same shapes as ``build_json_based_regex``.

    NSS 0.1.16 ``build_json_structural_tag``: records are ``json_schema`` elements, so the
    server's JSON grammar checks them (number bounds included), not a regex.
    """
    record: dict[str, Any] = {"type": "json_schema", "json_schema": schema}
    line = _sequence([record, _const("\n")])
    if not grouped:
        shape = record if single_sequence else {"type": "plus", "content": line}
    else:
        repeat = {"type": "repeat", "min": 1, "max": max_records, "content": line} if max_records else None
        group = _sequence([_const(bos_token), repeat or {"type": "plus", "content": line}, _const(eos_token)])
        single = single_sequence or bool(max_records)
        shape = group if single else {"type": "plus", "content": _sequence([group, _const("\n")])}
    return json.dumps({"type": "structural_tag", "format": shape}, ensure_ascii=True)


def _const(value: str) -> dict[str, str]:
    return {"type": "const_string", "value": value}


def _sequence(elements: list[dict[str, Any]]) -> dict[str, Any]:
    return {"type": "sequence", "elements": elements}


def build_record_regex(schema: Any) -> str:
    """The regex of one JSON value that satisfies ``schema`` (dispatch: properties → enum → type)."""
    if not isinstance(schema, dict):
        raise UnsupportedSchemaError(f"the schema fragment {schema!r}")
    if "properties" in schema:
        return _object_with_properties(schema)
    if "enum" in schema:
        return _enum(schema["enum"])
    if "const" in schema:
        return _enum([schema["const"]])
    if "type" in schema:
        return _typed(schema)
    constructs = sorted(set(schema) & {"anyOf", "oneOf", "allOf", "not", "$ref", "if"}) or ["a schema without type"]
    raise UnsupportedSchemaError(", ".join(constructs))


def pandas_json(value: Any) -> str:
    """A scalar spelled as NSS's training text spells it (pandas ``to_json``, force_ascii=False)."""
    text = pd.Series([value], dtype=object).to_json(orient="values", force_ascii=False)  # type: ignore[call-overload]
    return str(text)[1:-1]


def _key(name: str) -> str:
    return re.escape(pandas_json(name)) + ":"


def _object_with_properties(schema: dict[str, Any]) -> str:
    properties: dict[str, Any] = schema["properties"]
    required = set(schema.get("required", []))
    parts = [
        _key(name) + ("null" if sub == {"enum": [None]} else build_record_regex(sub))
        for name, sub in properties.items()
    ]
    flags = [name in required for name in properties]
    if any(flags):
        last = max(i for i, flag in enumerate(flags) if flag)
        body = ""
        for i, (part, flag) in enumerate(zip(parts, flags, strict=True)):
            part = f"{part}," if i < last else (f",{part}" if i > last else part)
            body += part if flag else f"({part})?"
    else:
        options = []
        for i, part in enumerate(parts):
            before = "".join(f"({p},)?" for p in parts[:i])
            after = "".join(f"(,{p})?" for p in parts[i + 1 :])
            options.append(before + part + after)
        body = f"({'|'.join(options)})?"
    return r"\{" + body + r"\}"


def _enum(values: list[Any]) -> str:
    choices: list[str] = []
    for value in values:
        if value is None or isinstance(value, (bool, str)):
            spellings = [pandas_json(value)]
        elif isinstance(value, (int, float)):
            spellings = [pandas_json(value), str(value)]
        else:
            raise UnsupportedSchemaError(f"enum values of type {type(value).__name__}")
        choices.extend(re.escape(s) for s in spellings if re.escape(s) not in choices)
    return f"({'|'.join(choices)})"


def _typed(schema: dict[str, Any]) -> str:
    kind = schema["type"]
    if isinstance(kind, list):
        return "(" + "|".join(_typed({**schema, "type": k}) for k in kind) + ")"
    match kind:
        case "string":
            return _string(schema)
        case "integer":
            return _integer(schema)
        case "number":
            return NUMBER
        case "boolean":
            return BOOLEAN
        case "null":
            return NULL
        case "array":
            return _array(schema)
        case "object":
            return _object(schema)
    raise UnsupportedSchemaError(f"type {kind!r}")


def _string(schema: dict[str, Any]) -> str:
    if "minLength" in schema or "maxLength" in schema:
        low = math.ceil(schema.get("minLength", 0))
        high = schema.get("maxLength")
        high_text = "" if high is None else str(math.floor(high))
        if high is not None and math.floor(high) < low:
            raise ConfigError(f"string schema has minLength {schema.get('minLength')} > maxLength {high}")
        return f'"{JSON_STRING_INNER}{{{low},{high_text}}}"'
    if pattern := schema.get("pattern"):
        return _string_pattern(pattern)
    if fmt := schema.get("format"):
        return _FORMATS.get(fmt, JSON_STRING)
    return JSON_STRING


def _string_pattern(pattern: str) -> str:
    """JSON Schema patterns are searched for: an unanchored side may hold any text."""
    anything = f"{JSON_STRING_INNER}*"
    starts = pattern.startswith("^")
    ends = pattern.endswith("$") and not pattern.endswith(r"\$")
    body = pattern[1 if starts else 0 : -1 if ends else None]
    return '"' + ("" if starts else anything) + f"({body})" + ("" if ends else anything) + '"'


def _integer(schema: dict[str, Any]) -> str:
    low, high = schema.get("minimum"), schema.get("maximum")
    if low is None and high is None:
        return NUMBER  # as NSS: an unbounded integer column may be written as 1.0
    if low is None or high is None:
        return INTEGER if low is None or low < 0 else r"(0|[1-9][0-9]*)"
    lo, hi = math.ceil(low), math.floor(high)
    if lo > hi:
        raise ConfigError(f"integer schema has no integer between minimum {low} and maximum {high}")
    if lo >= 0:
        return _range(lo, hi)
    if hi < 0:
        return "(-" + _range(-hi, -lo) + ")"
    return "(-" + _range(1, -lo) + "|" + _range(0, hi) + ")"


def _range(lo: int, hi: int) -> str:
    return str(bounded_regex_for_range(lo, hi)).replace(r"\b", "")


def _repeat(low: Any, high: Any) -> tuple[str, str] | None:
    """The ``{a,b}`` for items after the first, and whether zero items are allowed."""
    lo = int(low or 0)
    if high is not None and int(high) < 1:
        return None
    tail = f"{{{max(lo - 1, 0)},}}" if high is None else f"{{{max(lo - 1, 0)},{int(high) - 1}}}"
    return tail, "?" if lo == 0 else ""


def _array(schema: dict[str, Any]) -> str:
    repeat = _repeat(schema.get("minItems"), schema.get("maxItems"))
    if repeat is None:
        return r"\[\]"
    tail, optional = repeat
    item = build_record_regex(schema["items"]) if "items" in schema else "(" + "|".join(_PRIMITIVES) + ")"
    return rf"\[(({item})(,({item})){tail}){optional}\]"


def _object(schema: dict[str, Any]) -> str:
    repeat = _repeat(schema.get("minProperties"), schema.get("maxProperties"))
    if repeat is None:
        return r"\{\}"
    tail, optional = repeat
    extra = schema.get("additionalProperties")
    value = build_record_regex(extra) if isinstance(extra, dict) else "(" + "|".join(_PRIMITIVES) + ")"
    pair = f"{JSON_STRING}:{value}"
    return rf"\{{({pair}(,{pair}){tail}){optional}\}}"
