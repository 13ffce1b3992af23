"""Owning a vLLM OpenAI-compatible server process: launch, readiness, stop.

Building a ``VllmServer`` only computes the command and environment; ``start``
spawns it in its own process group with its output in a log file, under a
lifeline (``standalone/lifeline.py``) that takes the group down if this process dies,
however it dies; every route but ``/health`` is behind the key (``standalone/authgate.py``);
``wait_ready`` polls (the transport's one wait loop) until ``/health`` answers **and** every
adapter is listed in ``/v1/models``, failing at once (with the log's tail) if the process exits;
``stop`` sends SIGTERM to the group, waits, then SIGKILLs the group and checks
that nothing of it is left and the port is free. This module knows processes
and HTTP probes, not records.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import json
import logging
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

from .._exceptions import APIError, ConfigError, ServerError, ServerStartError
from .._transport.client import InferenceClient, TimeoutPolicy
from .._transport.polling import until
from .._transport.readiness import is_ready, run_blocking

__all__ = ["ServerSettings", "VllmServer", "free_port", "lora_rank_limit"]

logger = logging.getLogger("remote_synth.server")

VLLM_LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)
LOG_TAIL_LINES = 40
DEFAULT_MAX_LORAS = 8
"""``--max-loras`` when not given: every adapter served, up to this many in one batch."""
LIFELINE = Path(__file__).parent / "standalone" / "lifeline.py"
AUTH_GATE = Path(__file__).parent / "standalone" / "authgate.py"
AUTH_GATE_MODULE = "remote_synth_authgate"


def lora_rank_limit(r: int) -> int:
    """The smallest ``--max-lora-rank`` value vLLM accepts that holds rank ``r``."""
    for allowed in VLLM_LORA_RANKS:
        if allowed >= r:
            return allowed
    raise ConfigError(f"LoRA rank {r} is above vLLM's largest --max-lora-rank ({VLLM_LORA_RANKS[-1]})")


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def port_is_free(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


@dataclass(frozen=True)
class ServerSettings:
    """How to launch vLLM for one adapter."""

    model: str
    """Base model: a local path or a hub id the host can resolve."""
    adapter_name: str
    adapter_path: Path
    more_adapters: tuple[tuple[str, Path], ...] = ()
    """Further adapters on the same base model, as (name, path): one server, many tenants."""
    max_loras: int | None = None
    """Adapters in one batch (``--max-loras``); None: one per adapter served, capped at 8."""
    max_cpu_loras: int | None = None
    """Adapters kept in CPU memory (``--max-cpu-loras``); None: vLLM's default."""
    max_lora_rank: int = 16
    max_model_len: int | None = None
    hf_overrides: dict[str, Any] | None = None
    """``--hf-overrides`` (NSS 0.1.16: the run's RoPE scaling, so the context reaches max_seq_length)."""
    max_num_seqs: int | None = None
    """Sequences the server runs at once (``--max-num-seqs``); None: vLLM's default."""
    host: str = "127.0.0.1"
    port: int | None = None
    """None: a free port."""
    api_key: str | None = field(default=None, repr=False)
    """None: a random key (the server is ours alone). Every route but /health needs it."""
    insecure: bool = False
    """No key at all: every route is open (``serve --insecure``)."""
    python: str = sys.executable
    dtype: str = "auto"
    structured_outputs_backend: str = "auto"
    offline: bool = True
    """HF_HUB_OFFLINE: never reach a hub (the base model must be local or cached)."""
    log_file: Path | None = None
    startup_timeout: float = 900.0
    stop_timeout: float = 30.0
    otlp_traces_endpoint: str | None = None
    """vLLM's ``--otlp-traces-endpoint``: it exports a span per request, continuing our ``traceparent``."""
    adapter_store: Path | None = None
    """A directory vLLM's filesystem resolver serves adapters from, each loaded on its first request
    (``store.py``); runtime adapter updating goes on with it."""
    extra_args: tuple[str, ...] = ()
    extra_env: tuple[tuple[str, str], ...] = ()


def require_vllm() -> None:
    """A ``ConfigError`` when this interpreter has no vLLM to launch (the client-only install)."""
    if importlib.util.find_spec("vllm") is None:
        raise ConfigError(
            "vLLM is not installed here: install remote-synth[cpu] (or [gpu]) to launch a local server, "
            "or pass --base-url to use a running one"
        )


RESOLVER_PLUGIN = "lora_filesystem_resolver"


def _resolver_env(store: Path, plugins: str | None) -> dict[str, str]:
    """vLLM's filesystem resolver on ``store``: it loads every plugin when VLLM_PLUGINS is unset,
    else only those named, so a list the caller set gets the resolver added."""
    env = {"VLLM_LORA_RESOLVER_CACHE_DIR": str(store.resolve()), "VLLM_ALLOW_RUNTIME_LORA_UPDATING": "1"}
    if plugins is not None and RESOLVER_PLUGIN not in plugins.split(","):
        env["VLLM_PLUGINS"] = ",".join(p for p in (plugins, RESOLVER_PLUGIN) if p)
    return env


class VllmServer:
    """A vLLM server process we own.

    ```python
    with VllmServer(settings) as server:      # start() + wait_ready(); stop() on exit
        client = InferenceClient(server.base_url, api_key=server.api_key)
    ```
    """

    def __init__(self, settings: ServerSettings) -> None:
        self.settings = settings
        self.port = settings.port or free_port(settings.host)
        self.api_key = None if settings.insecure else settings.api_key or secrets.token_urlsafe(24)
        self.log_file = settings.log_file or Path(tempfile.gettempdir()) / f"remote-synth-vllm-{self.port}.log"
        self.command = self._command()
        self.restarts = 0
        self._process: subprocess.Popen[bytes] | None = None
        self._gate_dir: Path | None = None
        self._stopped = False
        self._closed = False
        """Set by ``stop``/``kill_now`` for good: a restart racing with a stop must not start anything."""
        self._lock = threading.Lock()

    @property
    def base_url(self) -> str:
        host = "127.0.0.1" if self.settings.host in ("0.0.0.0", "") else self.settings.host  # noqa: S104
        return f"http://{host}:{self.port}"

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process else None

    @property
    def adapters(self) -> tuple[tuple[str, Path], ...]:
        """Every adapter served, as (name, path), the first one first."""
        return ((self.settings.adapter_name, self.settings.adapter_path), *self.settings.more_adapters)

    def _command(self) -> list[str]:
        s = self.settings
        modules = [
            json.dumps({"name": name, "path": str(path), "base_model_name": s.model}) for name, path in self.adapters
        ]
        cmd = [
            s.python, "-m", "vllm.entrypoints.openai.api_server",
            "--model", s.model,
            "--enable-lora",
            "--lora-modules", *modules,
            "--max-loras", str(s.max_loras or min(len(modules), DEFAULT_MAX_LORAS)),
            "--max-lora-rank", str(lora_rank_limit(s.max_lora_rank)),
            "--host", s.host,
            "--port", str(self.port),
            "--dtype", s.dtype,
            "--structured-outputs-config", json.dumps(self._structured_outputs_config()),
            "--disable-uvicorn-access-log",
        ]  # fmt: skip
        if s.max_model_len:
            cmd += ["--max-model-len", str(s.max_model_len)]
        if s.hf_overrides:
            cmd += ["--hf-overrides", json.dumps(s.hf_overrides)]
        if s.max_num_seqs:
            cmd += ["--max-num-seqs", str(s.max_num_seqs)]
        if s.max_cpu_loras:
            cmd += ["--max-cpu-loras", str(s.max_cpu_loras)]
        if s.otlp_traces_endpoint:
            cmd += ["--otlp-traces-endpoint", s.otlp_traces_endpoint]
        if self.api_key:
            cmd += ["--middleware", f"{AUTH_GATE_MODULE}.AuthGate"]
        return cmd + list(s.extra_args)

    def _structured_outputs_config(self) -> dict[str, Any]:
        """Compact JSON where the backend can do it: a record must stay on one line to be parsed."""
        backend = self.settings.structured_outputs_backend
        config: dict[str, Any] = {"backend": backend}
        if backend in ("xgrammar", "guidance"):
            config["disable_any_whitespace"] = True
        return config

    def _env(self) -> dict[str, str]:
        env = dict(os.environ)
        env.pop("VLLM_API_KEY", None)
        if self.api_key:
            env["VLLM_API_KEY"] = self.api_key  # not on the command line, where `ps` would show it
        if self._gate_dir is not None:  # the auth gate, importable by the server's interpreter
            env["PYTHONPATH"] = os.pathsep.join(p for p in (str(self._gate_dir), env.get("PYTHONPATH")) if p)
        env.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
        if self.settings.offline:
            env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
        if self.settings.adapter_store is not None:
            env.update(_resolver_env(self.settings.adapter_store, env.get("VLLM_PLUGINS")))
        endpoint = self.settings.otlp_traces_endpoint
        if endpoint and endpoint.rstrip("/").endswith("/v1/traces"):  # vLLM's exporter assumes gRPC otherwise
            env.setdefault("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "http/protobuf")
        env.update(dict(self.settings.extra_env))
        return env

    def start(self) -> VllmServer:
        """Spawn the server in its own process group; does not wait."""
        if self._process is not None or self._closed:
            raise RuntimeError("this server was already started; create a new VllmServer")
        if self.settings.python == sys.executable:
            require_vllm()
        self.log_file.parent.mkdir(parents=True, exist_ok=True)
        if self.api_key and self._gate_dir is None:
            self._gate_dir = Path(tempfile.mkdtemp(prefix="remote-synth-gate-"))
            shutil.copyfile(AUTH_GATE, self._gate_dir / f"{AUTH_GATE_MODULE}.py")
        logger.info("starting vLLM on %s (log: %s)", self.base_url, self.log_file)
        with self.log_file.open("ab") as log:
            log.write(f"remote-synth: starting {' '.join(self.command)}\n".encode())  # the key is not on it
            log.flush()
            # stdin is the lifeline: its write end stays here, and closes when this process ends.
            self._process = subprocess.Popen(  # noqa: S603 - an argument list, never a shell
                [sys.executable, str(LIFELINE), *self.command], stdin=subprocess.PIPE, stdout=log,
                stderr=subprocess.STDOUT, env=self._env(), start_new_session=True,
            )  # fmt: skip
        return self

    def restart(self) -> None:
        """Stop what is left of the server, start it again on the same port, and wait until it is ready."""
        with self._lock:
            if self._closed:
                raise ServerError("the server was stopped; it is not restarted")
            self._stop_group()
            self._process = None
            self._stopped = False
            self.restarts += 1
            logger.warning("restarting vLLM on %s (restart %d)", self.base_url, self.restarts)
            self.start()
        self.wait_ready()

    @property
    def returncode(self) -> int | None:
        """The server's exit code once it has exited, else None."""
        return self._process.poll() if self._process is not None else None

    def wait_ready(
        self,
        timeout: float | None = None,
        *,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        clock: Callable[[], float] = time.monotonic,
        on_wait: Callable[[float], None] | None = None,
    ) -> None:
        """Block until /health answers and every adapter is listed; fail fast if the process dies.

        ``on_wait(seconds)`` is called about every second while it waits: a start takes
        from 25 s to minutes, and someone is watching. The wait is the transport's one
        readiness loop (``readiness.until`` over ``readiness.is_ready``).
        """
        if self._process is None:
            raise RuntimeError("start() the server first")
        budget = timeout if timeout is not None else self.settings.startup_timeout
        run_blocking(self._wait_ready(budget, sleep=sleep, clock=clock, on_wait=on_wait))
        logger.info("vLLM ready on %s serving %s", self.base_url, ", ".join(n for n, _ in self.adapters))

    async def _wait_ready(
        self,
        budget: float,
        *,
        sleep: Callable[[float], Awaitable[None]],
        clock: Callable[[], float],
        on_wait: Callable[[float], None] | None,
    ) -> None:
        client = InferenceClient(self.base_url, api_key=self.api_key, timeouts=TimeoutPolicy(probe=5.0))
        names = [name for name, _ in self.adapters]

        async def ready() -> bool:
            self.raise_if_exited()
            try:
                return await is_ready(client, *names)
            except APIError:  # still starting: a route not up yet, an answer not whole yet
                return False

        try:
            if not await until(ready, timeout=budget, on_wait=on_wait, clock=clock, sleep=sleep):
                raise ServerStartError(
                    f"vLLM did not become ready within {budget:.0f} s",
                    log_tail=self.log_tail(),
                    log_file=self.log_file,
                )
        finally:
            await client.aclose()

    def raise_if_exited(self) -> None:
        """Raise ``ServerStartError`` with the log's tail if the process has ended."""
        assert self._process is not None
        code = self._process.poll()
        if code is not None:
            raise ServerStartError(
                f"vLLM exited with code {code}", log_tail=self.log_tail(), returncode=code, log_file=self.log_file
            )

    def log_tail(self, lines: int = LOG_TAIL_LINES) -> str:
        try:
            text = self.log_file.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def stop(self) -> None:
        """SIGTERM the group, wait, SIGKILL what is left; idempotent."""
        with self._lock:
            self._closed = True
        if self._process is None or self._stopped:
            return
        self._stopped = True
        try:
            self._stop_group()
        finally:
            self._remove_gate()
        logger.info("vLLM on %s stopped", self.base_url)

    def kill_now(self) -> None:
        """SIGKILL the group and return at once (for finalizers, which must not block)."""
        self._closed = True
        if self._process is not None and not self._stopped:
            self._stopped = True
            _signal_group(self._process.pid, signal.SIGKILL)
            self._close_lifeline()
            self._remove_gate()

    def _stop_group(self) -> None:
        assert self._process is not None
        pgid = self._process.pid  # start_new_session: the leader's pid is the group id
        _signal_group(pgid, signal.SIGTERM)
        try:
            self._process.wait(self.settings.stop_timeout)
        except subprocess.TimeoutExpired:
            logger.warning("vLLM did not stop within %.0f s; killing it", self.settings.stop_timeout)
        except KeyboardInterrupt:  # a second Ctrl-C: stop now
            _signal_group(pgid, signal.SIGKILL)
            _wait_group_gone(pgid, timeout=10)
            raise
        _signal_group(pgid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self._process.wait(10)
        _wait_group_gone(pgid, timeout=10)
        self._close_lifeline()

    def _close_lifeline(self) -> None:
        if self._process is not None and self._process.stdin is not None:
            with contextlib.suppress(OSError):
                self._process.stdin.close()

    def _remove_gate(self) -> None:
        if self._gate_dir is not None:
            shutil.rmtree(self._gate_dir, ignore_errors=True)
            self._gate_dir = None

    def group_alive(self) -> bool:
        """Whether any process of the server's group remains."""
        return self._process is not None and _group_exists(self._process.pid)

    def __enter__(self) -> VllmServer:
        self.start()
        try:
            self.wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


def _signal_group(pgid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def _group_exists(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _wait_group_gone(pgid: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while _group_exists(pgid) and time.monotonic() < deadline:
        _signal_group(pgid, signal.SIGKILL)
        time.sleep(0.1)
