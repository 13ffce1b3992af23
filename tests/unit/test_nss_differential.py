"""Differential tests against the real NSS 0.1.16 package (installed by `make`, requirements/nss-0.1.16.txt).

Hypothesis-generated completions, schemas and batch traces go through NSS's processors,
``GenerationBatches``, regex and structural-tag builders and results, and through ours. A
difference fails the test unless it is one of the intended deviations listed in ``DEVIATIONS``
(docs/deviations.md says why each one is there).
"""

from __future__ import annotations

import dataclasses
import json
import re
from typing import Any

import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from strategies import TEXT_CHARS, schema_and_records, training_text

from remote_synth.nss import (
    Batch,
    GenerateJobResults,
    GenerateParameters,
    GenerationBatches,
    GroupedDataProcessor,
    TabularDataProcessor,
    build_json_based_regex,
    build_structural_tag,
)

nss_processors = pytest.importorskip("nemo_safe_synthesizer.generation.processors", reason="make installs NSS 0.1.16")
nss_results = pytest.importorskip("nemo_safe_synthesizer.generation.results")
nss_batch = pytest.importorskip("nemo_safe_synthesizer.generation.batch")
nss_regex = pytest.importorskip("nemo_safe_synthesizer.generation.regex_manager")
nss_config = pytest.importorskip("nemo_safe_synthesizer.config")
nss_generate = pytest.importorskip("nemo_safe_synthesizer.config.generate")

DEVIATIONS = {
    "crlf": "a record line ending in CR (or other trailing white space) is parsed, not dropped (bug 11)",
    "trailing text": "text after a record on its line makes one invalid record, not a silent drop (bug 11)",
    "empty frame": "results without a record still have the schema's columns (bug 12)",
}
"""Intended differences (reference: nss-generation.md §8), each with its reason."""

SLOW = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def deviation(text: str) -> str | None:
    """Which intended deviation, if any, a completion's text runs into (None: the outputs must match)."""
    for line in text.split("\n"):
        if "}" not in line:
            continue
        tail = line[line.rindex("}") + 1 :]
        if tail and not tail.strip(" \t\r\f\v"):
            return "crlf"
        if tail.strip():
            return "trailing text"
    return None


def same_parse(ours: Any, theirs: Any) -> None:
    assert ours.valid_records == theirs.valid_records
    assert ours.invalid_records == theirs.invalid_records
    assert [e[1] for e in ours.errors] == [e[1] for e in theirs.errors]
    assert [e[0] for e in ours.errors] == [e[0] for e in theirs.errors]


@st.composite
def mangled(draw: st.DrawFn, records: list[dict[str, Any]]) -> str:
    """The training text of ``records``, then damaged as a sampling model damages it."""
    lines = training_text(records).split("\n")
    for _ in range(draw(st.integers(0, 3))):
        i = draw(st.integers(0, len(lines) - 1))
        kind = draw(st.sampled_from(["cut", "junk", "nan", "drop", "dup", "tail", "edit"]))
        if kind == "cut":
            lines[i] = lines[i][: draw(st.integers(0, len(lines[i])))]
        elif kind == "junk":
            lines.insert(i, draw(st.text(TEXT_CHARS, max_size=12)).replace("\n", " "))
        elif kind == "nan" and ":" in lines[i]:
            lines[i] = re.sub(r":(-?[0-9.]+|true|false|null)", ":" + draw(st.sampled_from(["NaN", "Infinity", "1e400"])),
                              lines[i], count=1)  # fmt: skip
        elif kind == "drop":
            lines.pop(i)
        elif kind == "dup":
            lines.insert(i, lines[i])
        elif kind == "tail":
            lines[i] += draw(st.sampled_from(["\r", " ", "</s>", " junk"]))
        elif kind == "edit" and lines[i]:
            at = draw(st.integers(0, len(lines[i]) - 1))
            lines[i] = lines[i][:at] + draw(st.sampled_from(['"', "}", "{", ",", "9", "x"])) + lines[i][at + 1 :]
        if not lines:
            lines = [""]
    return "\n".join(lines)


@SLOW
@given(data=st.data())
def test_tabular_processor_matches_nss(data: st.DataObject) -> None:
    schema, records = data.draw(schema_and_records())
    text = data.draw(mangled(records))
    theirs = nss_processors.TabularDataProcessor(schema, config=nss_generate.ValidationParameters())(0, text)
    ours = TabularDataProcessor(schema, detailed_errors=True)(0, text)
    if deviation(text) is None:
        same_parse(ours, theirs)
    else:  # a deviation only ever finds more records, never fewer valid ones
        assert len(ours.valid_records) >= len(theirs.valid_records)


GROUP_SCHEMA = {
    "type": "object",
    "properties": {"user": {"type": "string"}, "t": {"type": "integer", "minimum": 0, "maximum": 50}},
    "required": ["user", "t"],
}


@st.composite
def grouped_text(draw: st.DrawFn) -> str:
    groups = []
    for _ in range(draw(st.integers(1, 3))):
        rows = []
        for _ in range(draw(st.integers(1, 4))):
            user = draw(st.sampled_from(["u1", "u1", "u1", "u2"]))
            t = draw(st.integers(-2, 60))
            row = json.dumps({"user": user, "t": t}, separators=(",", ":"))
            rows.append(draw(st.sampled_from([row, row, row, row[:-3], '{"user":"u1","t":NaN}'])))
        groups.append("<s>" + "".join(r + "\n" for r in rows) + "</s>")
    return draw(st.sampled_from(["\n", ""])).join(groups)


@SLOW
@given(text=grouped_text(), flags=st.fixed_dictionaries({k: st.booleans() for k in (
    "group_by_ignore_invalid_records", "group_by_fix_non_unique_value", "group_by_fix_unordered_records",
)}))  # fmt: skip
def test_grouped_processor_matches_nss(text: str, flags: dict[str, bool]) -> None:
    theirs_cfg = nss_generate.ValidationParameters(**flags)
    theirs = nss_processors.GroupedDataProcessor(GROUP_SCHEMA, theirs_cfg, "<s>", "</s>", "user", "t")(0, text)
    ours = GroupedDataProcessor(GROUP_SCHEMA, group_by="user", order_by="t", bos_token="<s>", eos_token="</s>",
                                validation=GenerateParameters(validation=flags).validation)  # fmt: skip
    same_parse(ours(0, text), theirs)


@st.composite
def batch_trace(draw: st.DrawFn) -> tuple[int, float, int, list[tuple[int, int, bool]]]:
    """A job: target, threshold, patience, then per batch (valid lines, invalid lines, all cut at max_tokens)."""
    target = draw(st.integers(1, 60_000))
    threshold = draw(st.sampled_from([0.0, 0.3, 0.5, 0.8, 1.0]))
    patience = draw(st.integers(1, 4))
    batches = draw(st.lists(st.tuples(st.integers(0, 3), st.integers(0, 3), st.booleans()), min_size=1, max_size=12))
    return target, threshold, patience, batches


ROW = '{"a":1}\n'
BAD = '{"a":"x"}\n'
SCHEMA = {"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"]}


@SLOW
@given(trace=batch_trace())
def test_batch_sizes_stop_rules_and_results_match_nss(
    trace: tuple[int, float, int, list[tuple[int, int, bool]]],
) -> None:
    target, threshold, patience, plan = trace
    theirs = nss_results.GenerationBatches(target, invalid_fraction_threshold=threshold, patience=patience)
    ours = GenerationBatches(target, invalid_fraction_threshold=threshold, patience=patience)
    nss_proc = nss_processors.TabularDataProcessor(SCHEMA, config=nss_generate.ValidationParameters())
    our_proc = TabularDataProcessor(SCHEMA)
    for valid, invalid, cut in plan:
        size = ours.get_next_num_prompts()
        assert size == theirs.get_next_num_prompts()
        if ours.is_stopped or ours.num_valid_records >= target:
            break
        text = ROW * valid + BAD * invalid
        b_theirs, b_ours = nss_batch.Batch(nss_proc), Batch(our_proc)
        for i in range(min(size, 3)):
            b_theirs.process(i, text, completion_tokens=5)
            b_theirs.finish_reasons["length" if cut else "stop"] += 1
            b_ours.process(i, text, "length" if cut else "stop", completion_tokens=5)
        theirs.add_batch(b_theirs)
        ours.add_batch(b_ours)
        assert ours.status.value == theirs.status.value
        assert (ours.num_valid_records, ours.num_invalid_records, ours.num_prompts) == (
            theirs.num_valid_records, theirs.num_invalid_records, theirs.num_prompts)  # fmt: skip
    theirs.job_complete()
    ours.job_complete()
    assert ours.status.value == theirs.status.value
    r_theirs = nss_results.GenerateJobResults.from_batches(theirs, None, ["a"], 2.0)
    r_ours = GenerateJobResults.from_batches(ours, None, ["a"], 2.0)
    for name in ("num_valid_records", "num_invalid_records", "num_prompts", "valid_record_fraction",
                 "num_completion_tokens", "tokens_per_prompt", "tokens_per_second"):  # fmt: skip
        assert getattr(r_ours, name) == getattr(r_theirs, name), name
    if r_theirs.df.empty:  # DEVIATIONS["empty frame"]
        assert r_ours.df.empty and list(r_ours.df.columns) == ["a"]
    else:
        pd.testing.assert_frame_equal(r_ours.df.reset_index(drop=True), r_theirs.df.reset_index(drop=True),
                                      check_dtype=False)  # fmt: skip


def _nss_params(grouped: bool, single: bool, per_sequence: int | None, max_sequences: int | None) -> Any:
    return nss_config.SafeSynthesizerParameters.model_validate({
        "data": {"group_training_examples_by": "user" if grouped else None, "max_sequences_per_example": max_sequences},
        "generation": {"structured_generation": {"enabled": True, "use_single_sequence": single,
                                                 "max_records_per_sequence": per_sequence}},
    })  # fmt: skip


SHAPES = st.tuples(st.booleans(), st.booleans(), st.one_of(st.none(), st.integers(1, 9)),
                   st.sampled_from([None, 1, 3]), st.one_of(st.none(), st.integers(1, 9)))  # fmt: skip


@SLOW
@given(schema_records=schema_and_records(), shape=SHAPES)
def test_structural_tags_match_nss(schema_records: tuple[dict[str, Any], Any], shape: tuple[Any, ...]) -> None:
    schema, _ = schema_records
    grouped, single, per_sequence, max_sequences, per_group = shape
    theirs = nss_regex.build_json_structural_tag(schema, _nss_params(grouped, single, per_sequence, max_sequences),
                                                 "<s>", "</s>", default_max_records_per_group=per_group)  # fmt: skip
    ours = build_structural_tag(schema, grouped=grouped, bos_token="<s>", eos_token="</s>",
                                single_sequence=single and max_sequences == 1,
                                max_records=per_sequence or per_group)  # fmt: skip
    assert json.loads(ours) == json.loads(theirs)


PLAIN = st.fixed_dictionaries({
    "type": st.just("object"),
    "properties": st.dictionaries(st.sampled_from(["a", "b", "c_d"]), st.one_of(
        st.just({"type": "boolean"}),
        st.integers(0, 500).map(lambda n: {"type": "integer", "minimum": 0, "maximum": n}),
        st.lists(st.sampled_from(["x", "yy", "z z", "1"]), min_size=1, max_size=3, unique=True).map(
            lambda v: {"enum": v}),
    ), min_size=1),
})  # fmt: skip
"""Schemas of the constructs where neither regex has a known bug (§8 bugs 15, 21-25 stay ours)."""


@SLOW
@given(schema=PLAIN, grouped=st.booleans(), per_group=st.one_of(st.none(), st.integers(1, 3)), data=st.data())
def test_regexes_accept_what_nss_s_accept(schema: dict[str, Any], grouped: bool, per_group: int | None,
                                          data: st.DataObject) -> None:  # fmt: skip
    schema = {**schema, "required": list(schema["properties"])}
    theirs = nss_regex.build_json_based_regex(schema, _nss_params(grouped, False, None, None), "<s>", "</s>",
                                              default_max_records_per_group=per_group)  # fmt: skip
    ours = build_json_based_regex(schema, grouped=grouped, bos_token="<s>", eos_token="</s>", max_records=per_group)
    values = {"a": st.one_of(st.booleans(), st.integers(-3, 600)), "b": st.integers(-3, 600),
              "c_d": st.sampled_from(["x", "yy", "z z", "1", "w"])}  # fmt: skip
    rows = data.draw(st.lists(st.fixed_dictionaries({k: values[k] for k in schema["properties"]}), min_size=1,
                              max_size=4))  # fmt: skip
    body = "".join(json.dumps(r, separators=(",", ":")) + "\n" for r in rows)
    text = f"<s>{body}</s>" if grouped else body
    assert bool(re.fullmatch(ours, text)) == bool(re.fullmatch(theirs, text))
    if not grouped:
        assert bool(re.fullmatch(ours, body + body)) == bool(re.fullmatch(theirs, body + body))


def test_our_results_become_nss_s_with_every_field() -> None:
    from remote_synth.nss.upstream import as_nss_results

    batches = GenerationBatches(5)
    b = Batch(TabularDataProcessor(SCHEMA))
    b.process(0, ROW * 5, "stop", completion_tokens=9)
    batches.add_batch(b)
    batches.job_complete()
    ours = GenerateJobResults.from_batches(batches, 5, ["a"], 3.0)
    theirs = as_nss_results(ours)
    assert type(theirs) is nss_results.GenerateJobResults
    assert theirs.status is nss_results.GenerationStatus.COMPLETE
    for f in dataclasses.fields(theirs):
        if f.name != "df":
            assert getattr(theirs, f.name) == getattr(ours, f.name), f.name
    assert theirs.df.equals(ours.df)


# -- time series (NSS 0.1.16's protocol): the partial first record and the token prompt ------------

nss_ts_prompting = pytest.importorskip("nemo_safe_synthesizer.generation.timeseries_prompting")
nss_metadata = pytest.importorskip("nemo_safe_synthesizer.llm.metadata")

SEED_VALUES = st.one_of(st.integers(-(10**6), 10**6), st.text(TEXT_CHARS, max_size=12),
                        st.floats(-1e6, 1e6, allow_nan=False).map(lambda f: round(f, 3)))  # fmt: skip
COLUMN_TYPES = st.sampled_from(["string", "integer", "number", ["string", "null"], None])


@SLOW
@given(group=SEED_VALUES, start=SEED_VALUES, group_type=COLUMN_TYPES, time_type=COLUMN_TYPES, pseudo=st.booleans())
def test_partial_first_records_match_nss(
    group: object, start: object, group_type: object, time_type: object, pseudo: bool
) -> None:
    from remote_synth.nss.timeseries import partial_record_prefix

    def prop(kind: object) -> dict[str, Any]:
        return {} if kind is None else {"type": kind}

    schema = {"properties": {"g": prop(group_type), "ts": prop(time_type), "x": {"type": "string"}}}
    columns = ["ts", "x"] if pseudo else ["g", "ts", "x"]
    if pseudo:
        del schema["properties"]["g"]
    try:
        theirs = nss_ts_prompting.build_partial_record_prefix(
            columns=columns, schema=schema, group_column="__nss_sequence_id" if pseudo else "g", group_id=group,
            timestamp_column="ts", start_timestamp=start)  # fmt: skip
    except Exception as exc:  # noqa: BLE001  # NSS's GenerationError: a value its column's type refuses
        with pytest.raises(ValueError):
            partial_record_prefix(columns, schema, {"ts": start} if pseudo else {"g": group, "ts": start})
        assert "serialize" in str(exc)
        return
    assert partial_record_prefix(columns, schema, {"ts": start} if pseudo else {"g": group, "ts": start}) == theirs


class _ByteTokenizer:
    def encode(self, text: str, *, add_special_tokens: bool) -> list[int]:
        return [b + 3 for b in text.encode("utf-8")] + ([1] if add_special_tokens else [])


@SLOW
@given(prompt=st.text(TEXT_CHARS, max_size=40), context=st.lists(st.text(TEXT_CHARS, min_size=1, max_size=30),
       max_size=3), add_bos=st.booleans(), add_eos=st.booleans())  # fmt: skip
def test_token_prompts_match_nss(prompt: str, context: list[str], add_bos: bool, add_eos: bool) -> None:
    import asyncio

    from remote_synth._engine.series_jobs import TokenPrompts

    config = nss_metadata.LLMPromptConfig(template="{instruction}{schema}{prefill}", add_bos_token_to_prompt=add_bos,
                                          add_eos_token_to_prompt=add_eos, bos_token="<s>", bos_token_id=1,
                                          eos_token="</s>", eos_token_id=2)  # fmt: skip
    tokenizer = _ByteTokenizer()
    theirs = nss_ts_prompting.build_training_compatible_prompt_token_ids(
        tokenizer=tokenizer, prompt_config=config, prompt=prompt, record_context=context
    )

    async def tokenize(text: str) -> list[int]:
        return tokenizer.encode(text, add_special_tokens=False)

    ours = TokenPrompts(prompt, ([1] if add_bos else [], [2] if add_eos else []), 1, tokenize, 4096)
    assert asyncio.run(ours.prompt_ids(context)) == theirs


# -- time series (NSS 0.1.16's flexible mode): the kept prefix, its end, and the sample chosen -------

nss_ts_backend = pytest.importorskip("nemo_safe_synthesizer.generation.timeseries_backend")
nss_record_utils = pytest.importorskip("nemo_safe_synthesizer.data_processing.record_utils")
FLEX_FMT = "%Y-%m-%d %H:%M"
AFTER_END = "Generated row appears after the sequence end marker"
"""NSS's text for every row after the prefix ended; ours drops good rows after an end (deviation)
and calls rows after a failure "follows an invalid sequence row"."""


def _nss_flexible(rules: Any, group: str) -> Any:
    """NSS's backend with only what its flexible checks read (no model, no vLLM engine)."""
    backend = object.__new__(nss_ts_backend.TimeseriesBackend)
    backend._flexible_metadata = nss_metadata.FlexibleTimeseriesMetadata(
        index_column=rules.index_column, marker_column=rules.marker_column, max_records=rules.max_records,
        source_timestamp_column=rules.source_column, source_timestamp_format=rules.source_format,
        source_interval_seconds=rules.source_interval)  # fmt: skip
    backend._flexible_timeseries = True
    backend._sequence_index_column, backend._sequence_marker_column = rules.index_column, rules.marker_column
    backend._group_column = "g"
    return backend


FLEX_ROWS = st.lists(st.fixed_dictionaries({
    "g": st.sampled_from(["a", "a", "a", "b"]),
    "i": st.one_of(st.integers(0, 6), st.just("3"), st.just(True), st.floats(0, 6).map(float)),
    "ts": st.one_of(st.integers(0, 8).map(lambda h: f"2026-01-01 {h:02d}:00"), st.just("later"), st.none()),
    "end": st.one_of(st.booleans(), st.just("true"), st.none()),
}), max_size=6)  # fmt: skip


@SLOW
@given(rows=FLEX_ROWS, last=st.one_of(st.none(), st.integers(0, 3)), last_hour=st.one_of(st.none(), st.integers(0, 4)),
       max_records=st.integers(1, 7), interval=st.sampled_from([None, 3600, 7200]), source=st.booleans())  # fmt: skip
def test_flexible_prefixes_and_ends_match_nss(
    rows: list[dict[str, Any]],
    last: int | None,
    last_hour: int | None,
    max_records: int,
    interval: int | None,
    source: bool,
) -> None:
    from remote_synth.nss.flexible import FlexibleRules

    rules = FlexibleRules("i", "end", max_records, "ts" if source else None, FLEX_FMT if source else None, interval)
    last_source = (
        None if last_hour is None or not source else rules.source_seconds({"ts": f"2026-01-01 {last_hour:02d}:00"})
    )
    nss = _nss_flexible(rules, "a")
    state = nss_ts_backend.GroupState(group_id="a", group_ordinal=1,
                                      prompt_state=nss_ts_backend.RecordPromptState(prefix=""),
                                      last_timestamp_seconds=last, last_source_timestamp_seconds=last_source)  # fmt: skip
    records = [nss_record_utils.ParsedRecord(text=json.dumps(r), parsed=dict(r)) for r in rows]
    retained, stop = nss._trim_flexible_timeseries_records(state, records)
    nss._validate_postprocessed_group_identity(state, retained)
    nss._validate_postprocessed_sequence_indices(state, retained)
    accepted = [r.parsed for r in retained if r.is_valid]
    theirs_end = nss._resolve_postprocessed_termination(stop)

    ours = rules.keep(rows, 0 if last is None else last + 1, last_source, lambda row: row.get("g") == "a")
    assert ours.rows == accepted
    assert ours.end == theirs_end
    failed = [(i, r.error) for i, r in enumerate(records) if r.error is not None and r.error[0] != AFTER_END]
    position = {id(row): i for i, row in enumerate(rows)}
    assert [(position[id(row)], error) for row, error in ours.invalid[:1]] == failed[:1]  # what broke it, and why
    after = len(rows) - len(ours.rows) - len(ours.invalid)
    assert after == ours.dropped and (after == 0 or ours.end is not None)
    assert sum(r.error is not None for r in records) == len(ours.invalid) + ours.dropped  # NSS counts both invalid


@SLOW
@given(samples=st.lists(st.tuples(st.integers(0, 3), st.sampled_from([None, "terminal", "cap"])), max_size=6))
def test_flexible_sample_choice_matches_nss(samples: list[tuple[int, str | None]]) -> None:
    from remote_synth.nss.flexible import Kept, select

    nss = _nss_flexible(type("R", (), {"index_column": "i", "marker_column": "end", "max_records": 9,
                                       "source_column": None, "source_format": None, "source_interval": None}), "a")  # fmt: skip
    outcomes = [nss_ts_backend._ResponseOutcome([object()] * n, end if n else None) for n, end in samples]
    ours = [Kept([{}] * n, end if n else None, [], 0, None) for n, end in samples]  # type: ignore[arg-type]
    assert select(ours) == nss._select_response(outcomes)
