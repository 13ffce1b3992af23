"""CLI wiring and exit codes, without a server (the end-to-end runs are integration tests)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from remote_synth._cli import EXIT_BAD_INPUT, main
from remote_synth._server import free_port
from remote_synth.demo.layout import write_run_dir

SCHEMA = {"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"]}


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
        from remote_synth._server import ServerSettings

        self.settings = ServerSettings(model="m", adapter_path=run / "train" / "adapter", adapter_name="a")
        self.port = 1234
        self.log_file = run / "vllm.log"
        self.stopped = 0

    def start(self) -> None: ...

    def wait_ready(self) -> None: ...

    def raise_if_exited(self) -> None: ...

    def stop(self) -> None:
        self.stopped += 1


def test_ctrl_c_right_after_the_announcement_is_a_clean_stop(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], run: Path
) -> None:
    """A user (or a test) who presses Ctrl-C the moment "Ctrl-C stops the server." appears gets exit 0."""
    import remote_synth._server as server_module

    fake = _ReadyServer(run)
    monkeypatch.setattr(server_module, "VllmServer", lambda settings: fake)

    import remote_synth._cli as cli_module

    echo = cli_module.click.echo

    def echo_then_interrupt(message: str = "", **kwargs: object) -> None:
        echo(message, **kwargs)
        if message.startswith("Ctrl-C"):  # the signal lands as soon as the line is out
            raise KeyboardInterrupt

    monkeypatch.setattr(cli_module.click, "echo", echo_then_interrupt)
    code, _ = run_main(monkeypatch, capsys, "serve", str(run), "--api-key", "k")
    assert code == 0
    assert fake.stopped == 1
