"""Before generating: is the server healthy, is the adapter served, does the prompt fit, do constraints bite.

The answers are a ``ServerInfo``; every problem is one typed error that names the
server. Library messages say what is wrong; the CLI adds what to type.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import re
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any

from .._exceptions import (
    APIConnectionError,
    APIStatusError,
    APITimeoutError,
    AuthenticationError,
    BadRequestError,
    NotFoundError,
    ServerCheckError,
)
from .._naming import AdapterNaming
from .client import InferenceClient
from .models import ServedModel, context_length, request_name, serves
from .readiness import is_ready, until
from .types import Completion, ServerInfo

__all__ = ["check_server", "wait_for_server"]

logger = logging.getLogger("remote_synth.preflight")

PROBE_REGEX = "remote-synth-probe-[0-9]{4}"
PROBE_VALUE = "rs-probe"
PROBE_TOKENS = 64
"""Enough for the probe's answer; fitted to the context like every request."""


async def wait_for_server(
    client: InferenceClient,
    adapter: str | None,
    timeout: float,
    *,
    on_wait: Callable[[float], None] | None = None,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
) -> None:
    """Until the server is healthy and lists ``adapter`` (None: health only), at most ``timeout`` s.

    For stacks that start the server and the client together (compose): the client waits
    instead of failing on a server that is still loading its model.
    """
    adapters = () if adapter is None else (adapter,)
    if not await until(lambda: is_ready(client, *adapters), timeout=timeout, on_wait=on_wait, clock=clock, sleep=sleep):
        raise ServerCheckError(f"the server at {client.display_url} was not ready after {timeout:.0f} s")


async def check_server(
    client: InferenceClient,
    adapter: str,
    prompt: str,
    constraints: Sequence[Mapping[str, Any]] = (),
    *,
    lazy: bool = False,
    max_tokens: int | None = None,
    naming: AdapterNaming = "plain",
    base: str | None = None,
) -> ServerInfo:
    """Health, the adapter in ``/v1/models``, the prompt's length, and structured outputs.

    ``constraints``: ``structured_outputs`` fields, best first; the first the server accepts
    (and obeys) is the info's ``structured_outputs``.
    ``lazy``: the adapter may be missing from the list (a resolver plugin loads it on first use);
    the base model's context and tokenizer stand in for it. ``max_tokens``: the job's own, which
    no request of the check exceeds either. ``naming``: how requests name the adapter
    (``models.request_name``; ``base`` is the base model for ``base:adapter``); the info's ``model``.
    """
    health = await client.health()
    if health >= 500:  # 404: a gateway without /health; 0: no answer, which /v1/models reports below
        raise APIStatusError(  # the server fails (exit 1), it is not the job that is wrong
            f"the server at {client.display_url} is not healthy (/health answered HTTP {health})",
            status_code=health,
            endpoint="GET /health",
        )
    models = await _served_models(client)
    adapter = request_name(models, adapter, naming, base)
    tokenizer = adapter
    if not serves(models, adapter) and not lazy and await _loads_on_request(client, adapter, prompt):
        models = await _served_models(client)
        lazy = True  # served: behind a router the list may come from a replica that has not loaded it yet
    if not serves(models, adapter) and lazy:
        tokenizer = next((m.id for m in models if not m.is_adapter), adapter)
        models = [*models, ServedModel(id=adapter, parent=tokenizer)]
        logger.info("adapter %r is not listed yet; the server is trusted to load it on first use", adapter)
    if not serves(models, adapter):
        served = ", ".join(sorted(m.id for m in models)) or "nothing"
        raise NotFoundError(
            f"adapter {adapter!r} is not served by {client.display_url} (it serves: {served})", status_code=404
        ).with_remedy("adapter_name")
    info = ServerInfo(
        context=context_length(models, adapter),
        prompt_tokens=await client.count_prompt_tokens(tokenizer, prompt),
        model=adapter,
    )
    if info.context is not None and info.context - info.prompt_tokens < 1:
        raise ServerCheckError(
            f"the prompt ({info.prompt_tokens} tokens) does not fit the server's context ({info.context})"
        ).with_remedy("max_model_len")
    if constraints:
        probe_tokens = min(PROBE_TOKENS, info.room or PROBE_TOKENS, max_tokens or PROBE_TOKENS)
        chosen = await _accepted_constraint(client, adapter, prompt, constraints, probe_tokens)
        info = dataclasses.replace(info, structured_outputs=chosen)
    return info


async def _loads_on_request(client: InferenceClient, adapter: str, prompt: str) -> bool:
    """Whether a server that does not list ``adapter`` loads it when a request names it.

    A server with an adapter store (vLLM's filesystem resolver) lists an adapter only after its
    first request, which loads it: one token asked for settles it. A 404 is an adapter served
    nowhere; a 400 one the server found but could not load.
    """
    logger.info("adapter %r is not listed: asking %s for one token of it", adapter, client.display_url)
    try:
        await client.complete_many(adapter, [prompt], {"max_tokens": 1})
    except NotFoundError:
        return False
    except BadRequestError as exc:
        raise ServerCheckError(
            f"the server at {client.display_url} could not load adapter {adapter!r}: {exc}"
        ) from None
    except APITimeoutError:
        raise ServerCheckError(
            f"the server at {client.display_url} did not answer the first request for adapter {adapter!r} within "
            f"{client.timeouts.read:.0f} s (it loads an adapter from its store on the first request)",
        ).with_remedy("request_timeout") from None
    logger.info("%s loaded adapter %r on request", client.display_url, adapter)
    return True


async def _served_models(client: InferenceClient) -> list[ServedModel]:
    try:
        models = await client.models()
    except APIConnectionError as exc:
        raise type(exc)(f"cannot reach a server at {client.display_url} ({exc})").with_remedy("base_url") from None
    except AuthenticationError as exc:
        what = "refused the API key" if client.sends_key else "needs an API key, and none was sent"
        raise AuthenticationError(
            f"the server at {client.display_url} {what} (HTTP {exc.status_code})",
            status_code=exc.status_code,
        ).with_remedy("api_key") from None
    return models


async def _accepted_constraint(
    client: InferenceClient, adapter: str, prompt: str, constraints: Sequence[Mapping[str, Any]], probe_tokens: int
) -> dict[str, Any]:
    """The first constraint the server takes and obeys (a backend without structural tags refuses one)."""
    refusals = []
    for constraint in constraints:
        try:
            await _check_structured_outputs(client, adapter, prompt, constraint, probe_tokens)
            return dict(constraint)
        except BadRequestError as exc:
            refusals.append(f"{'/'.join(constraint)}: {exc}")
            logger.info("the server refused structured outputs by %s", "/".join(constraint))
    raise ServerCheckError(
        f"the server rejected the structured-output constraint ({'; '.join(refusals)}); "
        "try structured_generation.schema_method='json_schema' or turn structured generation off"
    )


async def _check_structured_outputs(
    client: InferenceClient, adapter: str, prompt: str, constraint: Mapping[str, Any], probe_tokens: int
) -> None:
    """Old servers and gateways drop unknown fields silently: make sure the constraint bites.

    A constraint of the same method that only the probe's answer satisfies comes first; then the
    real one (one token), which a server refuses with 400 if its backend cannot take it.
    """
    method = next(iter(constraint))
    json_method = method != "regex"
    base = {"temperature": 1.0, "top_p": 1.0, "top_k": -1, "max_tokens": probe_tokens}
    answer = (await client.complete_many(adapter, [prompt], {**base, "structured_outputs": _probe(method)}))[0]
    await client.complete_many(adapter, [prompt], {**base, "max_tokens": 1, "structured_outputs": dict(constraint)})
    if not _obeys_probe(answer, json_method):
        raise ServerCheckError(
            f"the server at {client.display_url} ignored `structured_outputs` (vLLM older than 0.12, or a "
            "gateway that drops unknown fields): upgrade the server or turn structured generation off"
        )


def _probe(method: str) -> dict[str, Any]:
    """A constraint of ``method`` that only one answer satisfies."""
    if method == "regex":
        return {"regex": PROBE_REGEX}
    schema = {"type": "object", "properties": {"probe": {"enum": [PROBE_VALUE]}}, "required": ["probe"]}
    if method == "structural_tag":
        tag = {"type": "structural_tag", "format": {"type": "json_schema", "json_schema": schema}}
        return {"structural_tag": json.dumps(tag)}
    return {"json": schema}


def _obeys_probe(answer: Completion, json_method: bool) -> bool:
    """A constrained answer is the probe's (or, cut by max_tokens, its beginning); a free one is not."""
    if not json_method:
        return re.fullmatch(PROBE_REGEX, answer.text.strip()) is not None
    compact = re.sub(r"\s+", "", answer.text)
    expected = json.dumps({"probe": PROBE_VALUE}, separators=(",", ":"))
    return compact == expected or (
        answer.finish_reason == "length" and len(compact) > 1 and expected.startswith(compact)
    )
