"""Files a job writes: the journal of accepted completions (and the resume/overwrite policy), and the output."""

from .journal import Journal, JournalEntry
from .output import OutputFile

__all__ = ["Journal", "JournalEntry", "OutputFile"]
