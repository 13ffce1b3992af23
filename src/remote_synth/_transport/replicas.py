"""Several servers behind one client: least requests in flight, failover, re-admission through /health.

Each base URL is a replica with its own connection pool (and key). A request goes
to the admitted replica with the fewest requests in flight. A replica that fails
a request without an answer, or with a 5xx, leaves the rotation for ``cooldown``
seconds; the failed request is retried by the retry policy, on another replica.
When its cooldown is over, a replica comes back only once its ``/health``
answers (a 404, a gateway without that route, counts as an answer). With one
replica nothing is ever taken out: there is nowhere else to go, and the retry
policy and the recovery probe handle an outage. Knows HTTP, not records.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import httpx

__all__ = ["COOLDOWN", "Replica", "ReplicaSet"]

logger = logging.getLogger("remote_synth.client")

COOLDOWN = 5.0
"""Seconds a failed replica stays out of the rotation before its /health is asked."""
ANSWERED = (200, 404)
"""/health statuses that mean "this server answers"."""


@dataclass
class Replica:
    """One server: its URL (for messages: credentials masked), its pool, and its standing."""

    url: str
    http: httpx.AsyncClient
    in_flight: int = 0
    out_until: float | None = None
    """None: in the rotation; else when its /health may be asked again."""
    probing: bool = False


class ReplicaSet:
    """Picks a replica per request and keeps track of which ones fail."""

    def __init__(
        self,
        replicas: Sequence[Replica],
        *,
        probe_timeout: float,
        cooldown: float = COOLDOWN,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not replicas:
            raise ValueError("at least one replica")
        self.replicas = list(replicas)
        self.probe_timeout = probe_timeout
        self.cooldown = cooldown
        self._clock = clock

    @property
    def admitted(self) -> list[Replica]:
        return [r for r in self.replicas if r.out_until is None]

    async def pick(self) -> Replica:
        """The admitted replica with the fewest requests in flight (after re-admitting what is back)."""
        now = self._clock()
        for replica in self.replicas:
            if replica.out_until is not None and replica.out_until <= now and not replica.probing:
                await self._readmit(replica)
        pool = self.admitted or [min(self.replicas, key=lambda r: r.out_until or 0.0)]
        return min(pool, key=lambda r: r.in_flight)

    def failed(self, replica: Replica, reason: str) -> None:
        """Take ``replica`` out of the rotation for a cooldown (never the only one)."""
        if len(self.replicas) == 1:
            return
        if replica.out_until is None:
            logger.warning("%s failed (%s): out of the rotation for %.0f s", replica.url, reason, self.cooldown)
        replica.out_until = self._clock() + self.cooldown

    def answered(self, replica: Replica, status: int) -> None:
        """A /health answer from outside ``pick`` (the recovery probe): admit or keep out."""
        if status in ANSWERED and replica.out_until is not None:
            replica.out_until = None
            logger.warning("%s answers again: back in the rotation", replica.url)

    async def _readmit(self, replica: Replica) -> None:
        replica.probing = True
        try:
            response = await replica.http.get("/health", timeout=self.probe_timeout)
            status = response.status_code
        except httpx.HTTPError:
            status = 0
        finally:
            replica.probing = False
        if status in ANSWERED:
            self.answered(replica, status)
        else:
            replica.out_until = self._clock() + self.cooldown

    async def aclose(self) -> None:
        for replica in self.replicas:
            await replica.http.aclose()
