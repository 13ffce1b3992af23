"""The test fakes' own promises, where a broken fake would fail other tests at random."""

from __future__ import annotations

import gc
import socket
import time
import warnings

from fakes.fault_proxy import FaultProxy


def test_the_fault_proxy_closes_a_connection_it_accepts_as_it_closes() -> None:
    """A connection waiting to be accepted when the proxy closes is accepted and closed, not
    dropped to the collector (a ResourceWarning, which fails whichever test is running).

    The proxy's loop is stalled while a client connects and the proxy is told to close, so the
    loop meets the close and the waiting connection in the same turn. Before the proxy stopped
    accepting ahead of closing its server, this left the accepted socket unclosed every time
    (and about one teardown in four of the fault drill, by chance)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ResourceWarning)
        with FaultProxy("http://127.0.0.1:9", lambda n, method, path: None) as proxy:
            proxy.stall(0.5)
            time.sleep(0.1)
            client = socket.create_connection(("127.0.0.1", proxy.port), timeout=5)
        client.close()
        gc.collect()
    unclosed = [str(w.message) for w in caught if issubclass(w.category, ResourceWarning)]
    assert unclosed == []
