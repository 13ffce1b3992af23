"""How a request's ``model`` names an adapter: the one choice list, for the settings and the transport."""

from __future__ import annotations

from typing import Literal

__all__ = ["AdapterNaming"]

AdapterNaming = Literal["auto", "plain", "base:adapter"]
"""By its name (vLLM, llm-d, KServe), as ``<base>:<adapter>`` (Ray Serve LLM's multiplexed
adapters), or whichever of the two ``/v1/models`` lists (auto)."""
