"""Record extraction and validation: NSS's behaviour, its fixed bugs, and parity with jsonschema."""

from __future__ import annotations

import json
import math
import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from jsonschema import Draft202012Validator
from jsonschema.exceptions import best_match
from strategies import record_schemas, schema_and_records, training_text, value_for

from remote_synth.nss import RecordValidator, extract_records
from remote_synth.nss.records import _quick_object, sanitize_text

NSS_PATTERN = re.compile(r"{.+?}(?=\n|$)")

IRIS = {
    "type": "object",
    "properties": {
        "sepal.length": {"type": "number", "minimum": 4.3, "maximum": 7.9},
        "sepal.width": {"type": "number", "minimum": 2.0, "maximum": 4.4},
        "variety": {"enum": ["Setosa", "Versicolor", "Virginica"]},
    },
    "required": ["sepal.length", "sepal.width", "variety"],
}


@pytest.mark.parametrize(
    "text",
    [
        '{"a":1}\n{"b":2}\n',
        '<s>{"a":1}\nnoise\n{"a": "}"}',
        '{"a":1}{"b":2}\n',
        "{}\n{ }\n",
        '{"a":1\n{"a":2}',
        "no records at all",
        'x{"a":1}\n\n\n{"b":[1,{"c":2}]}',
    ],
)
def test_extraction_matches_nss_on_clean_lines(text: str) -> None:
    assert extract_records(text) == NSS_PATTERN.findall(text)


def test_trailing_whitespace_and_crlf_keep_the_record() -> None:
    text = sanitize_text('{"a":1}\r\n{"a":2} \n{"a":3}\t')
    assert extract_records(text) == ['{"a":1}', '{"a":2}', '{"a":3}']
    assert NSS_PATTERN.findall('{"a":1}\r\n{"a":2} \n') == []  # what NSS loses


def test_trailing_text_is_kept_so_it_counts_as_invalid() -> None:
    validator = RecordValidator(IRIS)
    raws = extract_records('{"sepal.length":5.0,"sepal.width":3.0,"variety":"Setosa"}</s>\n')
    assert raws == ['{"sepal.length":5.0,"sepal.width":3.0,"variety":"Setosa"}</s>']
    assert validator.parse(raws[0]) == ("Invalid JSON: Extra data", "Invalid JSON")


def test_truncated_last_line_is_dropped_as_in_nss() -> None:
    assert extract_records('{"a":1}\n{"a":2,"b":') == ['{"a":1}']


def test_sanitize_drops_lone_surrogates() -> None:
    assert sanitize_text("a\ud800b") == "ab"


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ('{"a":1 "b":2}', "Invalid JSON: Expecting ',' delimiter"),
        ("{a:1}", "Invalid JSON: Expecting property name enclosed in double quotes"),
        ('{"a":"x}', "Invalid JSON: Unterminated string starting at"),
        ('{"a":1} x', "Invalid JSON: Extra data"),
        ('{"a":}', "Invalid JSON: Expecting value"),
    ],
)
def test_json_errors_carry_nss_messages(raw: str, message: str) -> None:
    assert RecordValidator({"type": "object", "properties": {"a": {}}}).parse(raw) == (message, "Invalid JSON")


def test_schema_errors_are_jsonschema_messages() -> None:
    v = RecordValidator(IRIS)
    assert v.parse('{"sepal.width":3.0,"variety":"Setosa"}') == ("'sepal.length' is a required property", "required")
    assert v.parse('{"sepal.length":9,"sepal.width":3.0,"variety":"Setosa"}') == (
        "9 is greater than the maximum of 7.9",
        "maximum",
    )
    assert v.parse('{"sepal.length":5,"sepal.width":3.0,"variety":"Rose"}') == (
        "'Rose' is not one of ['Setosa', 'Versicolor', 'Virginica']",
        "enum",
    )


def test_summary_mode_reports_the_category_without_quoting_values() -> None:
    v = RecordValidator(IRIS, detailed_errors=False)
    error = v.parse('{"sepal.length":5,"sepal.width":3.0,"variety":"Secret Value"}')
    assert error == ("'variety': enum", "enum")
    assert "Secret" not in error[0]


def test_draft_2020_semantics() -> None:
    v = RecordValidator(
        {
            "properties": {
                "i": {"type": "integer"},
                "e": {"enum": [0, 1, None]},
                "n": {"type": "number", "maximum": 5},
            },
            "required": ["i"],
        }
    )
    assert isinstance(v.parse('{"i":1.0}'), dict)
    assert v.parse('{"i":true}') == ("True is not of type 'integer'", "type")
    assert isinstance(v.parse('{"i":1,"e":1.0}'), dict)
    assert v.parse('{"i":1,"e":true}')[1] == "enum"
    assert isinstance(v.parse('{"i":1,"e":null}'), dict)
    not_json = ("Object contains a value that is not valid JSON", "Invalid JSON value")  # NSS 0.1.16
    for text in ('{"i":1,"n":NaN}', '{"i":1,"n":Infinity}', '{"i":1,"n":-Infinity}', '{"i":1,"n":1e400}',
                 '{"i":1,"x":[1,{"y":NaN}]}', '{"i":NaN}'):  # fmt: skip
        assert v.parse(text) == not_json, text
    assert isinstance(v.parse('{"i":1,"n":1e300,"x":[1.5,{"y":"NaN"}]}'), dict) is False  # 1e300 > maximum 5
    assert isinstance(v.parse('{"i":1,"n":-1e300,"x":[1.5,{"y":"NaN"}]}'), dict)
    record = v.parse('{"i":1,"extra":"kept","i":2}')
    assert record == {"i": 2, "extra": "kept"}


def test_a_closed_record_is_checked_for_nan_where_its_checks_let_one_through() -> None:
    """Every property required: after the fast checks pass, only the unbounded properties can hold a
    NaN, an infinity or an overflowing int; the others, and extra keys, are still found."""
    v = RecordValidator(
        {
            "type": "object",
            "properties": {
                "b": {"type": "number", "minimum": 0, "maximum": 5},
                "u": {"type": "number"},
                "s": {"type": "string"},
            },
            "required": ["b", "u", "s"],
        }
    )
    not_json = ("Object contains a value that is not valid JSON", "Invalid JSON value")
    assert isinstance(v.parse('{"b":1,"u":1e300,"s":"x"}'), dict)
    for text in ('{"b":1,"u":NaN,"s":"x"}', '{"b":1,"u":-Infinity,"s":"x"}', '{"b":1,"u":1e400,"s":"x"}',
                 '{"b":NaN,"u":1,"s":"x"}', '{"b":1,"u":1,"s":"x","z":NaN}', '{"b":1,"s":"x","z":NaN}'):  # fmt: skip
        assert v.parse(text) == not_json, text
    assert v.parse('{"b":1,"u":' + "9" * 400 + ',"s":"x"}')[1] == "Float Conversion"


def test_float_conversion_and_huge_integers_are_invalid_records() -> None:
    v = RecordValidator({"properties": {"a": {"type": "integer"}, "b": {}}})
    big = "9" * 400
    assert v.parse(f'{{"a":1,"b":{big}}}') == (
        f"Value {big} in field 'b' is too large to convert to float64",
        "Float Conversion",
    )
    message, category = v.parse('{"a":' + "1" * 5000 + "}")  # past CPython's int parser limit
    assert category == "Invalid JSON" and message.startswith("Invalid JSON: ")


def test_nss_schema_with_extra_top_level_keyword_uses_jsonschema() -> None:
    schema = {**IRIS, "additionalProperties": False}
    v = RecordValidator(schema)
    assert v.parse('{"sepal.length":5,"sepal.width":3.0,"variety":"Setosa","x":1}')[1] == "additionalProperties"


def _expected(schema: dict, record: object) -> tuple[str, str] | None:
    err = best_match(Draft202012Validator(schema).iter_errors(record))
    return None if err is None else (err.message, str(err.validator))


values = st.recursive(
    st.none() | st.booleans() | st.integers(-(10**6), 10**6) | st.floats() | st.text(max_size=30),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=3), inner, max_size=3),
    max_leaves=5,
)


@settings(max_examples=300, deadline=None)
@given(st.data())
def test_validator_agrees_with_jsonschema_best_match(data: st.DataObject) -> None:
    schema = data.draw(record_schemas())
    names = list(schema["properties"])
    record = {}
    for name in names:
        if data.draw(st.integers(0, 9)) == 0:
            continue  # missing
        if data.draw(st.booleans()):
            record[name] = value_for(data.draw, schema["properties"][name])
        else:
            record[name] = data.draw(values)
    expected = _expected(schema, record)
    got = RecordValidator(schema).check(record)
    assert got == expected
    summary = RecordValidator(schema, detailed_errors=False).check(record)
    assert (summary is None) == (expected is None)
    if expected is not None:
        assert summary[1] == expected[1]


@settings(max_examples=200, deadline=None)
@given(schema_and_records())
def test_records_drawn_from_a_schema_validate_and_round_trip(case: tuple[dict, list[dict]]) -> None:
    schema, records = case
    validator = RecordValidator(schema)
    parsed = validator.split(extract_records(training_text(records)))
    assert parsed.invalid_records == []
    assert len(parsed.valid_records) == len(records)
    for got, want in zip(parsed.valid_records, records, strict=True):
        assert got.keys() == want.keys()
        for key in want:
            if isinstance(want[key], float):
                assert math.isclose(got[key], want[key], rel_tol=1e-9, abs_tol=1e-12)
            else:
                assert got[key] == want[key]


def test_parse_returns_the_record_itself() -> None:
    raw = json.dumps({"sepal.length": 5.1, "sepal.width": 3.5, "variety": "Setosa"}, separators=(",", ":"))
    assert RecordValidator(IRIS).parse(raw) == {"sepal.length": 5.1, "sepal.width": 3.5, "variety": "Setosa"}


def test_summary_mode_does_not_quote_huge_values() -> None:
    big = "7" * 400
    message, category = RecordValidator({"properties": {"b": {}}}, detailed_errors=False).parse(f'{{"b":{big}}}')
    assert category == "Float Conversion" and big not in message and "'b'" in message


# -- the orjson fast path: whatever it parses, json parses to the very same value ---------------

NUMBER = r"-?(0|[1-9][0-9]{0,24})(\.[0-9]{1,24})?([eE][+-]?[0-9]{1,3})?"
number_literals = st.from_regex(NUMBER, fullmatch=True) | st.sampled_from(
    ["1e400", "-1e400", "9223372036854775807", "9223372036854775808", "-9223372036854775808",
     "-9223372036854775809", "18446744073709551615", "18446744073709551616", "2.4703282292062328e-324",
     "1.7976931348623157e308", "1.7976931348623159e308", "NaN", "Infinity", "-0", "-0.0"]
)  # fmt: skip
string_literals = st.text(max_size=6).map(json.dumps) | st.sampled_from(
    ['"\\ud800"', '"\\udc00x"', '"\\u0000"', '"a\tb"', '"\\/"', '"\\""', '"é"', "'x'"]
)
literals = number_literals | string_literals | st.sampled_from(["true", "false", "null", "[]", "{}", "[1,", "tru"])


@st.composite
def json_texts(draw: st.DrawFn) -> str:
    def value(depth: int) -> str:
        kind = draw(st.integers(0, 9 if depth < 2 else 7))
        if kind == 8:
            return "[" + ",".join(value(depth + 1) for _ in range(draw(st.integers(0, 3)))) + "]"
        if kind == 9:
            return obj(depth + 1)
        return draw(literals)

    def obj(depth: int) -> str:
        keys = draw(st.lists(st.sampled_from(["a", "b", "c", "é"]), max_size=4))
        sep = draw(st.sampled_from([",", ", ", ",,", ""]))
        return "{" + sep.join(f'"{k}":{value(depth)}' for k in keys) + "}"

    return obj(0) + draw(st.sampled_from(["", "", "", " ", "}", "x", '{"a":1}']))


def same_json(a: object, b: object) -> bool:
    """Equal, with the same types at every depth and the same key order (1 != 1.0, 0.0 != -0.0)."""
    if type(a) is not type(b):
        return False
    if isinstance(a, dict):
        assert isinstance(b, dict)
        return list(a) == list(b) and all(same_json(a[k], b[k]) for k in a)
    if isinstance(a, list):
        assert isinstance(b, list)
        return len(a) == len(b) and all(same_json(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, float):
        return repr(a) == repr(b)
    return a == b


@settings(max_examples=3000, deadline=None)
@given(json_texts())
def test_what_orjson_parses_json_parses_to_the_same_record(raw: str) -> None:
    quick = _quick_object(raw)
    if quick is not None:
        assert same_json(quick, json.loads(raw))


@settings(max_examples=3000, deadline=None)
@given(number_literals)
def test_orjson_reads_every_number_as_json_does_or_not_at_all(literal: str) -> None:
    raw = f'{{"a":{literal},"b":[{literal}]}}'
    quick = _quick_object(raw)
    if quick is not None:
        assert same_json(quick, json.loads(raw))


ABC = {
    "type": "object",
    "properties": {
        "a": {"type": "integer", "minimum": -(2**62)},
        "b": {"type": ["number", "null"], "maximum": 1e300},
        "c": {"type": "string", "maxLength": 3},
        "é": {"type": "array"},
    },
    "required": ["a"],
}


@settings(max_examples=1500, deadline=None)
@given(json_texts())
def test_a_record_gets_the_same_verdict_with_or_without_orjson(raw: str) -> None:
    validator = RecordValidator(ABC)
    fast = validator.parse(raw)
    exact = validator._parse_exact(raw)
    assert same_json(fast, exact) if isinstance(fast, dict) else fast == exact


@pytest.mark.parametrize(
    "raw",
    ['{"a":123456789012345678901234567890}', '{"a":[-9223372036854775809]}', '{"a":1e400}', '{"a":NaN}',
     '{"a":"\\ud800"}', '{"a":1} ', '{"a":{"b":18446744073709551616}}'],
)  # fmt: skip
def test_what_orjson_would_read_otherwise_is_left_to_json(raw: str) -> None:
    assert _quick_object(raw) is None
