"""Adapters on a running server: list, register at runtime, unregister.

vLLM loads adapters at runtime through ``/v1/load_lora_adapter`` when it runs
with ``VLLM_ALLOW_RUNTIME_LORA_UPDATING=1``. Registering is idempotent: an
adapter the server already serves is left alone (and is not ours to unload),
and a load is confirmed in ``/v1/models``. The path is the one on the server's
machine. Knows HTTP through the client, not records.
"""

from __future__ import annotations

import logging

from .._exceptions import BadRequestError, NotFoundError, ServerCheckError
from .client import InferenceClient
from .models import serves

__all__ = ["register_adapter", "unregister_adapter"]

logger = logging.getLogger("remote_synth.adapters")


async def register_adapter(client: InferenceClient, name: str, path: str) -> bool:
    """Make the server serve ``name`` from ``path`` (on its machine); True when this call loaded it."""
    if serves(await client.models(), name):
        logger.info("adapter %r is already served by %s", name, client.display_url)
        return False
    try:
        await client.load_adapter(name, path)
    except NotFoundError:
        raise ServerCheckError(
            f"the server at {client.display_url} does not load adapters at runtime "
            "(vLLM needs VLLM_ALLOW_RUNTIME_LORA_UPDATING=1)"
        ) from None
    except BadRequestError as exc:
        if "already been loaded" not in str(exc):
            raise ServerCheckError(f"the server at {client.display_url} could not load {path!r}: {exc}") from None
        return False  # another client loaded it meanwhile: not ours
    if not serves(await client.models(), name):
        raise ServerCheckError(f"the server at {client.display_url} said it loaded {name!r}, but does not list it")
    logger.info("loaded adapter %r from %s on %s", name, path, client.display_url)
    return True


async def unregister_adapter(client: InferenceClient, name: str) -> bool:
    """Stop serving ``name``; False when the server did not hold it.

    vLLM answers 404 both for an adapter it does not hold and, without runtime adapter
    updating, for the route itself (``{"detail": "Not Found"}``): only the first is False.
    """
    try:
        await client.unload_adapter(name)
    except NotFoundError as exc:
        if "cannot be found" in exc.body or "cannot be found" in exc.message:
            return False
        raise ServerCheckError(
            f"the server at {client.display_url} cannot unload adapters (runtime adapter updating is off)"
        ).with_remedy("runtime_adapters") from None
    logger.info("unloaded adapter %r from %s", name, client.display_url)
    return True
