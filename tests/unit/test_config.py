"""Generation parameters: NSS names, defaults and ranges, checks NSS lacks, and layering."""

from __future__ import annotations

import pytest

from remote_synth import ConfigError, GenerateParameters


def test_defaults_match_nss() -> None:
    p = GenerateParameters()
    assert (p.num_records, p.temperature, p.repetition_penalty, p.top_p) == (1000, 0.9, 1.0, 1.0)
    assert (p.patience, p.invalid_fraction_threshold) == (3, 0.8)
    assert p.use_structured_generation is False
    assert p.structured_generation_backend == "auto"
    assert p.structured_generation_schema_method == "regex"
    assert not any(p.validation.model_dump().values())


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
    ],
)
def test_bad_values_name_the_field(field: str, value: object) -> None:
    with pytest.raises(ConfigError, match=field):
        GenerateParameters.resolve(overrides={field: value}, use_env=False)


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
