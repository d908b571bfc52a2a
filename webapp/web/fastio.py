"""Fewer system calls on the write path gunicorn's gevent workers give every answer,
and a deadline on reading each request.

Three changes, installed once per worker by gunicorn.conf.py (`install()`):

- gevent's `sendall` asks the kernel for SO_SNDBUF (a getsockopt call) before
  every write, to size its slices: profiled here at 12% of a worker's CPU when
  relaying 300 streams. A relayed chunk is small and the kernel almost always
  takes it whole, so one plain `send` is tried first; anything left goes to
  gevent's own `sendall`, with its timeout and waiting. Only the exact plain
  socket class is affected; TLS sockets keep their own path.
- gunicorn writes a response's head, then each body chunk, separately. The
  head is held until the first body chunk (or the end) and goes out in the
  same write, so the client sees status and first token in one segment and the
  worker makes one system call fewer per answer. Nothing is held back that is
  ready: the head is sent, at the latest, with the first body byte.
- gunicorn waits for a request's head for as long as its keep-alive (95 s),
  and for a body for ever: a slow client (a byte now and then) holds a
  connection, and 2,000 of them fill a worker. A request's head and body must
  now arrive within CLIENT_READ_TIMEOUT of its first byte (and a new
  connection's first request within that of the accept); past it the read
  raises ClientReadTimeout, and the connection closes. The wait for the next
  request on a kept-alive connection keeps gunicorn's own bound.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import gevent
import gunicorn
from gevent import _socket3
from gunicorn import util
from gunicorn.http import parser, unreader, wsgi

from webapp.errors import ClientReadTimeout

log = logging.getLogger("webapp.web.fastio")
_plain = _socket3.socket
_original_sendall = _plain.sendall


def _sendall(self: Any, data: Any, flags: int = 0) -> None:
    if type(self) is _plain and type(data) is bytes and self.timeout != 0.0:
        try:
            sent = self._sock.send(data, flags)
        except BlockingIOError:
            sent = 0
        if sent == len(data):
            return
        data = memoryview(data)[sent:]
    _original_sendall(self, data, flags)


class HeadWithFirstChunk(wsgi.Response):  # type: ignore[misc]
    _held: bytes | None = None
    headers_sent: bool

    def send_headers(self) -> None:
        if self.headers_sent:
            return
        lines = self.default_headers()
        lines.extend(f"{k}: {v}\r\n" for k, v in self.headers)
        self._held = ("".join(lines) + "\r\n").encode("latin-1")
        self.headers_sent = True

    def _emit_body(self, data: bytes) -> None:
        held = self._held
        if held is None:
            util.write(self.sock, data, self.chunked)
            return
        self._held = None
        if self.chunked:
            self.sock.sendall(b"%s%X\r\n%s\r\n" % (held, len(data), data))
        else:
            self.sock.sendall(held + data)

    def close(self) -> None:
        if not self.headers_sent:
            self.send_headers()
        held, self._held = self._held, b""
        if held or self.chunked:
            self.sock.sendall((held or b"") + (b"0\r\n\r\n" if self.chunked else b""))

    def sendfile(self, respiter: Any) -> bool:
        # The base class writes the head itself around os.sendfile; the files
        # served here are small static assets, so they go through write().
        return False


_original_chunk = unreader.SocketUnreader.chunk
_original_init = unreader.SocketUnreader.__init__
_original_next = parser.Parser.__next__
_read_timeout = 30.0


def _unreader_init(self: Any, *args: Any, **kwargs: Any) -> None:
    _original_init(self, *args, **kwargs)
    # A new connection owes its first request promptly.
    self.deadline = time.monotonic() + _read_timeout


def _chunk(self: Any, size_hint: int | None = None) -> bytes:
    deadline = self.deadline
    if deadline is None:
        # Waiting for the next request on a kept-alive connection: gunicorn's
        # keep-alive bound applies. Its first byte starts the clock.
        data: bytes = _original_chunk(self, size_hint)
        self.deadline = time.monotonic() + _read_timeout
        return data
    left = deadline - time.monotonic()
    if left <= 0:
        raise ClientReadTimeout()
    sock = self.sock
    previous = sock.gettimeout()
    sock.settimeout(left)
    try:
        data = _original_chunk(self, size_hint)
    except TimeoutError:
        raise ClientReadTimeout() from None
    finally:
        sock.settimeout(previous)
    return data


def _next(self: Any) -> Any:
    if self.mesg is not None and isinstance(self.unreader, unreader.SocketUnreader):
        self.unreader.deadline = None  # a kept-alive connection, between requests
    return _original_next(self)


# The versions these patches were written against and tested with (tests/web/test_fastio.py).
WRITTEN_FOR = {"gunicorn": "27.0", "gevent": "26.9"}


def compatible() -> list[str]:
    """What does not match the versions and private attributes the patches need."""
    problems = [
        f"{name} {version}"
        for name, version in (("gunicorn", gunicorn.__version__), ("gevent", gevent.__version__))
        if not version.startswith(WRITTEN_FOR[name] + ".") and version != WRITTEN_FOR[name]
    ]
    needed = (
        (_socket3.socket, "sendall"),
        (_socket3.socket, "_sock"),
        (wsgi.Response, "default_headers"),
        (unreader.SocketUnreader, "chunk"),
        (parser.Parser, "__next__"),
    )
    problems += [f"{owner.__name__}.{name}" for owner, name in needed if not hasattr(owner, name)]
    return problems


def install(read_timeout: float = 30.0) -> None:
    """Once per process, in a gevent worker, after gevent patched it. With other
    versions of gunicorn or gevent than WRITTEN_FOR, it logs and changes nothing:
    the server then works as shipped (slower, and without the read deadline)."""
    global _read_timeout
    problems = compatible()
    if problems:
        log.warning(
            "fastio: not installed, written for gunicorn %s and gevent %s (found: %s); "
            "requests then have no head/body read deadline (CLIENT_READ_TIMEOUT)",
            WRITTEN_FOR["gunicorn"],
            WRITTEN_FOR["gevent"],
            ", ".join(problems),
        )
        return
    _read_timeout = read_timeout
    if _plain.sendall is not _sendall:
        _plain.sendall = _sendall
    wsgi.Response = HeadWithFirstChunk
    unreader.SocketUnreader.__init__ = _unreader_init
    unreader.SocketUnreader.chunk = _chunk
    parser.Parser.__next__ = parser.Parser.next = _next
