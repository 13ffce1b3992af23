"""NSS's own pipeline with its generation step on a remote server.

```python
from nemo_safe_synthesizer.sdk.library_builder import SafeSynthesizer
from remote_synth import RemoteSettings, generate_remotely

nss = SafeSynthesizer(config).with_data_source(df).resume_from("runs/…").load_from_save_path()
generate_remotely(nss, RemoteSettings(base_url="http://gpu-host:8000")).evaluate().save_results()
```
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Protocol, TypeVar

from ._backend import RemoteBackend
from ._exceptions import ConfigError
from ._io import write_artifacts
from ._settings import RemoteSettings

__all__ = ["generate_remotely"]


class _Synthesizer(Protocol):
    """What ``generate_remotely`` uses of NSS's ``SafeSynthesizer`` (its ``generate()`` uses the same)."""

    _nss_config: object
    _llm_metadata: object
    _workdir: object
    _total_start: float | None
    _generated: bool
    generator: object


S = TypeVar("S", bound=_Synthesizer)


def generate_remotely(synthesizer: S, settings: RemoteSettings | None = None) -> S:
    """``SafeSynthesizer.generate()`` with ``RemoteBackend`` in place of its in-process ``VllmBackend``.

    Its saved configuration, model metadata and workdir build the backend; the results it leaves
    (``synthesizer.generator.gen_results``) are NSS's own, so ``evaluate()`` and ``save_results()``
    go on as after NSS's ``generate()``. Without ``settings.base_url`` a local vLLM is launched and
    stopped, as ``remote-synth generate`` does. Time-series runs go the same way; a flexible one's
    audit files go to the workdir's ``generate`` folder, as NSS 0.1.16 writes them.
    """
    config, metadata, workdir = synthesizer._nss_config, synthesizer._llm_metadata, synthesizer._workdir
    if config is None or metadata is None or workdir is None:
        raise ConfigError("the synthesizer has no trained model yet: call load_from_save_path() (or train()) first")
    trainer = getattr(synthesizer, "trainer", None)
    if trainer is not None:  # as NSS's generate(): a model trained in this session frees its memory first
        trainer.teardown()
    if synthesizer._total_start is None:
        synthesizer._total_start = time.monotonic()
    backend = RemoteBackend(workdir, config, metadata, settings=settings)
    synthesizer.generator = backend
    try:
        backend.initialize()
        backend.generate()
    finally:
        backend.teardown()
    generated = getattr(getattr(workdir, "generate", None), "path", None)
    if backend.artifacts and isinstance(generated, Path):  # where NSS's own flexible run writes them
        write_artifacts(generated, backend.artifacts)
    synthesizer._generated = True
    return synthesizer
