"""Generation parameters: NSS names, defaults and ranges, checks NSS lacks, and layering."""

from __future__ import annotations

import pytest

from remote_synth import ConfigError, GenerateParameters


def test_defaults_match_nss() -> None:
    p = GenerateParameters()
    assert (p.num_records, p.temperature, p.repetition_penalty, p.top_p) == (1000, 0.9, 1.0, 1.0)
    assert (p.patience, p.invalid_fraction_threshold) == (3, 0.8)
    sg = p.structured_generation
    assert (sg.enabled, sg.backend, sg.schema_method, sg.use_single_sequence) == (False, "auto", "auto", False)
    assert sg.max_records_per_sequence is None and sg.method == "structural_tag"  # NSS 0.1.16's auto
    assert p.max_tokens_multiplier == 1.2 and p.enforce_timeseries_fidelity is False
    assert p.validation.enforce_numeric_range is True
    assert not any(v for k, v in p.validation.model_dump().items() if k.startswith("group_by"))


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("temperature", -0.1),
        ("num_records", 0),
        ("top_p", 0.0),
        ("top_p", 1.5),
        ("repetition_penalty", 0),
        ("patience", 0),
        ("invalid_fraction_threshold", 1.2),
        ("structured_generation_schema_method", "grammar"),
        ("structured_generation_backend", "magic"),
        ("max_tokens_multiplier", 0),
        ("max_tokens_multiplier", float("inf")),
    ],
)
def test_bad_values_name_the_field(field: str, value: object) -> None:
    named = field.replace("structured_generation_", "structured_generation.")  # flat names are NSS's aliases
    with pytest.raises(ConfigError, match=named):
        GenerateParameters.resolve(overrides={field: value}, use_env=False)


def test_structural_tag_needs_a_backend_that_serves_one() -> None:
    bad = {"structured_generation": {"enabled": True, "schema_method": "structural_tag", "backend": "guidance"}}
    with pytest.raises(ConfigError, match="structural_tag.*guidance"):
        GenerateParameters.resolve(overrides=bad, use_env=False)
    assert GenerateParameters(structured_generation={"backend": "guidance"}).structured_generation.method == "regex"


def test_both_saved_layouts_load_and_flat_names_win_within_a_layer() -> None:
    nested = {"structured_generation": {"enabled": True, "schema_method": "regex", "max_records_per_sequence": 4}}
    p = GenerateParameters.resolve(nested, use_env=False)
    assert (p.structured_generation.enabled, p.structured_generation.max_records_per_sequence) == (True, 4)
    flat = {"use_structured_generation": True, "structured_generation_schema_method": "json_schema"}
    assert GenerateParameters.resolve(flat, use_env=False).structured_generation.method == "json_schema"
    both = {"structured_generation": {"enabled": False}, "use_structured_generation": True}  # NSS: flat wins
    assert GenerateParameters.resolve(both, use_env=False).use_structured_generation is True


def test_a_later_layer_wins_whichever_spelling_each_uses(monkeypatch: pytest.MonkeyPatch) -> None:
    saved = {"use_structured_generation": True}  # a run saved before 0.1.16
    off = GenerateParameters.resolve(saved, {"structured_generation": {"enabled": False}}, use_env=False)
    assert off.structured_generation.enabled is False
    monkeypatch.setenv("REMOTE_SYNTH_USE_STRUCTURED_GENERATION", "false")
    assert GenerateParameters.resolve({"structured_generation": {"enabled": True}}).use_structured_generation is False
    monkeypatch.setenv("REMOTE_SYNTH_STRUCTURED_GENERATION__SCHEMA_METHOD", "json_schema")
    assert GenerateParameters.resolve().structured_generation.schema_method == "json_schema"


def test_unknown_saved_settings_are_named_in_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    saved = {"some_future_field": 1, "validation": {"x": 1}, "structured_generation": {"enabled": True, "y": 2}}
    p = GenerateParameters.resolve(saved, use_env=False)
    assert p.structured_generation.enabled is True
    warned = [r for r in caplog.records if r.levelname == "WARNING"]
    assert len(warned) == 1
    for name in ("some_future_field", "validation.x", "structured_generation.y"):
        assert name in warned[0].getMessage()


def test_layering_saved_env_overrides(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REMOTE_SYNTH_TEMPERATURE", "0.4")
    monkeypatch.setenv("REMOTE_SYNTH_VALIDATION__GROUP_BY_FIX_UNORDERED_RECORDS", "true")
    saved = {"temperature": 0.2, "top_p": 0.9, "num_records": 50, "some_future_field": 1, "validation": {"x": 1}}
    p = GenerateParameters.resolve(saved, {"num_records": 7})
    assert (p.temperature, p.top_p, p.num_records) == (0.4, 0.9, 7)
    assert p.validation.group_by_fix_unordered_records is True


def test_env_values_are_validated(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REMOTE_SYNTH_TOP_P", "2")
    with pytest.raises(ConfigError, match="top_p"):
        GenerateParameters.resolve()


def test_unknown_override_is_an_error() -> None:
    with pytest.raises(ConfigError, match="tempreture"):
        GenerateParameters.resolve(overrides={"tempreture": 0.5}, use_env=False)


def test_assignment_is_validated() -> None:
    p = GenerateParameters()
    with pytest.raises(ValueError):
        p.temperature = -1


@pytest.mark.parametrize(
    ("values", "env", "message"),
    [
        ({"base_ur": "http://gpu:8000"}, {}, "base_ur: Extra inputs are not permitted"),
        ({}, {"REMOTE_SYNTH_BASE_URL": ",,,"}, "no URL given"),
        ({"base_url": ""}, {}, "must start with http"),
        ({"base_url": "http://127.0.0.1:99999"}, {}, "port out of range"),
        ({"base_url": "gpu-host:8000"}, {}, "must start with http"),
        ({"base_url": "http://:8000"}, {}, "has no host"),
        ({"base_url": ["http://a:1", "nope"]}, {}, "'nope' must start with http"),
        ({"max_concurrency": 0}, {}, "max_concurrency"),
        ({"api_key": 5}, {}, "api_key"),
    ],
)
def test_bad_settings_are_config_errors_and_never_launch_a_server(
    values: dict, env: dict, message: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from remote_synth import RemoteSettings

    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(ConfigError, match=message):
        RemoteSettings(**values)


def test_a_base_url_s_credentials_are_not_echoed() -> None:
    from remote_synth import RemoteSettings

    with pytest.raises(ConfigError) as info:
        RemoteSettings(base_url="http://user:hunter2@gpu:99999")
    assert "hunter2" not in str(info.value) and "***@gpu" in str(info.value)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"temperature": 2.5},
        {"temperature": 5},
        {"top_k": -2},
        {"top_k": 1.5},
        {"min_p": 1.5},
        {"top_p": 0},
        {"repetition_penalty": 0},
    ],  # fmt: skip
)
def test_sampling_values_vllm_refuses_are_refused_before_generation(kwargs: dict) -> None:
    from remote_synth._engine import sampling_fields

    with pytest.raises(ConfigError, match=next(iter(kwargs))):
        sampling_fields(kwargs, GenerateParameters())
