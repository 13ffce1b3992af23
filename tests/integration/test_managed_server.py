"""A server the backend launches is the backend's to stop: nothing of it may remain."""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd
import pytest

from remote_synth import RemoteBackend, RemoteSettings, RunDirectory
from remote_synth._server.vllm import port_is_free


def _descendants_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


def test_managed_server_is_gone_after_teardown_even_when_generate_fails(demo_run: RunDirectory, tmp_path: Path) -> None:
    backend = RemoteBackend(demo_run, {"num_records": 20}, settings=RemoteSettings(server_log=tmp_path / "vllm.log"))

    def broken_action(batch_df: pd.DataFrame, accepted: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
        raise RuntimeError("a data action failed")

    try:
        backend.initialize()
        assert backend.owns_server
        server = backend.server
        assert server is not None and server.group_alive()
        pgid, port = server.pid, server.port
        with pytest.raises(RuntimeError, match="a data action failed"):
            backend.generate(data_actions_fn=broken_action)
    finally:
        backend.teardown()
    assert pgid is not None
    assert not _descendants_alive(pgid)
    assert port_is_free("127.0.0.1", port)
    backend.teardown()  # a no-op the second time
    assert (tmp_path / "vllm.log").stat().st_size > 0
