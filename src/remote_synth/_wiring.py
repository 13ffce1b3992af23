"""How the settings become the parts a job uses: the HTTP client, the scheduler, the tenant's fields.

``RemoteBackend`` keeps the lifecycle; what each part is built from (which setting goes where) is
here, in one place, so a new setting changes one function.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import httpx

from ._engine import Recovery, Scheduler, WindowPolicy, WindowSettings
from ._settings import RemoteSettings
from ._transport.client import InferenceClient, TimeoutPolicy
from ._transport.readiness import is_ready
from ._transport.retry import RetryPolicy

__all__ = ["client_for", "scheduler_for", "tenant_fields"]


def client_for(
    settings: RemoteSettings,
    base_url: str | list[str],
    api_key: str | list[str] | None,
    adapter: str,
    transport: httpx.AsyncBaseTransport | None = None,
) -> InferenceClient:
    """The client for a job: timeouts, retry, pool, the tenant's headers (session affinity first,
    so an explicit ``--header`` wins), the CA bundle."""
    affinity = {settings.session_header: adapter} if settings.session_affinity else {}
    return InferenceClient(
        base_url,
        api_key=api_key,
        timeouts=TimeoutPolicy(read=settings.request_timeout),
        retry=RetryPolicy(deadline=settings.retry_deadline),
        max_concurrency=settings.max_concurrency,
        prompts_per_request=settings.prompts_per_request,
        headers={**affinity, **settings.extra_headers},
        ca_bundle=settings.ca_bundle,
        transport=transport,
    )


def tenant_fields(settings: RemoteSettings) -> dict[str, Any]:
    """What a tenant adds to every request body: priority, cache salt, then a gateway's own fields."""
    tenant = {"priority": settings.priority, "cache_salt": settings.cache_salt}
    return {**{k: v for k, v in tenant.items() if v is not None}, **settings.extra_body}


def scheduler_for(
    settings: RemoteSettings,
    client: InferenceClient,
    adapter: str,
    *,
    known_slots: int | None,
    reregister: Callable[[], Awaitable[None]] | None,
) -> Scheduler:
    """The window starts at the server's slots where we launched it with a known count; an outage
    is waited out (``Recovery``) within the retry deadline."""
    s = settings
    initial = min(known_slots or s.window, s.max_window)
    window = WindowPolicy(WindowSettings(initial=initial, maximum=s.max_window, step=s.prompts_per_request,
                                         share=s.share))  # fmt: skip
    recovery = Recovery(lambda: is_ready(client, adapter), deadline=s.retry_deadline,
                        where=f"the server at {client.display_url}")  # fmt: skip
    return Scheduler(client, adapter, window, prompts_per_request=s.prompts_per_request,
                     load_interval=s.load_interval, recovery=recovery, reregister=reregister)  # fmt: skip
