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


def test_servers_have_long_healthchecks_and_read_only_runs(compose: dict) -> None:
    for name in ("vllm", "vllm-cpu"):
        service = compose["services"][name]
        check = service["healthcheck"]
        assert "/health" in " ".join(check["test"])
        assert check["start_period"].endswith("m") and int(check["start_period"][:-1]) >= 5
        assert any(v.endswith(":/run:ro") for v in service["volumes"])
        assert "--enable-lora" in service["command"]


def test_gpu_and_cpu_profiles(compose: dict) -> None:
    gpu, cpu = compose["services"]["vllm"], compose["services"]["vllm-cpu"]
    assert gpu["image"].startswith("vllm/vllm-openai:")
    assert gpu["deploy"]["resources"]["reservations"]["devices"][0]["capabilities"] == ["gpu"]
    assert cpu["profiles"] == ["cpu"] and cpu["build"]["target"] == "server-cpu"
    assert "vllm" in cpu["networks"]["default"]["aliases"]


def test_generate_waits_for_a_healthy_server_and_shares_the_key(compose: dict) -> None:
    generate = compose["services"]["generate"]
    for server in ("vllm", "vllm-cpu"):
        assert generate["depends_on"][server]["condition"] == "service_healthy"
    command = generate["command"]
    assert command[0] == "generate"
    assert command[command.index("--base-url") + 1] == "http://vllm:8000"
    key_env = command[command.index("--api-key-env") + 1]
    assert key_env in generate["environment"]
    client_key = variables(generate["environment"][key_env])
    for server in ("vllm", "vllm-cpu"):
        assert variables(compose["services"][server]["environment"]["VLLM_API_KEY"]) == client_key
    adapter = command[command.index("--adapter-name") + 1]
    for server in ("vllm", "vllm-cpu"):
        assert any(arg.startswith(adapter + "=") for arg in compose["services"][server]["command"])
    assert generate["build"]["target"] == "client"
    assert any(v.endswith(":/out") for v in generate["volumes"])


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
    assert compose["services"]["generate"]["depends_on"]["router"]["condition"] == "service_healthy"


def test_dockerfile_targets_exist() -> None:
    text = (ROOT / "Dockerfile").read_text()
    assert "AS client" in text and "AS server-cpu" in text and "AS router" in text
