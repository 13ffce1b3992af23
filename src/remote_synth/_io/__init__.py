"""Files a job writes: the journal of accepted completions (and the resume/overwrite policy), the output,
and the files some jobs leave beside it."""

from .journal import Journal, JournalEntry
from .output import OutputFile, write_artifacts

__all__ = ["Journal", "JournalEntry", "OutputFile", "write_artifacts"]
