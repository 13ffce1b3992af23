"""The README's Python code runs as it is (on the demo run, against the session's server)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from remote_synth._server import VllmServer

README = Path(__file__).parents[2] / "README.md"
BLOCKS = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.DOTALL)


def test_the_readme_has_python_to_run() -> None:
    assert BLOCKS


@pytest.mark.parametrize("code", BLOCKS, ids=[f"block-{i}" for i in range(len(BLOCKS))])
def test_readme_python_block_runs(code: str, server: VllmServer, api_key: str, tmp_path: Path) -> None:
    env = {**os.environ, "REMOTE_SYNTH_BASE_URL": server.base_url, "REMOTE_SYNTH_API_KEY": api_key}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=tmp_path,
                          timeout=900)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert "complete 200 rows" in done.stdout
