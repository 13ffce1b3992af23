"""A stand-in for vLLM's API server, for fault injection in process-supervision tests.

FAKE_MODE: ok (serve /health and /v1/models), exit (die at once), hang (never listen),
stubborn (serve, ignore SIGTERM, and leave a child that ignores it too).
"""

import json
import os
import signal
import subprocess
import sys
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from vllm_core import VllmCore, as_bytes  # run by path: its folder is on sys.path

args = sys.argv[1:]
port = int(args[args.index("--port") + 1])
adapter = json.loads(args[args.index("--lora-modules") + 1])["name"]
key = os.environ.get("VLLM_API_KEY")
mode = os.environ.get("FAKE_MODE", "ok")
print("fake vllm starting", mode, flush=True)

if mode == "exit":
    print("ValueError: model not found", flush=True)
    sys.exit(3)
if mode == "hang":
    time.sleep(3600)
if mode == "stubborn":
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    subprocess.Popen(
        [sys.executable, "-c", "import signal,time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(3600)"]
    )


core = VllmCore(adapters=[adapter], context=512)


class Handler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        if self.path != "/health" and self.headers.get("Authorization") != f"Bearer {key}":
            return self._send(401, {"error": "Unauthorized"})
        status, data, _ = as_bytes(core.route("GET", self.path) or (404, {}))
        return self._send(status, data)

    def _send(self, code: int, data: bytes | dict) -> None:
        data = data if isinstance(data, bytes) else json.dumps(data).encode()
        self.send_response(code)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *a: object) -> None:
        pass


ThreadingHTTPServer(("127.0.0.1", port), Handler).serve_forever()
