"""The journal: what it keeps, how a resume replays it exactly, and what it refuses."""

from __future__ import annotations

import errno
import os
import random
from pathlib import Path

import pytest
from fakes.sim_vllm import SCHEMA, records_text

from remote_synth import ConfigError, JournalMismatchError, StorageError
from remote_synth._engine import Job, TabularJobs
from remote_synth._io import Journal
from remote_synth._transport.types import Completion
from remote_synth.nss import GenerationBatches, GenerationStatus
from remote_synth.nss.processors import TabularDataProcessor

HEADER = {"adapter": "nss-abc", "num_records": 300, "temperature": 0.9, "validation.group_by_x": False}


def stream(seed: int, n: int) -> list[list[str]]:
    """Requests' completions as a server would return them: 1–6 records each, some invalid."""
    rng = random.Random(seed)
    return [[records_text(rng, mean_records=3, invalid_share=0.15) for _ in range(rng.randint(1, 5))] for _ in range(n)]


def jobs(target: int, log: Journal | None = None) -> TabularJobs:
    batches = GenerationBatches(target_num_records=target, invalid_fraction_threshold=0.8, patience=3)
    return TabularJobs(batches, TabularDataProcessor(SCHEMA), "P", {}, target, log=log)


def feed(source: TabularJobs, requests: list[list[str]]) -> None:
    for texts in requests:
        if source.done:
            return
        source.complete(Job(prompts=["P"] * len(texts), params={}), [Completion(t) for t in texts])


def totals(source: TabularJobs) -> tuple[int, int, int, int, list[float], list[dict]]:
    source.flush()
    b = source.batches
    return (b.num_batches, b.num_valid_records, b.num_invalid_records, b.num_prompts,
            b.batch_valid_record_fractions, b.to_dataframe(list(SCHEMA["properties"])).to_dict("records"))  # fmt: skip


@pytest.mark.parametrize("cut", [0, 1, 7, 23, 40, 400])
def test_a_resumed_job_equals_the_uninterrupted_one(tmp_path: Path, cut: int) -> None:
    """Kill after ``cut`` requests, resume from the journal, feed the rest: same batches, counts and rows."""
    requests = stream(seed=cut, n=200)
    whole = jobs(300)
    feed(whole, requests)

    first = Journal(tmp_path / "out.csv.journal", HEADER)
    assert first.open(resume=False) == []
    killed = jobs(300, log=first)
    feed(killed, requests[:cut])  # then the process dies: no flush, no close
    os.close(first._fd)  # noqa: SLF001 - what the kernel does for a killed process

    again = Journal(tmp_path / "out.csv.journal", HEADER)
    entries = again.open(resume=True)
    assert [e.texts for e in entries] == requests[: len(entries)]
    assert len(entries) == cut or (killed.done and len(entries) < cut)  # a done job takes no more
    resumed = jobs(300, log=again)
    resumed.replay(entries)
    feed(resumed, requests[len(entries) :])
    assert totals(resumed) == totals(whole)
    assert totals(whole)[1] >= 300


def test_a_line_cut_short_is_dropped_and_overwritten(tmp_path: Path) -> None:
    journal = Journal(tmp_path / "j", HEADER)
    journal.open(resume=False)
    journal.append(["a", "b"])
    journal.close()
    with (tmp_path / "j").open("ab") as fh:
        fh.write(b'["c", "d')  # killed mid-write
    again = Journal(tmp_path / "j", HEADER)
    assert [e.texts for e in again.open(resume=True)] == [["a", "b"]]
    again.append(["e"])
    again.close()
    assert [e.texts for e in Journal(tmp_path / "j", HEADER).open(resume=True)] == [["a", "b"], ["e"]]


def test_resuming_with_other_settings_names_the_field(tmp_path: Path) -> None:
    Journal(tmp_path / "j", HEADER).open(resume=False)
    with pytest.raises(JournalMismatchError, match=r"temperature differs from the journal's \(0.7 now, 0.9 in"):
        Journal(tmp_path / "j", {**HEADER, "temperature": 0.7}).open(resume=True)
    with pytest.raises(JournalMismatchError, match="num_records"):
        Journal(tmp_path / "j", {**HEADER, "num_records": 301}).open(resume=True)


@pytest.mark.parametrize("content", [b"", b"hello\n", b'{"format": "remote-synth journal", "version": 1']
                         )  # fmt: skip
def test_a_file_that_is_not_our_journal_is_refused(tmp_path: Path, content: bytes) -> None:
    (tmp_path / "j").write_bytes(content)
    with pytest.raises(ConfigError, match="journal"):
        Journal(tmp_path / "j", HEADER).open(resume=True)


def test_a_damaged_middle_line_is_refused(tmp_path: Path) -> None:
    journal = Journal(tmp_path / "j", HEADER)
    journal.open(resume=False)
    journal.append(["a"])
    journal.close()
    with (tmp_path / "j").open("ab") as fh:
        fh.write(b"garbage\n" + b'["b"]\n')
    with pytest.raises(ConfigError, match="line 3 is not a journal entry"):
        Journal(tmp_path / "j", HEADER).open(resume=True)


def test_a_full_disk_leaves_no_half_line_and_keeps_what_was_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    journal = Journal(tmp_path / "j", HEADER)
    journal.open(resume=False)
    journal.append(["kept"])
    real_write = os.write

    def full(fd: int, data: bytes) -> int:
        if fd == journal._fd:  # noqa: SLF001
            real_write(fd, bytes(data)[:5])  # part of the line gets out, then the disk is full
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_write(fd, data)

    monkeypatch.setattr(os, "write", full)
    with pytest.raises(StorageError, match="No space left on device") as info:
        journal.append(["lost: never used"])
    assert info.value.errno == errno.ENOSPC
    monkeypatch.undo()
    journal.close()
    assert [e.texts for e in Journal(tmp_path / "j", HEADER).open(resume=True)] == [["kept"]]


def test_a_failed_journal_write_means_the_completions_are_not_used(tmp_path: Path) -> None:
    class FullLog:
        def append(self, *logged: object) -> None:
            raise StorageError("cannot write the journal: No space left on device")

        def commit(self) -> None: ...

    source = jobs(10, log=FullLog())  # type: ignore[arg-type]
    with pytest.raises(StorageError):
        feed(source, [[records_text(random.Random(0))]])
    assert source.valid == 0 and source.used == 0


def test_a_journal_respects_the_umask(tmp_path: Path) -> None:
    old = os.umask(0o027)
    try:
        Journal(tmp_path / "j", HEADER).open(resume=False)
    finally:
        os.umask(old)
    assert (tmp_path / "j").stat().st_mode & 0o777 == 0o640


def test_finish_reasons_and_tokens_come_back_so_a_resumed_first_batch_is_judged_the_same(tmp_path: Path) -> None:
    """NSS 0.1.16 lets a first batch cut at max_tokens go on: a resumed job must see the same reasons."""
    cut = [Completion("{", "length", 64)] * 10
    journal = Journal(tmp_path / "j", HEADER)
    journal.open(resume=False)
    live = jobs(300, log=journal)
    live.complete(Job(prompts=["P"] * 10, params={}), cut)
    assert live.batches.status is GenerationStatus.IN_PROGRESS and live.batches.num_batches == 1
    journal.close()
    entries = Journal(tmp_path / "j", HEADER).open(resume=True)
    assert entries[0].finish_reasons == ["length"] * 10 and entries[0].tokens == [64] * 10
    resumed = jobs(300)
    resumed.replay(entries)
    assert resumed.batches.status is GenerationStatus.IN_PROGRESS and resumed.batches.num_completion_tokens == 640
