"""Tabular and grouped processors (NSS ``processors.py`` behaviour, with the documented fixes)."""

from __future__ import annotations

import json

import pytest

from remote_synth import ValidationParameters
from remote_synth.nss import GroupedDataProcessor, TabularDataProcessor, create_processor

SCHEMA = {
    "type": "object",
    "properties": {
        "user": {"type": "string"},
        "t": {"type": "integer", "minimum": 0, "maximum": 100},
        "v": {"enum": ["a", "b"]},
        "note": {"type": ["string", "null"]},
    },
    "required": ["user", "t", "v"],
}


def line(**rec: object) -> str:
    return json.dumps(rec, separators=(",", ":"), ensure_ascii=False)


def group(*records: str, bos: str = "<s>", eos: str = "</s>") -> str:
    return bos + "".join(r + "\n" for r in records) + eos


def test_tabular_counts_valid_and_invalid_lines() -> None:
    text = "\n".join([line(user="x", t=1, v="a"), line(user="y", t=2, v="b"), line(user="z", t=500, v="a"), "junk"])
    parsed = TabularDataProcessor(SCHEMA)(7, text)
    assert parsed.prompt_number == 7
    assert len(parsed.valid_records) == 2
    assert parsed.invalid_records == [line(user="z", t=500, v="a")]
    assert parsed.errors == [("500 is greater than the maximum of 100", "maximum")]


def test_tabular_crlf_output_is_not_lost() -> None:
    text = line(user="x", t=1, v="a") + "\r\n" + line(user="y", t=2, v="b") + "\r\n"
    assert len(TabularDataProcessor(SCHEMA)(0, text).valid_records) == 2


GOOD = [line(user="u1", t=1, v="a"), line(user="u1", t=2, v="b"), line(user="u1", t=3, v="a")]


def grouped(**flags: bool) -> GroupedDataProcessor:
    return GroupedDataProcessor(SCHEMA, "user", "<s>", "</s>", order_by="t", validation=ValidationParameters(**flags))


def test_grouped_valid_group() -> None:
    parsed = grouped()(0, group(*GOOD))
    assert [r["t"] for r in parsed.valid_records] == [1, 2, 3]
    assert parsed.invalid_records == []


def test_grouped_without_delimiters_is_one_invalid_record() -> None:
    text = "\n".join(GOOD)
    parsed = grouped()(0, text)
    assert parsed.invalid_records == [text]
    assert parsed.errors == [("Group BOS and/or EOS tokens missing", "groupby")]


def test_grouped_accept_no_delineator_treats_text_as_one_group() -> None:
    parsed = grouped(group_by_accept_no_delineator=True)(0, "\n".join(GOOD) + "\n")
    assert len(parsed.valid_records) == 3


def test_grouped_last_record_needs_its_newline() -> None:
    text = "<s>" + GOOD[0] + "\n" + GOOD[1] + "</s>"
    assert grouped()(0, text).errors == [("Group BOS and/or EOS tokens missing", "groupby")]


def test_one_invalid_record_fails_the_group_and_stays_aligned() -> None:
    bad = line(user="u1", t=999, v="a")
    parsed = grouped()(0, group(GOOD[0], bad, GOOD[1]) + group(*GOOD))
    assert len(parsed.valid_records) == 3
    assert len(parsed.invalid_records) == 3 == len(parsed.errors)
    # NSS 0.1.16: in the order written, as written, every record with the group's error
    assert parsed.invalid_records == [GOOD[0], bad, GOOD[1]]
    assert parsed.errors == [("Invalid JSON in other groupby records", "groupby")] * 3


def test_a_group_without_a_valid_record_keeps_each_record_s_own_error() -> None:
    parsed = grouped()(0, group("{bad json}", line(user="u1", t=999, v="a")))
    assert parsed.invalid_records == ["{bad json}", line(user="u1", t=999, v="a")]
    assert [e[1] for e in parsed.errors] == ["Invalid JSON", "maximum"]


def test_ignore_invalid_records_keeps_the_rest_of_the_group() -> None:
    parsed = grouped(group_by_ignore_invalid_records=True)(0, group(GOOD[0], "{bad json}", GOOD[1]))
    assert len(parsed.valid_records) == 2 and parsed.invalid_records == []


def test_non_unique_group_value() -> None:
    other = line(user="u2", t=5, v="a")
    parsed = grouped()(0, group(GOOD[0], other))
    assert parsed.valid_records == []
    assert parsed.errors == [("Groupby value is not unique", "groupby")] * 2
    fixed = grouped(group_by_fix_non_unique_value=True)(0, group(GOOD[0], other))
    assert [r["user"] for r in fixed.valid_records] == ["u1", "u1"]


def test_a_group_fixed_for_its_key_but_rejected_for_its_order_reports_what_the_model_wrote() -> None:
    """NSS's order: the key fix, then the order check; a rejected group's text is the model's own."""
    processor = GroupedDataProcessor(SCHEMA, "user", "<s>", "</s>", order_by="t",
                                     validation=ValidationParameters(group_by_fix_non_unique_value=True))  # fmt: skip
    other = line(user="u2", t=0, v="a")
    parsed = processor(0, group(GOOD[2], other))
    assert parsed.errors == [("Group not ordered", "groupby")] * 2
    assert [json.loads(r)["user"] for r in parsed.invalid_records] == ["u1", "u2"]
    ordered = processor(0, group(GOOD[0], line(user="u2", t=5, v="a")))
    assert [r["user"] for r in ordered.valid_records] == ["u1", "u1"]


def test_unordered_group() -> None:
    parsed = grouped()(0, group(GOOD[2], GOOD[0]))
    assert parsed.errors == [("Group not ordered", "groupby")] * 2
    fixed = grouped(group_by_fix_unordered_records=True)(0, group(GOOD[2], GOOD[0]))
    assert [r["t"] for r in fixed.valid_records] == [1, 3]


def test_unorderable_order_by_values_fail_the_group_instead_of_crashing() -> None:
    schema = {**SCHEMA, "properties": {**SCHEMA["properties"], "t": {"type": ["integer", "string", "null"]}}}
    processor = GroupedDataProcessor(schema, "user", "<s>", "</s>", order_by="t")
    parsed = processor(0, group(line(user="u", t=1, v="a"), line(user="u", t="x", v="a")))
    assert parsed.errors == [("Group not ordered", "groupby")] * 2
    parsed = processor(0, group(line(user="u", t=1, v="a"), line(user="u", v="a", note=None)))
    assert parsed.valid_records == []


def test_composite_group_by() -> None:
    processor = GroupedDataProcessor(SCHEMA, ["user", "v"], "<s>", "</s>")
    assert len(processor(0, group(GOOD[0], GOOD[2])).valid_records) == 2
    assert processor(0, group(GOOD[0], GOOD[1])).errors[0] == ("Groupby value is not unique", "groupby")


def test_regex_metacharacters_in_special_tokens() -> None:
    processor = GroupedDataProcessor(SCHEMA, "user", "<|im_start|>", "<|im_end|>")
    assert len(processor(0, group(*GOOD, bos="<|im_start|>", eos="<|im_end|>")).valid_records) == 3


@pytest.mark.parametrize(("group_by", "kind"), [(None, TabularDataProcessor), ("user", GroupedDataProcessor)])
def test_factory(group_by: str | None, kind: type) -> None:
    processor = create_processor(SCHEMA, group_by=group_by, bos_token="<s>", eos_token="</s>")
    assert type(processor) is kind
    assert processor.needs_special_tokens is (group_by is not None)
