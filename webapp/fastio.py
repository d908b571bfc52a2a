"""A cheaper `sendall` for gevent's plain sockets, which carry every relayed chunk.

gevent's `sendall` asks the kernel for SO_SNDBUF (a getsockopt system call)
before every write, to size its slices: profiled here at 12% of a worker's
CPU when relaying 300 streams. A relayed chunk is small, and the kernel
almost always takes it whole, so this tries one plain `send` first and hands
anything left over to gevent's own `sendall`, with its timeout and waiting.
Only the exact plain socket class is affected; TLS sockets keep their own path.
"""

from __future__ import annotations

from typing import Any

from gevent import _socket3

_plain = _socket3.socket
_original = _plain.sendall


def _sendall(self: Any, data: Any, flags: int = 0) -> None:
    if type(self) is _plain and type(data) is bytes and self.timeout != 0.0:
        try:
            sent = self._sock.send(data, flags)
        except BlockingIOError:
            sent = 0
        if sent == len(data):
            return
        data = memoryview(data)[sent:]
    _original(self, data, flags)


def install() -> None:
    """Once per process, in a gevent worker (gunicorn.conf.py calls it)."""
    if _plain.sendall is not _sendall:
        _plain.sendall = _sendall
