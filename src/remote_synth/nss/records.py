"""Raw model text → records: extraction, parsing and schema validation.

NSS (``record_utils.extract_and_validate_records``) finds records with
``re.findall(r"{.+?}(?=\\n|$)")``, parses them with ``json.loads`` and validates
each with ``jsonschema.validate``, which re-checks the schema on every call.
Here the schema is compiled once into plain predicates that decide the valid
path; only a failing record goes to jsonschema, whose ``best_match`` yields the
very (message, keyword) tuple NSS reports.

Deviations from NSS, on purpose (see docs/deviations.md):
- CRLF and trailing white space after a record are stripped: NSS silently
  drops such lines, so CRLF output yielded zero records.
- A line whose record is followed by other text (``{...} junk``) is one
  invalid record (``Invalid JSON: Extra data``) instead of vanishing.
- A JSON integer too long for CPython's int parser is an invalid record, not
  an exception that aborts generation.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import orjson
from jsonschema import validators
from jsonschema.exceptions import best_match

__all__ = ["ErrorTuple", "ParsedResponse", "RecordValidator", "extract_records", "sanitize_text"]

ErrorTuple = tuple[str, str]
"""(detailed message, summary category), as in NSS."""

INVALID_JSON = "Invalid JSON"
INVALID_JSON_VALUE = "Invalid JSON value"
FLOAT_CONVERSION = "Float Conversion"
NOT_JSON_VALUE: ErrorTuple = ("Object contains a value that is not valid JSON", INVALID_JSON_VALUE)
"""NSS 0.1.16: NaN and ±Infinity (``1e400`` too) parse, but are not JSON; the record is invalid."""
_ANNOTATIONS = frozenset(
    {"title", "description", "$comment", "default", "examples", "format", "deprecated", "readOnly", "writeOnly"}
)
_TYPE_TESTS: dict[str, Callable[[Any], bool]] = {
    "integer": lambda v: type(v) is int or (type(v) is float and v.is_integer()),
    "number": lambda v: type(v) is int or type(v) is float,
    "string": lambda v: type(v) is str,
    "boolean": lambda v: type(v) is bool,
    "null": lambda v: v is None,
    "array": lambda v: type(v) is list,
    "object": lambda v: type(v) is dict,
}
_NUMBER_TESTS: dict[str, Callable[[float], Callable[[Any], bool]]] = {
    "minimum": lambda b: lambda v: v >= b,
    "maximum": lambda b: lambda v: v <= b,
    "exclusiveMinimum": lambda b: lambda v: v > b,
    "exclusiveMaximum": lambda b: lambda v: v < b,
}


def _pattern_test(pattern: str) -> Callable[[str], bool]:
    """Compiled once per schema, searched per record (JSON Schema's ``pattern`` is a search)."""
    regex = re.compile(pattern)
    return lambda v: regex.search(v) is not None


_STRING_TESTS: dict[str, Callable[[Any], Callable[[str], bool]]] = {
    "minLength": lambda n: lambda v: len(v) >= n,
    "maxLength": lambda n: lambda v: len(v) <= n,
    "pattern": _pattern_test,
}
_FLOAT_SAFE = 2**1000  # ints this small always convert to float64
_MISSING = object()
_ORJSON_INT = 2.0**63
"""orjson reads ints in [-2**63, 2**64) as ints, any other as a float (``json``: an int)."""
_scan = json.JSONDecoder().scan_once  # type: ignore[attr-defined]  # C scanner; not in typeshed


@dataclass(slots=True)
class ParsedResponse:
    """One completion, parsed: NSS ``ParsedResponse``."""

    valid_records: list[dict[str, Any]] = field(default_factory=list)
    invalid_records: list[str] = field(default_factory=list)
    errors: list[ErrorTuple] = field(default_factory=list)
    prompt_number: int | None = None


def sanitize_text(text: str) -> str:
    """Drop lone surrogates (as NSS does) and turn CRLF into LF (NSS does not)."""
    text = text.encode("utf-8", "ignore").decode("utf-8")
    return text.replace("\r\n", "\n") if "\r" in text else text


def extract_records(text: str) -> list[str]:
    """The record candidates of a text, one per line at most.

    As NSS: a record starts at the first ``{`` of a line (text before it is
    ignored) and must end the line with ``}``; ``{}`` and a line cut before
    any closing ``}`` (max_tokens) are skipped. Unlike NSS: trailing white
    space is ignored, and a line with other text after its record is kept so
    that it is counted as invalid.
    """
    found = []
    for line in text.split("\n"):
        start = line.find("{")
        if start < 0:
            continue
        line = line.rstrip()
        if len(line) - start >= 3 and line.endswith("}"):
            found.append(line[start:])
        elif not line.endswith("}") and line.find("}", start + 1) > 0:
            found.append(line[start:])
    return found


class RecordValidator:
    """A schema compiled once; ``parse`` turns one raw record into a dict or an error tuple.

    With ``detailed_errors`` (NSS parity, the default) every error tuple is
    jsonschema's own (message, keyword). Without it, a record whose only fault
    is one common-shape property gets ``("'col': keyword", keyword)``: the same
    summary category, no value quoted (they come from sensitive tables), and
    no jsonschema call on the hot path.
    """

    def __init__(self, schema: dict[str, Any], detailed_errors: bool = True) -> None:
        self.detailed_errors = detailed_errors
        cls = validators.validator_for(schema, default=validators.Draft202012Validator)
        cls.check_schema(schema)
        self.schema = schema
        self._full = cls(schema)
        self._required: tuple[str, ...] = tuple(schema.get("required", ()))
        self._props = _compile_properties(schema, cls) if "$schema" not in schema else None
        self._fast = _compile_fast_path(self._required, self._props) if self._props is not None else None
        self._sub = {name: cls(sub) for name, sub in schema.get("properties", {}).items()}
        names = [name for name, _ in self._props or ()]
        all_required = bool(names) and set(names) <= set(self._required)
        # With every property required, a record of that many keys has no extra key, and only
        # properties whose test admits any int need the float64 check.
        self._closed_size = len(names) if all_required else -1
        self._unbounded = tuple(name for name, check in self._props or () if not check.bounded)

    def parse(self, raw: str) -> dict[str, Any] | ErrorTuple:
        """One raw record: the record, or NSS's (message, category) for why it is invalid."""
        record = _quick_object(raw)
        if record is None:
            return self._parse_exact(raw)
        # What orjson parses holds no NaN, infinity or int too large for a float (see _quick_object).
        if self._fast is not None and self._fast(record):
            return record
        return self.check(record) or record

    def _parse_exact(self, raw: str) -> dict[str, Any] | ErrorTuple:
        """``parse`` with Python's own parser, whose error messages NSS reports."""
        try:
            record, end = _scan(raw, 0)
        except StopIteration:
            return (f"{INVALID_JSON}: Expecting value", INVALID_JSON)
        except ValueError as exc:  # JSONDecodeError, and ints past CPython's digit limit
            return (f"{INVALID_JSON}: {getattr(exc, 'msg', str(exc))}", INVALID_JSON)
        if end != len(raw):
            return (f"{INVALID_JSON}: Extra data", INVALID_JSON)
        if self._fast is not None and type(record) is dict and self._fast(record):
            # Every property passed; a closed record's bounded ones hold no NaN, infinity or huge int.
            closed = len(record) == self._closed_size
            if _holds_float_beyond([record[k] for k in self._unbounded] if closed else record.values(), math.inf):
                return NOT_JSON_VALUE
            error = self._float_overflow(record)
        elif type(record) is dict and _holds_float_beyond(record.values(), math.inf):
            return NOT_JSON_VALUE
        else:
            error = self.check(record)
        return record if error is None else error

    def check(self, record: Any) -> ErrorTuple | None:
        """None when valid; otherwise NSS's (message, keyword) for the best error."""
        if self._props is None or type(record) is not dict:
            return self._best_error(self._full, record) or self._float_overflow(record)
        for name in self._required:
            if name not in record:
                return (f"{name!r} is a required property", "required")
        failing = [(name, check) for name, check in self._props if name in record and not check.test(record[name])]
        if len(failing) == 1:
            error = self._property_error(*failing[0], record[failing[0][0]])
        elif failing:
            error = self._best_error(self._full, record)
        else:
            error = None
        return error or self._float_overflow(record)

    def _float_overflow(self, record: Any) -> ErrorTuple | None:
        """NSS's check that every int field converts to float64 (first offender only)."""
        if type(record) is not dict:
            return None
        keys = self._unbounded if len(record) == self._closed_size else record.keys()
        for key in keys:
            value = record[key]
            if type(value) is int and (value > _FLOAT_SAFE or value < -_FLOAT_SAFE):
                try:
                    float(value)
                except OverflowError:
                    return self._first_overflow(record)
        return None

    def _first_overflow(self, record: dict[str, Any]) -> ErrorTuple | None:
        for key, value in record.items():
            if type(value) is int:
                try:
                    float(value)
                except OverflowError:
                    shown = value if self.detailed_errors else "(a long integer)"
                    return (f"Value {shown} in field '{key}' is too large to convert to float64", FLOAT_CONVERSION)
        return None

    def _property_error(self, name: str, check: _Check, value: Any) -> ErrorTuple | None:
        """The error of the one failing property; without detailed errors, no value is quoted."""
        if not self.detailed_errors and check.category is not None:
            category = check.category(value)
            if category is not None:
                return (f"{name!r}: {category}", category)
        return self._best_error(self._sub[name], value)

    @staticmethod
    def _best_error(validator: Any, instance: Any) -> ErrorTuple | None:
        error = best_match(validator.iter_errors(instance))
        return None if error is None else (error.message, str(error.validator))

    def split(self, raws: Iterable[str]) -> ParsedResponse:
        """Validate many raw records; invalid ones keep their raw text, aligned with errors."""
        out = ParsedResponse()
        for raw in raws:
            result = self.parse(raw)
            if type(result) is dict:
                out.valid_records.append(result)
            else:
                out.invalid_records.append(raw)
                out.errors.append(result)  # type: ignore[arg-type]
        return out


class _Check(NamedTuple):
    """How one property is checked on the valid path.

    ``test(v)`` True must mean jsonschema finds no error; False only means "ask
    jsonschema", so unusual values (NaN, a list in an enum) stay exact.
    ``inline`` is the same test as an expression over ``{v}`` (the value) and
    ``{c}`` (``const``), for the generated function; ``bounded`` says no value
    that passes is a NaN, an infinity or an int that overflows float64.
    """

    test: Callable[[Any], bool]
    bounded: bool = False
    inline: str | None = None
    const: Any = None
    #: The keyword jsonschema's best_match reports for a failing value (None: ask jsonschema).
    category: Callable[[Any], str | None] | None = None


def _compile_fast_path(required: tuple[str, ...], props: list[tuple[str, _Check]]) -> Callable[[dict[str, Any]], bool]:
    """One generated function that is True only when every property check passes.

    The valid path is most of the work; inlined comparisons cost a third of a
    loop calling one closure per property.
    """
    namespace: dict[str, Any] = {"_M": _MISSING}
    conditions = []
    for i, (name, check) in enumerate(props):
        namespace[f"k{i}"], namespace[f"t{i}"], namespace[f"c{i}"] = name, check.test, check.const
        condition = check.inline.format(v=f"v{i}", c=f"c{i}") if check.inline else f"t{i}(v{i})"
        if name in required:
            conditions.append(f"((v{i} := r[k{i}]) is not _M and {condition})")
        else:
            conditions.append(f"((v{i} := r.get(k{i}, _M)) is _M or {condition})")
    names = {name for name, _ in props}
    for j, name in enumerate(n for n in required if n not in names):
        namespace[f"q{j}"] = name
        conditions.append(f"q{j} in r")
    source = (
        "def fast(r):\n    try:\n        return bool("
        + (" and ".join(conditions) or "True")
        + ")\n    except (KeyError, TypeError):\n        return False\n"
    )
    exec(compile(source, "<remote_synth record check>", "exec"), namespace)  # noqa: S102 - built from our own names
    fast: Callable[[dict[str, Any]], bool] = namespace["fast"]
    return fast


def _compile_properties(schema: dict[str, Any], cls: Any) -> list[tuple[str, _Check]] | None:
    """Per-property checks, or None when the top level has keywords we do not compile."""
    top = set(schema) - _ANNOTATIONS - {"properties", "required", "type"}
    if top or schema.get("type", "object") != "object":
        return None
    return [(name, _compile_value(sub, cls)) for name, sub in schema.get("properties", {}).items()]


def _compile_value(sub: Any, cls: Any) -> _Check:
    if sub is True:
        return _Check(lambda v: True, inline="True")
    known = {"type", "enum", *_NUMBER_TESTS, *_STRING_TESTS}
    if not isinstance(sub, dict) or set(sub) - _ANNOTATIONS - known:
        return _Check(cls(sub).is_valid)
    keywords = set(sub) - _ANNOTATIONS
    order = [k for k in sub if k in keywords]
    if keywords == {"enum"}:
        return _enum_check(sub["enum"])._replace(category=lambda v: "enum")
    if keywords == {"type", "minimum", "maximum"} and sub["type"] in ("integer", "number"):
        return _bounded_number_check(sub["type"] == "integer", sub["minimum"], sub["maximum"], order)
    if keywords <= {"type", "minLength", "maxLength"} and sub.get("type") == "string":
        return _string_length_check(sub.get("minLength", 0), sub.get("maxLength"), order)
    if keywords == {"type"} and sub["type"] in ("boolean", "string", "null"):
        inline = {"boolean": "type({v}) is bool", "string": "type({v}) is str", "null": "{v} is None"}
        return _Check(_TYPE_TESTS[sub["type"]], bounded=True, inline=inline[sub["type"]], category=lambda v: "type")
    tests: list[Callable[[Any], bool]] = []
    if "type" in sub:
        tests.append(_type_test(sub["type"]))
    if "enum" in sub:
        tests.append(_enum_check(sub["enum"]).test)
    number_tests = [_NUMBER_TESTS[k](sub[k]) for k in _NUMBER_TESTS if k in sub]
    string_tests = [_STRING_TESTS[k](sub[k]) for k in _STRING_TESTS if k in sub]
    return _Check(_combine(tests, number_tests, string_tests))


def _bounded_number_check(integer: bool, low: float, high: float, order: list[str]) -> _Check:
    """The shape NSS infers for numeric columns."""
    type_test = _TYPE_TESTS["integer" if integer else "number"]

    def test(v: Any) -> bool:
        kind = type(v)
        if kind is int or (kind is float and (not integer or v.is_integer())):
            return bool(low <= v <= high)
        return False

    def category(v: Any) -> str | None:
        number = type(v) is int or type(v) is float
        failing = {"type": not type_test(v), "minimum": number and v < low, "maximum": number and v > high}
        return next((k for k in order if failing[k]), None)

    float_ok = "({v}).is_integer()" if integer else "True"
    inline = f"((type({{v}}) is int or type({{v}}) is float and {float_ok}) and {low!r} <= {{v}} <= {high!r})"
    finite = all(isinstance(b, (int, float)) and math.isfinite(b) for b in (low, high))
    bounded = finite and abs(low) < _FLOAT_SAFE and abs(high) < _FLOAT_SAFE
    return _Check(test, bounded=bounded, inline=inline if finite else None, category=category)


def _string_length_check(low: int, high: int | None, order: list[str]) -> _Check:
    """The shape NSS infers for text columns."""
    top = math.inf if high is None else high

    def test(v: Any) -> bool:
        return type(v) is str and low <= len(v) <= top

    def category(v: Any) -> str | None:
        text = type(v) is str
        failing = {"type": not text, "minLength": text and len(v) < low, "maxLength": text and len(v) > top}
        return next((k for k in order if failing[k]), None)

    inline = "(type({v}) is str and " + f"{low!r} <= len({{v}}) <= {{c}})"
    return _Check(test, bounded=True, inline=inline, const=top, category=category)


def _combine(
    tests: list[Callable[[Any], bool]],
    number_tests: list[Callable[[Any], bool]],
    string_tests: list[Callable[[Any], bool]],
) -> Callable[[Any], bool]:
    if len(tests) == 1 and not number_tests and not string_tests:
        return tests[0]

    def test(v: Any) -> bool:
        if not all(t(v) for t in tests):
            return False
        kind = type(v)
        if kind is int or kind is float:
            return all(t(v) for t in number_tests)
        if kind is str:
            return all(t(v) for t in string_tests)
        return True

    return test


def _type_test(types: str | list[str]) -> Callable[[Any], bool]:
    names = [types] if isinstance(types, str) else list(types)
    tests = [_TYPE_TESTS[n] for n in names if n in _TYPE_TESTS]
    if len(tests) == 1:
        return tests[0]
    return lambda v: any(t(v) for t in tests)


def _enum_check(values: list[Any]) -> _Check:
    """Membership with jsonschema's equality: 1 == 1.0, but True != 1."""
    strings = {v for v in values if type(v) is str}
    numbers = {v for v in values if type(v) in (int, float)}
    bools = {v for v in values if type(v) is bool}
    has_null = any(v is None for v in values)

    def test(v: Any) -> bool:
        kind = type(v)
        if kind is str:
            return v in strings
        if kind is int or kind is float:
            return v in numbers
        if kind is bool:
            return v in bools
        return v is None and has_null

    bounded = all(math.isfinite(n) and abs(n) < _FLOAT_SAFE for n in numbers)
    if numbers or bools:
        return _Check(test, bounded=bounded)
    # Only strings (and null): no other value equals one, so plain membership is exact.
    allowed = frozenset(strings | ({None} if has_null else set()))
    return _Check(test, bounded=True, inline="{v} in {c}", const=allowed)


def _quick_object(raw: str) -> dict[str, Any] | None:
    """The JSON object ``raw`` is, parsed by orjson (2x ``json``'s speed); None when only ``json`` can say.

    orjson refuses what ``json`` would parse to something no record may hold (NaN, ``1e400``) and
    what ``json`` refuses, so either way ``json`` gives the record its verdict and NSS's message.
    It reads an int beyond 64 bits as a float where ``json`` keeps the int: a float that large is
    left to ``json``. ``raw`` must be one object from its first character to its last.
    """
    if not raw.startswith("{") or not raw.endswith("}"):
        return None
    try:
        record = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None
    return None if _holds_float_beyond(record.values(), _ORJSON_INT) else record


def _holds_float_beyond(values: Iterable[Any], limit: float) -> bool:
    """Whether a float not strictly between -``limit`` and ``limit`` is among ``values``, at any depth.

    With ``limit`` infinite: a NaN or an infinity (NSS 0.1.16 ``is_json_value``); with 2**63: a float
    that orjson may have read from an int beyond 64 bits (NaN fails every comparison, so it counts)."""
    for value in values:
        kind = type(value)
        if kind is float:
            if not -limit < value < limit:
                return True
        elif kind is dict:
            if _holds_float_beyond(value.values(), limit):
                return True
        elif kind is list and _holds_float_beyond(value, limit):
            return True
    return False
