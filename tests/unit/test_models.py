"""``_transport/models.py``: the one reader of ``/v1/models``."""

import pytest

from remote_synth._exceptions import ConfigError, MalformedResponseError
from remote_synth._naming import AdapterNaming
from remote_synth._transport.models import ServedModel, context_length, parse_models, request_name, serves


def test_entries_become_typed_models() -> None:
    data = {"data": [{"id": "base", "max_model_len": 2048}, {"id": "nss-a", "parent": "base", "root": "/adapters/a"}]}
    models = parse_models(data)
    assert models == [ServedModel("base", max_model_len=2048), ServedModel("nss-a", parent="base", root="/adapters/a")]
    assert models[1].is_adapter and not models[0].is_adapter
    assert serves(models, "nss-a", "base") and not serves(models, "nss-b")


@pytest.mark.parametrize("data", [["a"], {"data": "nope"}, {"data": [{"name": "x"}]}, {"data": [1, 2]}])
def test_a_wrong_shape_is_one_malformed_response_naming_the_route(data: object) -> None:
    with pytest.raises(MalformedResponseError, match="/v1/models") as info:
        parse_models(data)
    assert info.value.endpoint == "GET /v1/models"


def test_context_comes_from_the_adapter_then_its_parent_then_the_smallest_listed() -> None:
    base = ServedModel("base", max_model_len=4096)
    own = ServedModel("a", parent="base", max_model_len=1024)
    inherits = ServedModel("b", parent="base")
    assert context_length([base, own], "a") == 1024
    assert context_length([base, inherits], "b") == 4096
    assert context_length([ServedModel("x", max_model_len=512), base], "missing") == 512
    assert context_length([ServedModel("x")], "x") is None


def test_a_boolean_is_not_a_context_length() -> None:
    assert parse_models({"data": [{"id": "a", "max_model_len": True}]})[0].max_model_len is None


RAY = [ServedModel("base"), ServedModel("base:tenant-a", parent="base")]
"""Ray Serve LLM lists a multiplexed adapter as ``<base>:<adapter>``."""


@pytest.mark.parametrize(
    ("models", "naming", "base", "expected"),
    [
        (RAY, "auto", None, "base:tenant-a"),
        ([ServedModel("base"), ServedModel("tenant-a", parent="base")], "auto", None, "tenant-a"),
        ([ServedModel("base")], "auto", None, "tenant-a"),  # not listed (a store): its own name
        ([ServedModel("b1:tenant-a"), ServedModel("b2:tenant-a")], "auto", None, "tenant-a"),  # ambiguous
        (RAY, "plain", None, "tenant-a"),
        ([ServedModel("base")], "base:adapter", None, "base:tenant-a"),
        ([ServedModel("b1"), ServedModel("b2")], "base:adapter", "b2", "b2:tenant-a"),
    ],
)
def test_a_request_names_the_adapter_as_the_server_lists_it_or_as_told(
    models: list[ServedModel], naming: AdapterNaming, base: str | None, expected: str
) -> None:
    assert request_name(models, "tenant-a", naming, base) == expected


def test_base_adapter_naming_with_several_bases_and_none_named_is_one_clear_error() -> None:
    with pytest.raises(ConfigError, match=r"lists 2 base models \(b1, b2\); name the base model"):
        request_name([ServedModel("b1"), ServedModel("b2")], "tenant-a", "base:adapter")
