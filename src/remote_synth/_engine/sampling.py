"""Sampling: NSS's ``prepare_params`` names onto vLLM's fields, and the body every request carries."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from .._exceptions import ConfigError
from .._transport.types import ServerInfo
from ..nss.params import GenerateParameters

__all__ = [
    "MAPPED_FIELDS",
    "PASSTHROUGH_FIELDS",
    "fit_max_tokens",
    "request_body",
    "sampling_fields",
    "shrink_for_prefill",
]

logger = logging.getLogger("remote_synth.sampling")

#: vLLM sampling fields ``prepare_params`` passes through under their own names.
PASSTHROUGH_FIELDS = frozenset(
    {"top_p", "top_k", "min_p", "repetition_penalty", "seed", "stop", "stop_token_ids", "presence_penalty",
     "frequency_penalty", "ignore_eos", "skip_special_tokens", "include_stop_str_in_output"}
)  # fmt: skip
#: NSS names that map onto other fields (``_get_api_param_mapping``).
MAPPED_FIELDS = frozenset({"max_new_tokens", "temperature", "do_sample", "num_beams", "early_stopping", "eos_token_id"})


def sampling_fields(kwargs: Mapping[str, Any], config: GenerateParameters) -> dict[str, Any]:
    """``prepare_params`` keyword arguments as request fields; unknown names are an error.

    ``max_new_tokens`` → ``max_tokens``; ``do_sample=False`` → temperature 0;
    ``eos_token_id`` → ``stop_token_ids``; ``num_beams`` 1 and ``early_stopping``
    are accepted and dropped.
    """
    unknown = sorted(set(kwargs) - PASSTHROUGH_FIELDS - MAPPED_FIELDS)
    if unknown:
        raise ConfigError(
            f"unknown sampling parameter(s) {unknown}; known: {sorted(PASSTHROUGH_FIELDS | MAPPED_FIELDS)}"
        )
    fields = {k: v for k, v in kwargs.items() if k in PASSTHROUGH_FIELDS}
    temperature = _resolve_temperature(kwargs, config.temperature)
    checked: dict[str, Any] = {
        "temperature": temperature,
        **{k: fields[k] for k in ("top_p", "repetition_penalty") if k in fields},
    }
    GenerateParameters.resolve(overrides=checked, use_env=False)  # ranges, with field-named errors
    _check_vllm_ranges(fields)
    fields["temperature"] = temperature
    if (beams := kwargs.get("num_beams", 1)) not in (None, 1):
        raise ConfigError(f"num_beams={beams}: beam search is not supported by the remote backend; use 1")
    if "max_new_tokens" in kwargs:
        max_new = kwargs["max_new_tokens"]
        if not isinstance(max_new, int) or max_new < 1:
            raise ConfigError(f"max_new_tokens must be a positive integer (got {max_new!r})")
        fields["max_tokens"] = max_new
    if "eos_token_id" in kwargs:
        eos = kwargs["eos_token_id"]
        fields["stop_token_ids"] = list(eos) if isinstance(eos, (list, tuple)) else [eos]
    return fields


def request_body(
    config: GenerateParameters,
    *,
    max_tokens: int,
    keep_special_tokens: bool,
    server: ServerInfo,
    params: Mapping[str, Any] | None = None,
    structured_outputs: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Every sampling field, explicitly (unset fields would take the server's defaults).

    ``max_tokens`` is the run's sizing (``ModelMetadata.max_tokens_for``); ``params``
    (``prepare_params``) may replace it; either is then fitted to the server.
    """
    body: dict[str, Any] = {
        "temperature": config.temperature,
        "top_p": config.top_p,
        "top_k": -1,
        "min_p": 0.0,
        "repetition_penalty": config.repetition_penalty,
        "max_tokens": max_tokens,
        "skip_special_tokens": not keep_special_tokens,
        "include_stop_str_in_output": keep_special_tokens,
        "ignore_eos": False,
    }
    body.update(params or {})
    body["max_tokens"] = fit_max_tokens(int(body["max_tokens"]), server)
    if structured_outputs is not None:
        body["structured_outputs"] = dict(structured_outputs)
    return body


def fit_max_tokens(wanted: int, server: ServerInfo) -> int:
    """``max_tokens`` for a request: what was asked (NSS 0.1.16: the trained length), fitted to the server's context.

    The one place ``max_tokens`` is decided (``shrink_for_prefill`` only takes a prefill off it).
    Deviation from NSS: a server rejects prompt + max_tokens > context, so it is fitted.
    """
    room = server.room
    if room is not None and wanted > room:
        logger.info("max_tokens %d clamped to %d (server context %d, prompt %d tokens)", wanted, room,
                    server.context, server.prompt_tokens)  # fmt: skip
        return room
    return wanted


def shrink_for_prefill(max_tokens: int, prefill: str) -> int:
    """A time-series prompt ends in its group's prefill, which has at most a token per byte."""
    return max(1, max_tokens - len(prefill.encode("utf-8")))


def _check_vllm_ranges(fields: Mapping[str, Any]) -> None:
    """What vLLM would refuse with a 400 once generation runs (``SamplingParams._verify_args``)."""
    top_k = fields.get("top_k", -1)
    if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < -1:
        raise ConfigError(f"top_k must be 0 or -1 (off), or a positive integer (got {top_k!r})")
    min_p = fields.get("min_p", 0.0)
    if isinstance(min_p, bool) or not isinstance(min_p, (int, float)) or not 0.0 <= min_p <= 1.0:
        raise ConfigError(f"min_p must be in [0, 1] (got {min_p!r})")


def _resolve_temperature(kwargs: Mapping[str, Any], default: float) -> float:
    """NSS's rules, without its quirk that an int temperature silently became 0.9."""
    temperature = kwargs.get("temperature")
    if kwargs.get("do_sample", True) is False:
        if temperature not in (None, 0, 0.0):
            raise ConfigError(f"do_sample=False with temperature={temperature}: a nonzero temperature needs sampling")
        return 0.0
    if temperature is None:
        return default
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float)):
        raise ConfigError(f"temperature must be a number (got {temperature!r})")
    return float(temperature)
