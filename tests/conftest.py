import signal
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))


@pytest.fixture(scope="session", autouse=True)
def ctrl_c_works() -> Iterator[None]:
    """Tests send SIGINT (to us and to the processes we start) and expect Ctrl-C's behaviour.

    Started in the background of a script (``make test &``, ``nohup``), a process inherits SIGINT
    ignored, and so would every process it starts; a handler here makes the children's SIGINT the
    default again (exec resets handled signals, not ignored ones).
    """
    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
