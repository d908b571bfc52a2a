"""Looking at a socket without reading from it: is something (or the end) waiting?

Used on the client's socket by the relay (has the browser gone?) and on idle
pooled upstream connections by the HTTP client (did the server close it?).
"""

from __future__ import annotations

import select
import socket
from typing import Any

from gevent import monkey

_poll = monkey.get_original("select", "poll")


def readable_now(sock: Any) -> bool:
    """Bytes or an end are waiting on `sock`; never blocks, any descriptor number
    (select() refuses those past 1024, which a worker with 500 streams reaches)."""
    poller = _poll()
    poller.register(sock.fileno(), select.POLLIN)
    return bool(poller.poll(0))


def peer_closed(sock: Any) -> bool:
    """True once the other end closed its side: readable, and a peek finds EOF."""
    try:
        return readable_now(sock) and sock.recv(1, socket.MSG_PEEK) == b""
    except (OSError, ValueError):
        return True
