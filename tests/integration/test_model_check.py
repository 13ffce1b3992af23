"""No silent substitution, against the real vLLM server: a gateway that answers one job's requests
from another model (here the base model, as a replica without the adapter would) is caught."""

from __future__ import annotations

import pytest
from fakes.fault_proxy import Fault, FaultProxy

from remote_synth import ModelMismatchError, RemoteBackend, RemoteSettings, RunDirectory
from remote_synth._server import VllmServer

pytestmark = pytest.mark.integration


def test_answers_from_another_model_are_refused_and_only_the_adapters_records_are_kept(
    server: VllmServer, api_key: str, demo_run: RunDirectory
) -> None:
    base = server.settings.model
    completions = [0]

    def plan(n: int, method: str, path: str) -> Fault | None:
        if path != "/v1/completions":
            return None
        completions[0] += 1
        return ("swap", base) if completions[0] > 3 else None  # the set-up checks and a first request pass

    with FaultProxy(server.base_url, plan) as proxy:
        settings = RemoteSettings(base_url=proxy.url, api_key=api_key, prompts_per_request=5)
        with RemoteBackend(demo_run, {"num_records": 2000}, settings=settings) as backend:
            with pytest.raises(ModelMismatchError) as info:
                backend.generate()
            kept = backend.gen_results
    assert info.value.answered == base and info.value.asked == backend.adapter_name
    assert info.value.attempts == 2  # retried once, in case one replica of several was wrong
    assert proxy.faults["swap"] >= 2
    assert kept is not None and kept.num_valid_records < 2000  # what the adapter answered first, no more
