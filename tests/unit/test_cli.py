"""CLI wiring and exit codes, without a server (the end-to-end runs are integration tests)."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import signal
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import click
import pandas as pd
import pytest
from fakes.scripted_vllm import ScriptedVllm

from remote_synth._cli import main
from remote_synth._cli.exits import EXIT_BAD_INPUT
from remote_synth._server.vllm import free_port
from remote_synth.demo.layout import write_run_dir

SCHEMA = {"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"]}


@contextlib.contextmanager
def scripted(monkeypatch: pytest.MonkeyPatch, adapter: str, text: Callable[[], str],
             **kwargs: Any) -> Iterator[ScriptedVllm]:  # fmt: skip
    """A scripted vLLM in process: the CLI's backends talk to it until the block ends."""
    with monkeypatch.context() as patch:
        yield ScriptedVllm(adapter, text, **kwargs).serve(patch)


def run_main(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str]:
    monkeypatch.setattr(sys, "argv", ["remote-synth", *args])
    with pytest.raises(SystemExit) as info:
        main()
    return int(info.value.code or 0), capsys.readouterr().err


@pytest.fixture
def run(tmp_path: Path) -> Path:
    return write_run_dir(tmp_path / "run", SCHEMA, base_model="m")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["generate", "/no/such/run"], "run directory does not exist"),
        (["generate", "{run}", "--output", "{tmp}/x.txt"], "unknown format"),
        (["generate", "{run}", "--num-records", "0", "--base-url", "http://127.0.0.1:1"], "num_records"),
        (["generate", "{run}", "--temperature", "-1", "--base-url", "http://127.0.0.1:1"], "temperature"),
        (
            ["generate", "{run}", "--base-url", "http://127.0.0.1:{port}", "--output", "{tmp}/x.csv"],
            "cannot reach a server",
        ),
        (["generate", "{run}", "--base-url", "nonsense", "--output", "{tmp}/x.csv"], "base URL"),
        (["generate", "{run}", "--output", "/proc/forbidden/x.csv"], "cannot write there"),
        (["generate", "{run}", "--api-key-env", "NOT_SET_ANYWHERE_42"], "NOT_SET_ANYWHERE_42"),
        (["generate", "{run}", "--num-records", "abc"], "abc"),
        (["generate", "{run}", "--window", "0", "--base-url", "http://127.0.0.1:1"], "window"),
        (["generate", "{run}", "--window", "9000", "--base-url", "http://127.0.0.1:1"], "max_window"),
        (["generate", "{run}", "--ca-bundle", "{tmp}/no-such.pem", "--base-url", "https://x:1"], "ca_bundle"),
        (["generate", "{run}", "--wait-for-server", "-1", "--base-url", "http://127.0.0.1:1"], "wait_for_server"),
        (["generate", "{run}", "--base-url", "http://127.0.0.1:99999", "--output", "{tmp}/x.csv"], "out of range"),
        (["generate", "{run}", "--base-url", ",,,", "--output", "{tmp}/x.csv"], "base URL"),
        (["generate", "{run}", "--header", "X-Name: ünïcödé", "--base-url", "http://127.0.0.1:1"], "extra_headers"),
        (["generate", "{run}", "--header", "Bad Name: v", "--base-url", "http://127.0.0.1:1"], "extra_headers"),
        (["generate", "{run}", "--api-key-env", "sk-live-0123.4567"], "not a variable name"),
        (["generate", "{run}", "--temperature", "2.5", "--base-url", "http://127.0.0.1:1"], "temperature"),
        (
            [
                "generate",
                "{run}",
                "--ca-bundle",
                "{run}/train/safe-synthesizer-config.json",
                "--base-url",
                "https://x:1",
            ],
            "not a PEM file of CA certificates",
        ),  # fmt: skip
        (["generate", "{run}", "--max-tokens-multiplier", "0", "--base-url", "http://127.0.0.1:1"], "multiplier"),
        (
            [
                "generate",
                "{run}",
                "--structured-generation-schema-method",
                "structural_tag",
                "--structured-generation-backend",
                "outlines",
                "--structured-generation-enabled",
                "--base-url",
                "http://127.0.0.1:1",
            ],
            "structural_tag",
        ),  # fmt: skip
        (
            [
                "generate",
                "{run}",
                "--structured-generation-max-records-per-sequence",
                "0",
                "--base-url",
                "http://127.0.0.1:1",
            ],
            "max_records_per_sequence",
        ),  # fmt: skip
        (
            ["generate", "{run}", "--output", "{run}/train/safe-synthesizer-config.json/x.csv"],
            "safe-synthesizer-config.json is a file, not a directory",
        ),  # fmt: skip
        (["generate", "{run}", "--output", "{tmp}/" + "n" * 240 + ".csv"], "file name is too long"),
        (["generate", "{run}", "--output", "{tmp}/" + "n" * 300 + ".csv"], "file name is too long"),
        (["generate", "{run}", "--output", "{tmp}/" + "d" * 300 + "/x.csv"], "cannot use that path"),
    ],
)
def test_bad_input_is_one_line_exit_2(
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    run: Path,
    tmp_path: Path,
    args: list[str],
    message: str,
) -> None:
    monkeypatch.delenv("NOT_SET_ANYWHERE_42", raising=False)
    filled = [a.format(run=run, tmp=tmp_path, port=free_port()) for a in args]
    code, err = run_main(monkeypatch, capsys, *filled)
    assert code == EXIT_BAD_INPUT
    assert message in err
    assert "Traceback" not in err
    assert len([line for line in err.splitlines() if line.strip()]) == 1 or "Usage:" in err
    assert not (tmp_path / "x.csv").exists()


def test_corrupt_run_dir_names_the_file(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], run: Path
) -> None:
    (run / "train" / "adapter" / "dataset_schema.json").write_text("{oops")
    code, err = run_main(monkeypatch, capsys, "generate", str(run))
    assert code == EXIT_BAD_INPUT and "dataset_schema.json: corrupt JSON" in err


def test_help_lists_nss_names(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(sys, "argv", ["remote-synth", "generate", "--help"])
    with pytest.raises(SystemExit) as info:
        main()
    out = capsys.readouterr().out
    assert info.value.code == 0
    for flag in ("--num-records", "--temperature", "--use-structured-generation", "--base-url", "--api-key-env"):
        assert flag in out


def test_version(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    from importlib.metadata import version

    monkeypatch.setattr(sys, "argv", ["remote-synth", "--version"])
    with pytest.raises(SystemExit) as info:
        main()
    assert info.value.code == 0 and capsys.readouterr().out.strip() == f"remote-synth {version('remote-synth')}"


def _commands(group: click.Group) -> list[click.Command]:
    found: list[click.Command] = []
    for command in group.commands.values():
        found += _commands(command) if isinstance(command, click.Group) else [command]
    return found


def test_every_flag_has_help_and_generation_flags_show_nss_defaults_and_choices() -> None:
    from typing import get_args

    from remote_synth._cli import cli
    from remote_synth.nss.params import StructuredBackend

    for command in _commands(cli):
        for param in command.params:
            assert not isinstance(param, click.Option) or param.help, f"{command.name} {param.opts} has no help"
    generate = cli.commands["generate"]
    options = {p.name: p for p in generate.params if isinstance(p, click.Option)}
    assert "else 0.9" in (options["temperature"].help or "") and "else 1000" in (options["num_records"].help or "")
    backend = options["structured_generation__backend"].type
    assert isinstance(backend, click.Choice) and tuple(backend.choices) == get_args(StructuredBackend)


def test_a_job_waits_for_a_server_still_loading_and_says_so(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], run: Path, tmp_path: Path
) -> None:
    out = tmp_path / "x.csv"
    with scripted(monkeypatch, "a", unique_record, loading_for=2) as server:
        args = generate_args(run, server.url, out, "--num-records", "5")
        code, err = run_main(monkeypatch, capsys, *args)
        assert code != 0 and server.completion_requests == 0  # not waiting: a loading server is an error
        server.health_requests = 0
        code, err = run_main(monkeypatch, capsys, *args, "--wait-for-server", "30")
    assert code == 0, err
    assert f"waiting for the server at {server.url}" in err and len(pd.read_csv(out)) == 5


def test_too_many_invalid_records_advise_generation_remedies_first(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], run: Path, tmp_path: Path
) -> None:
    with scripted(monkeypatch, "a", lambda: '{"b": 1}\n') as server:  # every record invalid
        code, err = run_main(monkeypatch, capsys, *generate_args(run, server.url, tmp_path / "x.csv"))
    assert code == 1 and "Traceback" not in err
    advice = err[err.index("Lower the temperature") :]
    assert advice.index("structured generation") < advice.index("num_input_records_to_sample")
    assert "--temperature 0.45 or --structured-generation-enabled" in err


def test_bad_connection_settings_name_the_field(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], run: Path
) -> None:
    code, err = run_main(monkeypatch, capsys, "generate", str(run), "--max-concurrency", "0")
    assert code == EXIT_BAD_INPUT and "max_concurrency" in err and len(err.strip().splitlines()) == 1
    monkeypatch.setenv("REMOTE_SYNTH_PORT", "not-a-port")
    code, err = run_main(monkeypatch, capsys, "generate", str(run))
    assert code == EXIT_BAD_INPUT and "port" in err


class _ReadyServer:
    """Stands in for a started, ready VllmServer (the real one is covered by integration tests)."""

    def __init__(self, run: Path) -> None:
        from remote_synth._server.vllm import ServerSettings

        self.settings = ServerSettings(model="m", adapter_path=run / "train" / "adapter", adapter_name="a")
        self.port = 1234
        self.log_file = run / "vllm.log"
        self.stopped = 0

    def start(self) -> None: ...

    def wait_ready(self, on_wait: Callable[[float], None] | None = None) -> None:
        if on_wait is not None:  # a start that takes a while, as told to the user
            for waited in (0.0, 1.0, 15.0, 16.0, 30.0):
                on_wait(waited)

    def raise_if_exited(self) -> None: ...

    def log_tail(self, lines: int = 1) -> str:
        return "INFO loading weights"

    def stop(self) -> None:
        self.stopped += 1


def test_ctrl_c_right_after_the_announcement_is_a_clean_stop(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], run: Path
) -> None:
    """A user (or a test) who presses Ctrl-C the moment "Ctrl-C stops the server." appears gets exit 0."""
    import remote_synth._server.vllm as server_module

    fake = _ReadyServer(run)
    monkeypatch.setattr(server_module, "VllmServer", lambda settings: fake)

    import click as cli_module

    echo = cli_module.echo

    said: list[str] = []

    def echo_then_interrupt(message: str = "", **kwargs: object) -> None:
        echo(message, **kwargs)
        said.append(message)
        if message.startswith("Ctrl-C"):  # the signal lands as soon as the line is out
            raise KeyboardInterrupt

    monkeypatch.setattr(cli_module, "echo", echo_then_interrupt)
    code, _ = run_main(monkeypatch, capsys, "serve", str(run), "--api-key", "k", "--port", str(free_port()))
    assert code == 0
    assert fake.stopped == 1
    assert [m for m in said if m.startswith("starting vLLM… ")] == [
        "starting vLLM… 15 s | INFO loading weights",  # every 2 s at most, with what the server says
        "starting vLLM… 30 s | INFO loading weights",
    ]


# -- durable jobs: inputs, existing files, exit codes by phase ----------------------------------


@pytest.mark.parametrize(
    ("args", "env", "field"),
    [
        (["--temperature", "inf"], {}, "temperature"),
        (["--temperature", "nan"], {}, "temperature"),
        (["--top-p", "nan"], {}, "top_p"),
        (["--invalid-fraction-threshold", "-inf"], {}, "invalid_fraction_threshold"),
        (["--retry-deadline", "inf"], {}, "retry_deadline"),
        ([], {"REMOTE_SYNTH_LOAD_INTERVAL": "inf"}, "load_interval"),
        ([], {"REMOTE_SYNTH_TEMPERATURE": "nan"}, "temperature"),
    ],
)
def test_inf_and_nan_name_the_field_and_exit_2(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], run: Path, tmp_path: Path,
    args: list[str], env: dict[str, str], field: str,
) -> None:  # fmt: skip
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    code, err = run_main(monkeypatch, capsys, "generate", str(run), "--base-url", "http://127.0.0.1:1",
                         "--output", str(tmp_path / "x.csv"), *args)  # fmt: skip
    assert code == EXIT_BAD_INPUT and field in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1


COUNTER = {"n": 0}


def unique_record() -> str:
    COUNTER["n"] += 1
    return f'{{"a": {COUNTER["n"]}}}\n'


def generate_args(run: Path, url: str, out: Path, *extra: str) -> list[str]:
    return ["generate", str(run), "--base-url", url, "--adapter-name", "a", "--output", str(out),
            "--retry-deadline", "0", *extra]  # fmt: skip


def test_existing_output_or_journal_needs_resume_or_overwrite(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], run: Path, tmp_path: Path
) -> None:
    out = tmp_path / "x.csv"
    out.write_text("a\n1\n")
    with scripted(monkeypatch, "a", unique_record) as server:
        code, err = run_main(monkeypatch, capsys, *generate_args(run, server.url, out, "--num-records", "5"))
        assert code == EXIT_BAD_INPUT and "exists (an earlier output)" in err and "--overwrite" in err
        assert out.read_text() == "a\n1\n" and server.completion_requests == 0
        code, err = run_main(monkeypatch, capsys, *generate_args(run, server.url, out, "--resume", "--overwrite"))
        assert code == EXIT_BAD_INPUT and "contradict" in err
        code, err = run_main(monkeypatch, capsys, *generate_args(run, server.url, out, "--num-records", "5",
                                                                 "--overwrite"))  # fmt: skip
        assert code == 0, err
    assert len(pd.read_csv(out)) == 5
    assert not (tmp_path / "x.csv.journal").exists()


def test_a_failure_during_generation_exits_1_and_resume_finishes_the_job_exactly(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], run: Path, tmp_path: Path
) -> None:
    out = tmp_path / "x.csv"
    journal = tmp_path / "x.csv.journal"
    args = generate_args(run, "{url}", out, "--num-records", "120", "--prompts-per-request", "5", "--window", "5")
    with scripted(monkeypatch, "a", unique_record, good_requests=6, fail_status=400) as server:  # 6 answers, then 400s
        code, err = run_main(monkeypatch, capsys, *[a.format(url=server.url) for a in args])
        answered = server.completions_answered  # one record each
    assert code == 1 and "injected failure" in err and "Traceback" not in err
    assert journal.exists() and not out.exists()
    kept = pd.read_csv(tmp_path / "x.partial.csv")
    assert len(kept) == answered >= 6 and "--resume" in err

    with scripted(monkeypatch, "a", unique_record) as server:
        code, err = run_main(monkeypatch, capsys, *[a.format(url=server.url) for a in args])
        assert code == EXIT_BAD_INPUT and "unfinished job's journal" in err
        code, err = run_main(monkeypatch, capsys, *[a.format(url=server.url) for a in args], "--resume",
                             "--temperature", "0.3")  # fmt: skip
        assert code == EXIT_BAD_INPUT and "temperature differs from the journal's" in err
        assert server.completion_requests == 0
        code, err = run_main(monkeypatch, capsys, *[a.format(url=server.url) for a in args], "--resume")
        assert code == 0, err
        missing = 120 - len(kept)  # only what was missing is asked for, and the hedge (3.5 %)
        assert server.completions_answered >= missing and server.completion_requests <= (missing * 1.05 + 5) // 5
    df = pd.read_csv(out)
    assert len(df) == 120 and df["a"].is_unique and set(kept["a"]) <= set(df["a"])
    assert not journal.exists()


def test_a_server_that_stops_answering_mid_job_exits_1(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], run: Path, tmp_path: Path
) -> None:
    out = tmp_path / "x.csv"
    with scripted(monkeypatch, "a", unique_record, good_requests=2, fail_status=0) as server:
        code, err = run_main(monkeypatch, capsys, *generate_args(run, server.url, out, "--num-records", "500"))
    assert code == 1 and "Traceback" not in err


def test_outputs_follow_the_umask(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], run: Path, tmp_path: Path
) -> None:
    old = os.umask(0o022)
    try:
        with scripted(monkeypatch, "a", unique_record) as server:
            code, err = run_main(monkeypatch, capsys, *generate_args(run, server.url, tmp_path / "x.csv",
                                                                     "--num-records", "3"))  # fmt: skip
    finally:
        os.umask(old)
    assert code == 0, err
    assert (tmp_path / "x.csv").stat().st_mode & 0o777 == 0o644


def test_serve_beyond_loopback_without_a_key_refuses_to_start(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], run: Path
) -> None:
    code, err = run_main(monkeypatch, capsys, "serve", str(run), "--host", "0.0.0.0")
    assert code == EXIT_BAD_INPUT and "--insecure" in err and "--api-key-env" in err


def test_a_key_file_is_private_even_when_it_existed(tmp_path: Path) -> None:
    from remote_synth._cli.serve import write_key

    path = tmp_path / ".vllm-api-key"
    path.write_text("old")
    path.chmod(0o644)
    write_key(path, "new-key")
    assert path.read_text() == "new-key" and path.stat().st_mode & 0o777 == 0o600


def test_a_read_only_run_directory_puts_logs_and_keys_in_the_state_dir(
    run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from remote_synth import RemoteSettings, RunDirectory
    from remote_synth._server import launch_settings
    from remote_synth._server.launch import files_dir

    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    opened = RunDirectory.open(run)
    assert files_dir(opened, RemoteSettings()) == run / "generate" / "logs"
    monkeypatch.setattr("remote_synth._server.launch._writable", lambda d: False)
    where = files_dir(opened, RemoteSettings())
    assert where.parent == tmp_path / "state" / "remote-synth"
    assert launch_settings(opened, RemoteSettings()).log_file == where / "vllm-server.log"
    assert files_dir(opened, RemoteSettings(log_dir=tmp_path / "logs")) == tmp_path / "logs"


@pytest.mark.parametrize(("raise_it", "code", "word"), [
    (lambda: os.kill(os.getpid(), signal.SIGINT), 130, "interrupted"),
    (lambda: os.kill(os.getpid(), signal.SIGHUP), 143, "terminated"),
    (lambda: os.kill(os.getpid(), signal.SIGTERM), 143, "terminated"),
])  # fmt: skip
def test_a_signal_during_generation_keeps_the_rows_and_exits_by_signal(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], run: Path, tmp_path: Path,
    raise_it: Callable[[], object], code: int, word: str,
) -> None:  # fmt: skip
    import remote_synth._cli.progress as cli_module

    signalled = []

    def update(self: object, progress: object) -> None:  # on the engine's thread: the signal goes to main's
        if not signalled:
            signalled.append(raise_it())

    monkeypatch.setattr(cli_module.ProgressBar, "update", update)
    out = tmp_path / "x.csv"
    with scripted(monkeypatch, "a", unique_record) as server:
        got, err = run_main(monkeypatch, capsys, *generate_args(run, server.url, out, "--num-records", "500"))
    assert got == code and word in err and "Traceback" not in err, err
    assert (tmp_path / "x.csv.journal").exists() and (tmp_path / "x.partial.csv").exists(), err


def test_a_full_disk_at_the_final_write_exits_1_and_resume_writes_the_kept_records(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], run: Path, tmp_path: Path
) -> None:
    import errno

    from remote_synth._io.output import OutputFile

    real_write = OutputFile.write

    def full(self: OutputFile, df: pd.DataFrame, path: Path | None = None) -> Path:
        raise OSError(errno.ENOSPC, "No space left on device")

    out = tmp_path / "x.csv"
    monkeypatch.setattr(OutputFile, "write", full)
    with scripted(monkeypatch, "a", unique_record) as server:
        code, err = run_main(monkeypatch, capsys, *generate_args(run, server.url, out, "--num-records", "40"))
        assert code == 1 and "No space left on device" in err and "--resume" in err and "Traceback" not in err
        assert len(err.strip().splitlines()) == 1
        monkeypatch.setattr(OutputFile, "write", real_write)
        sent = server.completion_requests
        code, err = run_main(monkeypatch, capsys, *generate_args(run, server.url, out, "--num-records", "40",
                                                                 "--resume"))  # fmt: skip
        assert code == 0, err
        assert server.completion_requests == sent  # written from the journal: nothing generated again
    assert len(pd.read_csv(out)) == 40


# -- serve: several runs on one server ---------------------------------------------------------


def test_one_server_for_several_runs_of_one_base_model(tmp_path: Path) -> None:
    from remote_synth import RemoteSettings, RunDirectory
    from remote_synth._server import VllmServer
    from remote_synth._server.launch import serve_settings

    other = {"type": "object", "properties": {"b": {"type": "string"}}, "required": ["b"]}
    runs = [RunDirectory.open(write_run_dir(tmp_path / "a", SCHEMA, base_model="m", lora_r=8)),
            RunDirectory.open(write_run_dir(tmp_path / "b", other, base_model="m", lora_r=32))]  # fmt: skip
    launch = serve_settings(runs, RemoteSettings())
    cmd = VllmServer(dataclasses.replace(launch, extra_args=("--tensor-parallel-size", "2"))).command
    modules = cmd[cmd.index("--lora-modules") + 1 : cmd.index("--max-loras")]
    assert [json.loads(m)["path"] for m in modules] == [str(r.adapter_dir) for r in runs]
    assert len({json.loads(m)["name"] for m in modules}) == 2
    assert cmd[cmd.index("--max-loras") + 1] == "2" and cmd[cmd.index("--max-lora-rank") + 1] == "32"
    assert cmd[-2:] == ["--tensor-parallel-size", "2"]
    assert not launch.offline  # "m" is no local path: a hub id, so the hub stays reachable
    capped = serve_settings(runs, RemoteSettings(max_loras=1, max_cpu_loras=4))
    cmd = VllmServer(capped).command
    assert cmd[cmd.index("--max-loras") + 1] == "1" and cmd[cmd.index("--max-cpu-loras") + 1] == "4"


@pytest.mark.parametrize(
    ("second_base", "extra", "message"),
    [
        ("other-model", [], "one server serves adapters of one base model"),
        ("m", ["--adapter-name", "x"], "--adapter-name names one adapter"),
        (None, [], "named twice"),
    ],
)
def test_serve_refuses_what_one_server_cannot_serve(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], run: Path, tmp_path: Path,
    second_base: str | None, extra: list[str], message: str,
) -> None:  # fmt: skip
    second = run if second_base is None else write_run_dir(tmp_path / "b", SCHEMA, base_model=second_base)
    code, err = run_main(monkeypatch, capsys, "serve", str(run), str(second), *extra)
    assert code == EXIT_BAD_INPUT and message in err and len(err.strip().splitlines()) == 1


def test_a_busy_port_is_found_before_vllm_starts(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], run: Path
) -> None:
    import socket

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        code, err = run_main(monkeypatch, capsys, "serve", str(run), "--port", str(port))
    assert code == EXIT_BAD_INPUT and f"--port {port}" in err and "Traceback" not in err


def test_vllm_flags_pass_through_after_the_run_dirs(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], run: Path
) -> None:
    import remote_synth._server.vllm as server_module

    seen = []

    def capture(settings: object) -> _ReadyServer:
        seen.append(settings)
        raise KeyboardInterrupt

    monkeypatch.setattr(server_module, "VllmServer", capture)
    run_main(monkeypatch, capsys, "serve", str(run), "--api-key", "k", "--port", str(free_port()),
             "--runtime-adapters", "--", "--gpu-memory-utilization", "0.8", "--enforce-eager")  # fmt: skip
    assert seen and seen[0].extra_args == ("--gpu-memory-utilization", "0.8", "--enforce-eager")
    assert ("VLLM_ALLOW_RUNTIME_LORA_UPDATING", "1") in seen[0].extra_env


def test_a_local_base_model_keeps_the_server_offline(tmp_path: Path) -> None:
    from remote_synth import RemoteSettings, RunDirectory
    from remote_synth._server import launch_settings

    (tmp_path / "base").mkdir()
    run = RunDirectory.open(write_run_dir(tmp_path / "r", SCHEMA, base_model=str(tmp_path / "base")))
    assert launch_settings(run, RemoteSettings()).offline
    assert not launch_settings(run, RemoteSettings(offline=False)).offline


def test_the_announced_base_url_is_one_a_client_can_use() -> None:
    import socket

    from remote_synth._cli.serve import client_base_url

    assert client_base_url("127.0.0.1", 8000) == "http://127.0.0.1:8000"
    assert client_base_url("0.0.0.0", 8000) == f"http://{socket.getfqdn()}:8000"
    assert client_base_url("::1", 8000) == "http://[::1]:8000"


@pytest.mark.parametrize(("args", "message"), [
    (["--header", "no-colon"], "'Name: value'"),
    (["--extra-body", "[1]"], "JSON object"),
    (["--extra-body", "{oops"], "not JSON"),
])  # fmt: skip
def test_bad_gateway_extras_are_bad_input(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], run: Path, args: list[str], message: str
) -> None:
    code, err = run_main(monkeypatch, capsys, "generate", str(run), "--base-url", "http://127.0.0.1:1", *args)
    assert code == EXIT_BAD_INPUT and message in err


def test_settings_flags_come_from_the_settings_fields() -> None:
    """Type, choices and help are the field's: a new setting is one field and its name in the list."""
    from typing import get_args

    from remote_synth._cli.generate import GENERATE_SETTINGS, generate
    from remote_synth._cli.serve import SERVE_SETTINGS, serve
    from remote_synth._settings import AdapterCheck, RemoteSettings

    for command, names in ((generate, GENERATE_SETTINGS), (serve, SERVE_SETTINGS)):
        options = {p.name: p for p in command.params if isinstance(p, click.Option)}
        for name in names:
            description = RemoteSettings.model_fields[name].description or ""
            assert name in options and (options[name].help or "").startswith(description.strip()), name
    options = {p.name: p for p in generate.params if isinstance(p, click.Option)}
    check = options["adapter_check"].type
    assert isinstance(check, click.Choice) and tuple(check.choices) == get_args(AdapterCheck)
    assert options["use_detailed_logs"].opts == ["--detailed-errors"] and options["use_detailed_logs"].is_flag
    assert options["share"].type == click.FLOAT and "[default: 1.0]" in (options["share"].help or "")
    serve_options = {p.name: p for p in serve.params if isinstance(p, click.Option)}
    assert serve_options["offline"].opts == ["--offline"] and serve_options["offline"].secondary_opts == ["--online"]


@pytest.mark.parametrize(
    ("variable", "value", "message"),
    [
        ("REMOTE_SYNTH_BASE_URL", ",,,", "no URL given"),
        ("REMOTE_SYNTH_BASE_URL", "localhost:8000", "must start with http"),
        ("REMOTE_SYNTH_EXTRA_HEADERS", "notjson", "REMOTE_SYNTH_EXTRA_HEADERS: not valid JSON"),
        ("REMOTE_SYNTH_API_KEY", "clé secrète", "printable ASCII"),
    ],
)
def test_bad_variables_are_one_line_and_never_launch_a_server(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], run: Path, tmp_path: Path,
    variable: str, value: str, message: str,
) -> None:  # fmt: skip
    monkeypatch.setenv(variable, value)
    code, err = run_main(monkeypatch, capsys, "generate", str(run), "--output", str(tmp_path / "x.csv"))
    assert code == EXIT_BAD_INPUT and message in err and "Traceback" not in err
    assert "starting vLLM" not in err and len(err.strip().splitlines()) == 1
    assert "secrète" not in err


def test_a_key_given_for_its_variable_s_name_is_not_echoed(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], run: Path
) -> None:
    code, err = run_main(monkeypatch, capsys, "generate", str(run), "--api-key-env", "sk-live-0123.4567")
    assert code == EXIT_BAD_INPUT and "sk-live" not in err and "0123" not in err


def test_a_client_only_serve_says_so_before_writing_or_starting_anything(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], run: Path
) -> None:
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "vllm" else real(name, *a))
    code, err = run_main(monkeypatch, capsys, "serve", str(run))
    assert code == EXIT_BAD_INPUT and "vLLM is not installed here" in err and len(err.strip().splitlines()) == 1
    assert not list(run.rglob(".vllm-api-key*")) and "starting" not in err


def test_generate_help_is_in_sections_with_examples_first() -> None:
    from click.testing import CliRunner

    from remote_synth._cli import cli

    text = CliRunner().invoke(cli, ["generate", "--help"]).output
    titles = ["Examples:", "Connection:", "Sampling (NSS's generation parameters):", "Engine:", "Durability:",
              "Tenancy (shared servers and gateways):"]  # fmt: skip
    assert [text.index(t) for t in titles] == sorted(text.index(t) for t in titles)
    connection = text[text.index("Connection:") : text.index("Sampling")]
    assert "--base-url" in connection and "--temperature" not in connection
    other = text[text.index("Other options:") :]
    assert "--help" in other and "--" not in other.replace("--help", "")  # every other flag has its section


NUMERIC_FLAGS = {
    "--num-records": "num_records", "--temperature": "temperature", "--top-p": "top_p",
    "--repetition-penalty": "repetition_penalty", "--patience": "patience",
    "--invalid-fraction-threshold": "invalid_fraction_threshold", "--max-tokens-multiplier": "max_tokens_multiplier",
    "--structured-generation-max-records-per-sequence": "max_records_per_sequence",
    "--max-new-tokens": "max_new_tokens", "--max-concurrency": "max_concurrency",
    "--prompts-per-request": "prompts_per_request", "--window": "window", "--share": "share",
    "--retry-deadline": "retry_deadline", "--wait-for-server": "wait_for_server", "--priority": "priority",
}  # fmt: skip
"""Every numeric flag of ``generate``, and the field it sets."""
NEGATIVE_IS_VALID = {"--priority"}


@pytest.mark.parametrize(
    ("flag", "value"),
    [
        (flag, value)
        for flag in NUMERIC_FLAGS
        for value in ("abc", "nan", "inf", "-1", "1e999", "")
        if not (flag in NEGATIVE_IS_VALID and value == "-1")
    ],  # fmt: skip
)
def test_every_numeric_flag_refuses_garbage_in_one_line_before_anything_starts(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], run: Path, tmp_path: Path,
    flag: str, value: str,
) -> None:  # fmt: skip
    out = tmp_path / "x.csv"
    code, err = run_main(monkeypatch, capsys, "generate", str(run), flag, value, "--base-url", "http://127.0.0.1:1",
                         "--output", str(out))  # fmt: skip
    assert code == EXIT_BAD_INPUT, err
    assert "Traceback" not in err and "cannot reach" not in err  # refused before any connection
    assert flag in err or NUMERIC_FLAGS[flag] in err, err
    assert len([line for line in err.splitlines() if line.strip()]) == 1 or "Usage:" in err
    assert not out.exists() and not (tmp_path / "x.csv.journal").exists()


VARIABLES = ["TEMPERATURE", "TOP_P", "NUM_RECORDS", "PATIENCE", "MAX_TOKENS_MULTIPLIER", "WINDOW", "MAX_WINDOW",
             "SHARE", "REQUEST_TIMEOUT", "RETRY_DEADLINE", "MAX_CONCURRENCY", "PROMPTS_PER_REQUEST", "LOAD_INTERVAL",
             "MAX_SERVER_RESTARTS", "STARTUP_TIMEOUT", "STRUCTURED_GENERATION__ENABLED",
             "STRUCTURED_GENERATION__SCHEMA_METHOD", "VALIDATION__ENFORCE_NUMERIC_RANGE", "ADAPTER_CHECK"]  # fmt: skip
"""``REMOTE_SYNTH_<FIELD>`` variables whose values are numbers, flags or choices."""


@pytest.mark.parametrize(("name", "value"), [(n, v) for n in VARIABLES for v in ("abc", "nan", "-5")])
def test_every_variable_refuses_garbage_in_one_line_before_anything_starts(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], run: Path, tmp_path: Path,
    name: str, value: str,
) -> None:  # fmt: skip
    monkeypatch.setenv(f"REMOTE_SYNTH_{name}", value)
    out = tmp_path / "x.csv"
    code, err = run_main(monkeypatch, capsys, "generate", str(run), "--base-url", "http://127.0.0.1:1",
                         "--output", str(out))  # fmt: skip
    assert code == EXIT_BAD_INPUT and "Traceback" not in err and "cannot reach" not in err, err
    assert name.lower().split("__")[-1] in err and len(err.strip().splitlines()) == 1, err
    assert not out.exists()


def test_metrics_are_served_during_the_job_and_logs_are_json_lines(
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
    run: Path,
    tmp_path: Path,
) -> None:
    import httpx

    caplog.set_level("INFO")
    port = free_port()
    scrapes: list[str] = []

    def record_and_scrape() -> str:
        if COUNTER["n"] % 40 == 20:  # mid-job, from the engine's own thread
            scrapes.append(httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text)
        return unique_record()

    out = tmp_path / "x.csv"
    with scripted(monkeypatch, "a", record_and_scrape) as server:
        args = generate_args(run, server.url, out, "--num-records", "200", "--metrics-port", str(port),
                             "--log-format", "json")  # fmt: skip
        formatters = [(h, h.formatter) for h in logging.getLogger().handlers]
        try:
            code, err = run_main(monkeypatch, capsys, "-v", *args)
            text = caplog.text
        finally:  # pytest's handlers outlive the test
            for handler, formatter in formatters:
                handler.setFormatter(formatter)
    assert code == 0, err
    assert scrapes, "no scrape ran during the job"
    labels = 'gen_ai_operation_name="text_completion",gen_ai_request_model="a"'
    last = scrapes[-1]
    assert f"remote_synth_requests_total{{{labels}}}" in last
    assert f'remote_synth_records_total{{{labels},outcome="valid"}}' in last
    assert f"remote_synth_records_target{{{labels}}} 200.0" in last
    assert f"remote_synth_window_prompts{{{labels}}}" in last and "remote_synth_in_flight_prompts" in last
    sent = float(last.split(f'remote_synth_prompts_total{{{labels},state="sent"}} ')[1].split()[0])
    assert 0 < sent <= server.completions_answered + 200
    with pytest.raises(httpx.ConnectError):  # the endpoint ends with the job
        httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=2)
    lines = [json.loads(line) for line in text.splitlines()]  # the handlers in place wrote JSON
    assert {"remote_synth.engine", "remote_synth.results"} <= {line["logger"] for line in lines}
    assert all(
        line["level"] in ("debug", "info", "warning", "error") and line["time"].endswith("+00:00") for line in lines
    )
