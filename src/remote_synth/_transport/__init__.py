"""The HTTP layer: vLLM's OpenAI-compatible routes, retries, replicas, preflight and runtime adapters.

It knows HTTP and JSON, not records or pandas. The engine imports only ``types`` (completions,
server load, the ``CompletionSender`` protocol), never the client itself.
"""

from .client import InferenceClient, TimeoutPolicy
from .retry import RetryPolicy
from .types import Completion, CompletionSender, ServerInfo, ServerLoad

__all__ = [
    "Completion",
    "CompletionSender",
    "InferenceClient",
    "RetryPolicy",
    "ServerInfo",
    "ServerLoad",
    "TimeoutPolicy",
]
