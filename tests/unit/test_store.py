"""The adapter store: publishing is atomic, idempotent and refuses a different adapter under a taken name;
a server launched on a store gets vLLM's filesystem resolver on it."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest

from remote_synth import RemoteSettings
from remote_synth._exceptions import ConfigError
from remote_synth._server.launch import adapter_name_for, launch_settings
from remote_synth._server.store import MANIFEST, adapter_digest, publish_adapter, store_ranks
from remote_synth._server.vllm import VllmServer
from remote_synth.demo.layout import write_run_dir
from remote_synth.nss.rundir import RunDirectory

SCHEMA = {"type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"]}


def run_dir(path: Path, weights: bytes = b"weights", r: int = 8) -> RunDirectory:
    return RunDirectory.open(write_run_dir(path, SCHEMA, base_model="/models/base", adapter_weights=weights, lora_r=r))


@pytest.fixture
def store(tmp_path: Path) -> Path:
    (tmp_path / "store").mkdir()
    return tmp_path / "store"


def test_a_published_adapter_is_its_run_s_files_under_its_derived_name_for_the_server_s_base(
    tmp_path: Path, store: Path
) -> None:
    run = run_dir(tmp_path / "run")
    published = publish_adapter(run, store, base_model="/srv/models/base")
    assert published.created and published.name == adapter_name_for(run) and published.path == store / published.name
    copied = {p.relative_to(published.path) for p in published.path.rglob("*") if p.is_file()}
    original = {p.relative_to(run.adapter_dir) for p in run.adapter_dir.rglob("*") if p.is_file()}
    assert copied == original | {Path(MANIFEST)}
    config = json.loads((published.path / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == "/srv/models/base"  # what vLLM's resolver compares with --model
    assert config["r"] == run.adapter_config.r
    assert [p.name for p in store.iterdir()] == [published.name]  # no staging folder left


def test_the_default_base_is_the_one_the_run_was_trained_on(tmp_path: Path, store: Path) -> None:
    run = run_dir(tmp_path / "run")
    published = publish_adapter(run, store)
    config = json.loads((published.path / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == run.metadata.model_name_or_path == launch_settings(run).model


def test_publishing_again_is_a_no_op_and_another_adapter_under_the_name_is_refused(tmp_path: Path, store: Path) -> None:
    first = publish_adapter(run_dir(tmp_path / "a"), store, name="tenant")
    again = publish_adapter(run_dir(tmp_path / "a-copy"), store, name="tenant")  # same files elsewhere
    assert first.created and not again.created
    with pytest.raises(ConfigError, match="another adapter is published under the name 'tenant'"):
        publish_adapter(run_dir(tmp_path / "b", weights=b"other weights"), store, name="tenant")
    with pytest.raises(ConfigError, match="published for base model '/models/base', not '/elsewhere'"):
        publish_adapter(run_dir(tmp_path / "a"), store, name="tenant", base_model="/elsewhere")
    assert adapter_digest(first.path) != adapter_digest(run_dir(tmp_path / "a").adapter_dir)  # config rewritten


def test_a_folder_not_published_by_us_is_never_overwritten(tmp_path: Path, store: Path) -> None:
    (store / "tenant").mkdir()
    (store / "tenant" / "adapter_config.json").write_text("{}")
    with pytest.raises(ConfigError, match="was not published by remote-synth"):
        publish_adapter(run_dir(tmp_path / "run"), store, name="tenant")
    assert (store / "tenant" / "adapter_config.json").read_text() == "{}"


@pytest.mark.parametrize("name", ["../up", ".hidden", "a/b", "", "x" * 129])
def test_a_name_that_is_not_one_plain_folder_is_refused(tmp_path: Path, store: Path, name: str) -> None:
    with pytest.raises(ConfigError, match="cannot name a folder"):
        publish_adapter(run_dir(tmp_path / "run"), store, name=name)


def test_a_store_that_is_not_a_directory_is_one_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not a directory"):
        publish_adapter(run_dir(tmp_path / "run"), tmp_path / "missing")


def test_publishers_racing_for_one_name_leave_one_copy_and_both_succeed(tmp_path: Path, store: Path) -> None:
    run = run_dir(tmp_path / "run", weights=b"w" * 2_000_000)
    results: list[bool] = []
    threads = [threading.Thread(target=lambda: results.append(publish_adapter(run, store).created)) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(results) == [False, False, False, True]
    assert [p.name for p in store.iterdir()] == [adapter_name_for(run)]


def test_a_server_on_a_store_resolves_from_it_and_holds_its_largest_rank(tmp_path: Path, store: Path) -> None:
    publish_adapter(run_dir(tmp_path / "big", weights=b"big", r=64), store)
    run = run_dir(tmp_path / "run", r=8)
    settings = launch_settings(run, RemoteSettings(adapter_store=store))
    assert settings.max_lora_rank == 64 and store_ranks(store) == [64]
    server = VllmServer(settings)
    env = server._env()
    assert env["VLLM_LORA_RESOLVER_CACHE_DIR"] == str(store.resolve())
    assert env["VLLM_ALLOW_RUNTIME_LORA_UPDATING"] == "1"
    assert server.command[server.command.index("--max-lora-rank") + 1] == "64"


def test_a_plugin_list_of_the_caller_s_gets_the_resolver_added(
    tmp_path: Path, store: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = launch_settings(run_dir(tmp_path / "run"), RemoteSettings(adapter_store=store))
    monkeypatch.delenv("VLLM_PLUGINS", raising=False)
    assert "VLLM_PLUGINS" not in VllmServer(settings)._env()  # unset: vLLM loads every plugin
    monkeypatch.setenv("VLLM_PLUGINS", "mine")
    assert VllmServer(settings)._env()["VLLM_PLUGINS"] == "mine,lora_filesystem_resolver"
    with pytest.raises(ConfigError, match="not a directory"):
        launch_settings(run_dir(tmp_path / "run"), RemoteSettings(adapter_store=tmp_path / "nowhere"))
