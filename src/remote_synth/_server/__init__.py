"""A vLLM server we launch and own: its settings, the process, and the supervisor that keeps it up.

It knows processes and readiness, not records. ``standalone/`` holds the two stdlib scripts that run
inside the server's own interpreter (the lifeline and the auth gate): they import nothing of ours.
"""

from .launch import adapter_name_for, launch_settings, serve_settings
from .supervisor import run_supervised
from .vllm import ServerSettings, VllmServer

__all__ = ["ServerSettings", "VllmServer", "adapter_name_for", "launch_settings", "run_supervised", "serve_settings"]
