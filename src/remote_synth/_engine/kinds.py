"""``run_kind``: the one place that tells a time-series run from a tabular one."""

from __future__ import annotations

from ..nss.params import GenerateParameters
from ..nss.rundir import ModelMetadata, RunDirectory
from .kind import RunKind
from .series import SeriesKind
from .tabular import TabularKind

__all__ = ["run_kind"]


def run_kind(
    run: RunDirectory, metadata: ModelMetadata, config: GenerateParameters, *, detailed_errors: bool = False
) -> RunKind:
    if run.is_timeseries:
        return SeriesKind.open(run, metadata, config, detailed_errors)
    return TabularKind.open(run, metadata, config, detailed_errors)
