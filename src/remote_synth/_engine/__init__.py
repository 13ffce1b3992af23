"""The generation engine: a scheduler that keeps the server full, and NSS's accounting over its stream.

Layering: the engine knows jobs, windows and the transport's typed errors
(never HTTP status codes); ``RemoteBackend`` wires it to a run directory.
"""

from .accounting import CompletionLog, Progress, TabularJobs
from .kind import Jobs, RunKind
from .kinds import run_kind
from .loop_thread import LoopThread
from .recovery import Recovery
from .sampling import request_body, sampling_fields
from .scheduler import EngineStats, Job, JobSource, Scheduler
from .series_jobs import SeriesSpec, TimeseriesJobs
from .window import Gate, WindowPolicy, WindowSettings

__all__ = [
    "CompletionLog",
    "EngineStats",
    "Gate",
    "Job",
    "JobSource",
    "Jobs",
    "LoopThread",
    "Progress",
    "Recovery",
    "RunKind",
    "Scheduler",
    "SeriesSpec",
    "TabularJobs",
    "TimeseriesJobs",
    "WindowPolicy",
    "WindowSettings",
    "request_body",
    "run_kind",
    "sampling_fields",
]
