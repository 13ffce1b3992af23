"""compose.yaml run for real: the CPU profile on the demo run, end to end (`make test-compose`).

What it needs, it sets up, and what it made, it removes:
- Docker: Debian's docker.io and docker-compose (apt, as root) when absent; ``dockerd`` when none runs.
- A base image built from Debian packages (Docker Hub may be out of reach), with this machine's CA
  bundle, so that pip inside reaches PyPI through a TLS-inspecting proxy (``PIP_CERT``).
- This machine's local wheel folder (pip's ``find-links``, where PyTorch's CPU build may live),
  served to the builds on the Docker bridge only.
Then ``up --exit-code-from generate`` on the CPU profile, and the rows are checked: the count, every
row valid under the run's schema, owned by the invoking user and readable (not 0600).
"""

from __future__ import annotations

import contextlib
import functools
import http.server
import ipaddress
import json
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pytest
from checks import rows_valid

from remote_synth import RunDirectory

ROOT = Path(__file__).parents[2]
MIRROR = os.environ.get("DEBIAN_MIRROR", "http://deb.debian.org/debian")
NUM_RECORDS = 100


def sh(*args: str, timeout: float = 600, **kwargs: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, capture_output=True, text=True, timeout=timeout, check=False, **kwargs)  # type: ignore[call-overload]


def compose_command() -> list[str]:
    """``docker compose`` (v2) where the plugin is there, else Debian's ``docker-compose`` (1.29)."""
    if shutil.which("docker") and sh("docker", "compose", "version").returncode == 0:
        return ["docker", "compose"]
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    pytest.fail("no docker compose after installing docker-compose")


@pytest.fixture(scope="module")
def docker() -> Iterator[None]:
    missing = [tool for tool in ("dockerd", "debootstrap") if not shutil.which(tool)]
    if not shutil.which("docker-compose") and sh("docker", "compose", "version").returncode != 0:
        missing.append("docker-compose")
    if missing:
        if os.geteuid() != 0 or not shutil.which("apt-get"):
            pytest.skip(f"needs {', '.join(missing)}: installing them needs root and apt")
        packages = {"dockerd": "docker.io", "debootstrap": "debootstrap", "docker-compose": "docker-compose"}
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        done = sh("apt-get", "install", "-y", "-q", *(packages[t] for t in missing), env=env, timeout=900)
        if done.returncode != 0:
            sh("apt-get", "update", "-q", timeout=600)
            done = sh("apt-get", "install", "-y", "-q", *(packages[t] for t in missing), env=env, timeout=900)
        assert done.returncode == 0, done.stderr[-2000:]
    daemon = None
    if sh("docker", "info").returncode != 0:
        log = Path(tempfile.mkstemp(prefix="dockerd-", suffix=".log")[1])
        with log.open("w") as out:  # the daemon keeps its own copy of the descriptor
            daemon = subprocess.Popen(["dockerd"], stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + 90
        while sh("docker", "info").returncode != 0:
            assert daemon.poll() is None and time.monotonic() < deadline, log.read_text()[-2000:]
            time.sleep(1)
    try:
        yield
    finally:
        if daemon is not None:  # we started it: stop it, and everything it runs
            daemon.terminate()
            try:
                daemon.wait(60)
            except subprocess.TimeoutExpired:
                daemon.kill()


def host_pip(key: str) -> str | None:
    """A value of this machine's pip configuration (``global.cert``, ``global.find-links``), if set."""
    done = sh(sys.executable, "-m", "pip", "config", "get", key)
    return done.stdout.strip() or None if done.returncode == 0 else None


@pytest.fixture(scope="module")
def base_image(docker: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Debian bookworm minbase with python3 and venv (3.11, as python:3.11-slim), plus our CA bundle."""
    tag = f"remote-synth-test-base:{secrets.token_hex(4)}"
    root = tmp_path_factory.mktemp("rootfs") / "bookworm"
    made = sh("debootstrap", "--variant=minbase", "--include=python3,python3-venv,ca-certificates",
              "bookworm", str(root), MIRROR, timeout=1200)  # fmt: skip
    assert made.returncode == 0, made.stdout[-2000:] + made.stderr[-2000:]
    cert = host_pip("global.cert") or "/etc/ssl/certs/ca-certificates.crt"
    shutil.copyfile(cert, root / "usr/local/share/host-ca-bundle.pem")
    with subprocess.Popen(["tar", "-C", str(root), "-c", "."], stdout=subprocess.PIPE) as tar:
        imported = subprocess.run(["docker", "import", "-", tag], stdin=tar.stdout, capture_output=True, text=True)
    shutil.rmtree(root, ignore_errors=True)
    assert imported.returncode == 0, imported.stderr
    try:
        yield tag
    finally:
        sh("docker", "rmi", "-f", tag)


@pytest.fixture(scope="module")
def wheels(docker: None) -> Iterator[tuple[str, str]]:
    """This machine's local wheel folder over HTTP on the Docker bridge: (PIP_FIND_LINKS, PIP_TRUSTED_HOST)."""
    folder = host_pip("global.find-links")
    if folder is None or not Path(folder).is_dir():
        yield "", ""
        return
    host = bridge_gateway()
    handler = functools.partial(QuietHandler, directory=folder)
    server = http.server.ThreadingHTTPServer((host, 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://{host}:{server.server_address[1]}/", host
    finally:
        server.shutdown()
        server.server_close()


def bridge_gateway() -> str:
    """The host's address on Docker's default bridge (its gateway; docker 20.10 may leave it unlisted)."""
    done = sh("docker", "network", "inspect", "bridge", "--format", "{{json .IPAM.Config}}")
    assert done.returncode == 0, done.stderr
    config = json.loads(done.stdout)[0]
    return str(config.get("Gateway") or next(ipaddress.ip_network(config["Subnet"]).hosts()))


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args: object) -> None:
        pass


def test_cpu_profile_writes_valid_rows_owned_by_the_invoking_user(
    base_image: str, wheels: tuple[str, str], tmp_path: Path
) -> None:
    from remote_synth.demo.build import ensure_demo_run

    run = RunDirectory.open(ensure_demo_run())
    out = tmp_path / "out"
    out.mkdir()
    uid, gid = int(os.environ.get("SUDO_UID", os.getuid())), int(os.environ.get("SUDO_GID", os.getgid()))
    os.chown(out, uid, gid)
    find_links, trusted = wheels
    project = f"rs-compose-test-{secrets.token_hex(3)}"
    env = {
        **os.environ,
        "COMPOSE_PROJECT_NAME": project,
        "RUN_DIR": str(run.path),
        "MODELS_DIR": str(run.path.parent),  # the demo's base model is a folder beside the run
        "BASE_MODEL": "/models/base",
        "OUT_DIR": str(out),
        "REMOTE_SYNTH_API_KEY": secrets.token_hex(16),
        "UID": str(uid),
        "GID": str(gid),
        "NUM_RECORDS": str(NUM_RECORDS),
        "BASE_IMAGE": base_image,
        "PIP_CERT": "/usr/local/share/host-ca-bundle.pem",
        "PIP_FIND_LINKS": find_links,
        "PIP_TRUSTED_HOST": trusted,
        "TORCH_INDEX": "",  # PyTorch's own index may be out of reach: PyPI and the wheel folder
    }
    compose = [*compose_command(), "-f", str(ROOT / "compose.yaml"), "--profile", "cpu"]
    try:
        built = sh(*compose, "build", env=env, cwd=ROOT, timeout=2400)
        assert built.returncode == 0, built.stdout[-3000:] + built.stderr[-3000:]
        ran = sh(*compose, "up", "--exit-code-from", "generate", env=env, cwd=ROOT, timeout=1800)
        assert ran.returncode == 0, ran.stdout[-4000:] + ran.stderr[-2000:]
    finally:
        down = sh(*compose, "down", "--rmi", "local", "--volumes", "--remove-orphans", env=env, cwd=ROOT)
        with contextlib.suppress(Exception):
            print(down.stderr[-1000:])
    rows = out / "synthetic_data.csv"
    df = pd.read_csv(rows)
    assert len(df) == NUM_RECORDS and rows_valid(df, run) == []
    stat = rows.stat()
    assert (stat.st_uid, stat.st_gid) == (uid, gid)
    assert stat.st_mode & 0o777 == 0o644
    left = sh("docker", "ps", "-a", "--filter", f"label=com.docker.compose.project={project}", "-q")
    assert left.stdout.strip() == ""  # nothing of the stack is left
