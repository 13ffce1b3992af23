"""compose.yaml: valid against the Compose Specification, and wired the way the README says."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml
from jsonschema import validators

ROOT = Path(__file__).parents[2]
SCHEMA_CANDIDATES = [
    ROOT.parent / "shared" / "compose-spec.schema.json",
    ROOT / "tests" / "data" / "compose-spec.schema.json",
]


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load((ROOT / "compose.yaml").read_text())


def variables(value: object) -> set[str]:
    return set(re.findall(r"\$\{([A-Z_][A-Z0-9_]*)", json.dumps(value)))


def test_valid_against_the_compose_spec(compose: dict) -> None:
    path = next((p for p in SCHEMA_CANDIDATES if p.is_file()), None)
    if path is None:
        pytest.skip("the Compose Specification schema is not next to this checkout")
    schema = json.loads(path.read_text())
    validator = validators.validator_for(schema)(schema)
    errors = sorted(validator.iter_errors(compose), key=lambda e: list(e.path))
    assert not errors, [f"{list(e.path)}: {e.message}" for e in errors]


def test_servers_have_long_healthchecks_and_read_only_runs_away_from_run(compose: dict) -> None:
    for name in ("vllm", "vllm-cpu"):
        service = compose["services"][name]
        check = service["healthcheck"]
        assert "/health" in " ".join(check["test"])
        assert check["start_period"].endswith("m") and int(check["start_period"][:-1]) >= 5
        assert any(v.endswith(":/nss-run:ro") for v in service["volumes"])
        assert not any(":/run" in v for v in service["volumes"])  # the NVIDIA toolkit mounts its sockets there
    assert "--enable-lora" in compose["services"]["vllm"]["command"]


def test_gpu_and_cpu_profiles(compose: dict) -> None:
    gpu, cpu = compose["services"]["vllm"], compose["services"]["vllm-cpu"]
    assert gpu["image"].startswith("vllm/vllm-openai:") and gpu["ipc"] == "host"
    assert gpu["deploy"]["resources"]["reservations"]["devices"][0]["capabilities"] == ["gpu"]
    assert cpu["profiles"] == ["cpu"] and cpu["build"]["target"] == "server-cpu"
    assert "vllm" in cpu["networks"]["default"]["aliases"] and cpu["shm_size"]
    assert cpu["command"][0] == "/nss-run"  # `remote-synth serve` sizes the server from the run


def test_builds_take_the_base_image_and_pip_settings_as_args(compose: dict) -> None:
    built = [s for s in compose["services"].values() if "build" in s]
    assert len(built) == 3
    for service in built:
        args = service["build"]["args"]
        assert {"BASE_IMAGE", "PIP_CERT", "PIP_FIND_LINKS", "TORCH_INDEX"} <= set(args)
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert "ARG BASE_IMAGE=python:3.11-slim" in dockerfile and "FROM ${BASE_IMAGE}" in dockerfile
    assert "libnuma1" in dockerfile


def test_compose_129_can_read_it(compose: dict) -> None:
    """Debian's docker-compose 1.29: no top-level name, no depends_on.required, none across profiles."""
    assert "name" not in compose
    for service in compose["services"].values():
        assert "depends_on" not in service or all(
            set(compose["services"][d].get("profiles", [])) >= set(service.get("profiles", []))
            for d in service["depends_on"]
        )


def test_generate_waits_for_the_server_shares_the_key_and_writes_as_the_user(compose: dict) -> None:
    generate = compose["services"]["generate"]
    assert set(generate["profiles"]) == {"gpu", "cpu", "router"}
    command = generate["command"]
    assert command[0] == "generate"
    assert command[command.index("--base-url") + 1] == "http://vllm:8000"
    assert variables(command[command.index("--wait-for-server") + 1]) == {"WAIT_FOR_SERVER"}
    key_env = command[command.index("--api-key-env") + 1]
    assert key_env in generate["environment"]
    client_key = variables(generate["environment"][key_env])
    assert variables(compose["services"]["vllm"]["environment"]["VLLM_API_KEY"]) == client_key
    assert variables(compose["services"]["vllm-cpu"]["environment"]["REMOTE_SYNTH_API_KEY"]) == client_key
    adapter = command[command.index("--adapter-name") + 1]
    assert any(arg.startswith(adapter + "=") for arg in compose["services"]["vllm"]["command"])
    cpu = compose["services"]["vllm-cpu"]["command"]
    assert cpu[cpu.index("--adapter-name") + 1] == adapter
    assert generate["build"]["target"] == "client"
    assert any(v.endswith(":/out") for v in generate["volumes"])
    assert variables(generate["user"]) == {"UID", "GID"}


def test_the_build_context_leaves_out_virtual_environments() -> None:
    ignored = (ROOT / ".dockerignore").read_text().splitlines()
    assert "*" in ignored and "!src/" in ignored  # everything out, then only what the images need


def test_router_profile_fronts_two_replicas_of_the_gpu_server_as_vllm(compose: dict) -> None:
    services = compose["services"]
    router, gpu = services["router"], services["vllm"]
    workers = router["command"][router["command"].index("--worker-urls") + 1 :][:2]
    assert workers == ["http://vllm-replica-1:8000", "http://vllm-replica-2:8000"]
    assert "vllm" in router["networks"]["default"]["aliases"] and router["build"]["target"] == "router"
    devices = []
    for name in ("vllm-replica-1", "vllm-replica-2"):
        replica = services[name]
        assert replica["profiles"] == ["router"] and router["depends_on"][name]["condition"] == "service_healthy"
        assert replica["command"] == gpu["command"] and replica["environment"] == gpu["environment"]
        devices += replica["deploy"]["resources"]["reservations"]["devices"][0]["device_ids"]
    assert sorted(devices) == ["0", "1"]  # one GPU each


def test_dockerfile_targets_exist() -> None:
    text = (ROOT / "Dockerfile").read_text()
    assert "AS client" in text and "AS server-cpu" in text and "AS router" in text
