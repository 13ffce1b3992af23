"""A server must not outlive the process that launched it, even one killed with SIGKILL.

Run as a script, by path, with the interpreter that runs the server (it imports
nothing of ours): ``python _lifeline.py CMD ARGS...``, with its stdin a pipe whose
write end only the owner holds. It starts CMD in its own process group (which the
owner made, with ``start_new_session``) and waits. When the pipe closes (the
owner exited, however it died) it sends SIGTERM to the group, waits ``GRACE``
seconds, then SIGKILLs the group, itself included. When CMD exits on its own,
the lifeline exits with CMD's code (128 + signal for a signal), so the owner
reads the server's exit code as before.

SIGTERM to the group (the owner's ``stop``) reaches CMD directly; the lifeline
ignores it and exits when CMD does.
"""

import os
import signal
import subprocess
import sys
import threading
import time

GRACE = 10.0


def main(argv: list[str]) -> int:
    # A handler, not SIG_IGN: an ignored signal would stay ignored in CMD across exec.
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, _ignore)
    child = subprocess.Popen(argv, stdin=subprocess.DEVNULL)  # noqa: S603 - the owner's argument list
    threading.Thread(target=_watch_owner, args=(child,), daemon=True).start()
    code = child.wait()
    return 128 - code if code < 0 else code


def _ignore(signum: int, frame: object) -> None:
    """The server answers the group's signals; the lifeline waits for it to exit."""


def _watch_owner(child: "subprocess.Popen[bytes]") -> None:
    """Block on stdin until the owner's end closes, then take the whole group down."""
    try:
        while os.read(0, 4096):
            pass
    except OSError:
        pass
    _signal_group(signal.SIGTERM)
    deadline = time.monotonic() + GRACE
    while child.poll() is None and time.monotonic() < deadline:
        time.sleep(0.1)
    _signal_group(signal.SIGKILL)  # stragglers (engine processes), and this lifeline


def _signal_group(sig: int) -> None:
    try:
        os.killpg(0, sig)
    except OSError:
        pass


if __name__ == "__main__":
    code = main(sys.argv[1:])
    sys.stdout.flush()
    os._exit(code)  # not sys.exit: the watching thread is blocked in a read, and need not be joined
