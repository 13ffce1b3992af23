"""Structured outputs: NSS's regex constructs, the fixed bugs, and property tests on training text."""

from __future__ import annotations

import json
import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from strategies import schema_and_records, training_text

from remote_synth import ConfigError, GenerateParameters
from remote_synth._exceptions import UnsupportedSchemaError
from remote_synth.nss import (
    build_json_based_regex,
    build_record_regex,
    build_structural_tag,
    structured_outputs_choices,
    structured_outputs_payload,
)

FOO = {"properties": {"foo": {"enum": ["a", "b", "c"]}}, "required": ["foo"]}


def test_pinned_regexes() -> None:
    assert build_json_based_regex(FOO) == '(\\{"foo":("a"|"b"|"c")\\}\n)+'
    assert build_json_based_regex(FOO, grouped=True, bos_token="<s>", eos_token="</s>") == (
        '(<s>(\\{"foo":("a"|"b"|"c")\\}\n)+</s>\n)+'
    )
    assert build_json_based_regex(FOO, single_sequence=True) == '\\{"foo":("a"|"b"|"c")\\}'
    grouped_single = build_json_based_regex(FOO, grouped=True, bos_token="<s>", eos_token="</s>", single_sequence=True)
    assert grouped_single == '<s>(\\{"foo":("a"|"b"|"c")\\}\n)+</s>'


def test_special_token_metacharacters_are_escaped() -> None:
    regex = build_json_based_regex(FOO, grouped=True, bos_token="<|im_start|>", eos_token="<|im_end|>")
    assert re.fullmatch(regex, '<|im_start|>{"foo":"a"}\n<|im_end|>\n')


def test_single_sequence_only_when_one_sequence_per_example() -> None:
    on = GenerateParameters(use_structured_generation=True, structured_generation_use_single_sequence=True,
                            structured_generation_schema_method="regex")  # fmt: skip
    assert structured_outputs_payload(on, FOO, max_sequences_per_example=1) == {"regex": '\\{"foo":("a"|"b"|"c")\\}'}
    for other in (None, 2):
        assert structured_outputs_payload(on, FOO, max_sequences_per_example=other)["regex"].endswith("\n)+")


def test_payload_methods() -> None:
    assert structured_outputs_payload(GenerateParameters(), FOO) is None
    js = GenerateParameters(use_structured_generation=True, structured_generation_schema_method="json_schema")
    assert structured_outputs_payload(js, FOO) == {"json": FOO}


def _tag(**shape: object) -> dict:
    return json.loads(build_structural_tag(FOO, bos_token="<s>", eos_token="</s>", **shape))["format"]


RECORD = {"type": "json_schema", "json_schema": FOO}
LINE = {"type": "sequence", "elements": [RECORD, {"type": "const_string", "value": "\n"}]}


def test_structural_tag_shapes_follow_nss_0_1_16() -> None:
    assert _tag() == {"type": "plus", "content": LINE}
    assert _tag(single_sequence=True) == RECORD
    bos, eos = {"type": "const_string", "value": "<s>"}, {"type": "const_string", "value": "</s>"}
    group = {"type": "sequence", "elements": [bos, {"type": "plus", "content": LINE}, eos]}
    newline = {"type": "const_string", "value": "\n"}
    assert _tag(grouped=True) == {"type": "plus", "content": {"type": "sequence", "elements": [group, newline]}}
    bounded = {"type": "sequence", "elements": [bos, {"type": "repeat", "min": 1, "max": 3, "content": LINE}, eos]}
    assert _tag(grouped=True, max_records=3) == bounded  # one group per completion, at most 3 records


def test_a_grouped_regex_is_one_group_of_at_most_the_largest_trained_group() -> None:
    regex = build_json_based_regex(FOO, grouped=True, bos_token="<s>", eos_token="</s>", max_records=2)
    assert regex == '<s>(\\{"foo":("a"|"b"|"c")\\}\n){1,2}</s>'
    assert re.fullmatch(regex, '<s>{"foo":"a"}\n{"foo":"b"}\n</s>')
    assert not re.fullmatch(regex, '<s>{"foo":"a"}\n{"foo":"b"}\n{"foo":"c"}\n</s>')


def test_the_setting_bounds_a_group_before_the_run_does() -> None:
    params = GenerateParameters(structured_generation={"enabled": True, "schema_method": "regex"})
    run_bound = structured_outputs_payload(params, FOO, grouped=True, max_records_per_group=5)
    assert run_bound is not None and "{1,5}" in run_bound["regex"]
    params = GenerateParameters(structured_generation={"enabled": True, "max_records_per_sequence": 2})
    tag = structured_outputs_payload(params, FOO, grouped=True, max_records_per_group=5)
    assert tag is not None and json.loads(tag["structural_tag"])["format"]["elements"][1]["max"] == 2


def test_auto_offers_the_tag_then_the_regex_and_an_explicit_method_only_itself() -> None:
    auto = structured_outputs_choices(GenerateParameters(structured_generation={"enabled": True}), FOO)
    assert [next(iter(c)) for c in auto] == ["structural_tag", "regex"]
    xgrammar = GenerateParameters(structured_generation={"enabled": True, "backend": "xgrammar"})
    assert [next(iter(c)) for c in structured_outputs_choices(xgrammar, FOO)] == ["structural_tag"]
    outlines = GenerateParameters(structured_generation={"enabled": True, "backend": "outlines"})
    assert [next(iter(c)) for c in structured_outputs_choices(outlines, FOO)] == ["regex"]


@pytest.mark.parametrize(
    ("schema", "good", "bad"),
    [
        ({"type": "integer", "minimum": -10, "maximum": 45}, ["-10", "0", "45", "-1"], ["-45", "-11", "46", "-0"]),
        ({"type": "integer", "minimum": 1.5, "maximum": 7.9}, ["2", "7"], ["1", "8"]),
        ({"type": "integer", "minimum": -20, "maximum": -5}, ["-5", "-20"], ["-4", "5", "-21"]),
        ({"type": "integer", "minimum": 3}, ["3", "1000"], ["-3"]),
        ({"type": "string", "minLength": 2.0, "maxLength": 3.0}, ['"ab"', '"abc"'], ['"a"', '"abcd"']),
        ({"type": "string", "maxLength": 2}, ['""', '"ab"'], ['"abc"']),
        ({"type": "string", "pattern": "ab+"}, ['"xabbby"', '"ab"'], ['"xa"']),
        ({"type": "string", "pattern": "^ab+$"}, ['"abb"'], ['"xab"']),
        ({"type": "string", "pattern": "^ab"}, ['"abzz"'], ['"zab"']),
        ({"type": "string", "format": "uuid"}, ['"123e4567-e89b-12d3-a456-426614174000"'], ['"nope"']),
        ({"type": ["array"]}, ["[]", '[1,"a\\/b",true,null]'], ["[", "[1,]"]),
        (
            {"type": "array", "items": {"type": "integer", "minimum": 0, "maximum": 9}, "maxItems": 2},
            ["[1,2]"],
            ["[1,2,3]"],
        ),
        ({"type": ["object"]}, ['{"k":1}', "{}"], ['{"k":{"n":1}}']),
        ({"type": "object", "additionalProperties": {"type": "boolean"}}, ['{"k":true}'], ['{"k":1}']),
        ({"type": ["number", "null"]}, ["1.5", "null", "-2e+10"], ['"1"']),
        ({"enum": ["é", "a/b", None, True, 0.2]}, ['"é"', '"a\\/b"', "null", "true", "0.2"], ['"\\u00e9"', "false"]),
        ({"const": "x"}, ['"x"'], ['"y"']),
        ({"type": "string"}, ['"\x85 raw C1"', '"tab\\t"', '"\\u0001"'], ['"raw\ttab"']),
    ],
)
def test_value_regexes(schema: dict, good: list[str], bad: list[str]) -> None:
    regex = re.compile(build_record_regex(schema))
    for text in good:
        assert regex.fullmatch(text), text
    for text in bad:
        assert not regex.fullmatch(text), text


def test_required_and_optional_property_order() -> None:
    schema = {
        "properties": {"a": {"type": "boolean"}, "b": {"type": "null"}, "c": {"type": "boolean"}},
        "required": ["b"],
    }
    regex = re.compile(build_record_regex(schema))
    for ok in ['{"b":null}', '{"a":true,"b":null}', '{"b":null,"c":false}', '{"a":true,"b":null,"c":true}']:
        assert regex.fullmatch(ok), ok
    for wrong in ['{"c":true,"b":null}', '{"a":true}', '{ "b":null}']:
        assert not regex.fullmatch(wrong), wrong
    nothing_required = re.compile(build_record_regex({"properties": schema["properties"]}))
    assert nothing_required.fullmatch("{}") and nothing_required.fullmatch('{"c":true}')


def test_always_null_property() -> None:
    assert build_record_regex({"properties": {"n": {"enum": [None]}}, "required": ["n"]}) == '\\{"n":null\\}'


@pytest.mark.parametrize("schema", [{"anyOf": [{"type": "string"}]}, {"$ref": "#/x"}, {}, {"type": "mystery"}])
def test_unsupported_constructs_suggest_json_schema(schema: dict) -> None:
    with pytest.raises(UnsupportedSchemaError, match="json_schema"):
        build_record_regex({"properties": {"x": schema}, "required": ["x"]})


def test_unsatisfiable_bounds_are_config_errors() -> None:
    with pytest.raises(ConfigError):
        build_record_regex({"type": "string", "minLength": 5, "maxLength": 2})
    with pytest.raises(ValueError):
        build_record_regex({"type": "integer", "minimum": 1.2, "maximum": 1.8})


@settings(max_examples=200, deadline=None)
@given(schema_and_records())
def test_regex_fully_matches_training_text(case: tuple[dict, list[dict]]) -> None:
    schema, records = case
    regex = re.compile(build_json_based_regex(schema))
    text = training_text(records)
    assert regex.fullmatch(text), text


MUTATIONS = ["space", "swap", "quote", "drop_required"]


@settings(max_examples=200, deadline=None)
@given(schema_and_records(max_records=1), st.sampled_from(MUTATIONS))
def test_regex_rejects_mutated_records(case: tuple[dict, list[dict]], mutation: str) -> None:
    schema, records = case
    record_regex = re.compile(build_record_regex(schema))
    line = training_text(records).rstrip("\n")
    record = records[0]
    if mutation == "space":
        mutated = "{ " + line[1:]
    elif mutation == "quote":
        mutated = line.replace('"', "", 1)
    elif mutation == "swap":
        keys = list(record)
        if len(keys) < 2:
            return
        swapped = {keys[1]: record[keys[1]], keys[0]: record[keys[0]], **{k: record[k] for k in keys[2:]}}
        mutated = training_text([swapped]).rstrip("\n")
    else:
        if not schema["required"]:
            return
        mutated = training_text([{k: v for k, v in record.items() if k != schema["required"][0]}]).rstrip("\n")
    assert not record_regex.fullmatch(mutated), mutated
    json.loads(line)  # the original was fine
