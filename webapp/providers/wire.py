"""A small HTTP/1.1 client for the one hot request: POST, then read a streamed body.

Why not urllib3 or httpx: the relay wants to wait on the upstream with a
timeout (a bound, a heartbeat, a look at the client), then carry on reading
from where it stopped. A timed-out socket read loses nothing, and here the
chunked decoder's state lives in this object, so that holds for the whole
stack. The relay can then read the upstream from the same greenlet that writes
to the client: one wake-up per upstream read, no handoff. It also costs a
fraction of urllib3's per-request set-up (no http.client, no header objects).

Keep-alive connections are pooled per origin (for at most MAX_IDLE_AGE
seconds idle). A reused connection that turns out to be closed before any
byte of the answer is set aside and the request goes on another (the next
idle one, else a new one), as browsers and urllib3 do; a failure on a new
connection is the caller's to retry.

Parsing is strict (RFC 9112): a status of three digits, header names that are
tokens, chunk sizes of hex digits only, one plain Content-Length, chunked as
the only transfer coding and never beside a length, a bounded head, trailer
and run of 1xx heads. Anything else is a ProtocolError, not a guess.
"""

from __future__ import annotations

import base64
import contextlib
import re
import socket
import ssl
import time
import urllib.parse
from dataclasses import dataclass

from webapp.sockets import readable_now

MAX_HEAD = 64 * 1024
MAX_ERROR_BODY = 1024 * 1024
# Interim (1xx) heads accepted before the real one; a server sending more is broken.
MAX_INTERIM = 10
# Pooled connections older than this are not reused: load balancers and NATs
# commonly forget idle connections after 60 s or more, without telling either end.
MAX_IDLE_AGE = 50.0
RECV = 65536


class WireError(Exception):
    """Base: the upstream could not be used."""


class ConnectFailed(WireError):
    """No connection: refused, unreachable, no such host, or the proxy said no."""


class WireTimeout(WireError):
    """Connecting, or waiting for the answer's head, took too long."""


class Broken(WireError):
    """The connection closed or reset before the answer was complete."""


class ProtocolError(WireError):
    """The bytes were not HTTP/1.1 as expected (bad status line, chunk size...)."""


# RFC 9112 grammar, strictly: anything looser (Python's int() takes "0x5", "5_0",
# " +5 ") lets two parsers disagree about where a message ends.
_STATUS = re.compile(r"[0-9]{3}")
_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")  # a header name
_DIGITS = re.compile(r"[0-9]{1,18}")  # a content-length
_HEX = re.compile(rb"[0-9A-Fa-f]{1,16}")  # a chunk size (16 digits: 2**64, already absurd)


@dataclass(frozen=True, slots=True)
class Origin:
    scheme: str
    host: str
    port: int

    @classmethod
    def of(cls, url: str) -> Origin:
        parts = urllib.parse.urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"not an http(s) URL: {url!r}")
        port = parts.port or (443 if parts.scheme == "https" else 80)
        return cls(parts.scheme, parts.hostname, port)

    @property
    def authority(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        default = 443 if self.scheme == "https" else 80
        return host if self.port == default else f"{host}:{self.port}"


class Connection:
    """One socket, with the bytes read past the current message kept in `buffer`."""

    __slots__ = ("buffer", "drained", "idle_since", "reused", "sock", "waitable")

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buffer = b""
        self.reused = False
        self.drained = False
        self.idle_since = 0.0
        # A plain gevent socket can wait for readability before reading (see read).
        self.waitable = (
            type(sock).__module__ == "gevent._socket3"
            and type(sock).__name__ == "socket"
            and hasattr(sock, "_wait")  # private gevent API: without it, plain reads
            and hasattr(sock, "_read_event")
        )

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.close()


class Response:
    """A response head, then the body read incrementally with `read(timeout)`."""

    __slots__ = (
        "_chunked",
        "_conn",
        "_done",
        "_left",
        "_pool",
        "_stage",
        "_trailer",
        "_until_close",
        "headers",
        "status",
    )

    def __init__(self, status: int, headers: dict[str, str], conn: Connection, pool: Pool) -> None:
        self.status = status
        self.headers = headers
        self._conn: Connection | None = conn
        self._pool = pool
        encoding = headers.get("transfer-encoding")
        length = headers.get("content-length")
        if encoding is not None:
            # Only chunked is asked for (the request says Accept-Encoding: identity);
            # with a length as well, which one frames the body is ambiguous, and
            # RFC 9112 lets a client refuse such an answer.
            if encoding.strip().lower() != "chunked":
                raise ProtocolError(f"unsupported transfer-encoding: {encoding!r:.40}")
            if length is not None:
                raise ProtocolError("both transfer-encoding and content-length")
        self._chunked = encoding is not None
        self._until_close = not self._chunked and length is None
        # Bytes left: of the body (content-length), or of the current chunk.
        self._left = 0 if length is None else _content_length(length)
        # 204 and 304 have no body whatever the headers say.
        if status in (204, 304):
            self._chunked = self._until_close = False
            self._left = 0
        self._done = not self._chunked and not self._until_close and self._left == 0
        # Chunked framing: "size" (a size line is next), "data", "crlf" (after data),
        # "trailer" (after the last chunk; `_trailer` counts its bytes).
        self._stage = "size"
        self._trailer = 0

    @property
    def done(self) -> bool:
        return self._done

    def read(self, timeout: float | None) -> bytes | None:
        """Body bytes that arrived (at least one), b"" at the end, None on timeout.

        Raises Broken if the connection ends before the body does, ProtocolError
        on bad chunk framing.
        """
        conn = self._conn
        if self._done or conn is None:
            self._finish()  # a body that was empty from the start: pool it now
            return b""
        while True:
            if conn.buffer:
                raw, conn.buffer = conn.buffer, b""
                out = self._decode(raw) if self._chunked else self._plain(raw)
                if self._done:
                    self._finish()
                    return out
                if out:
                    return out
                # Only part of a framing line so far: it waits in the buffer.
            try:
                conn.sock.settimeout(timeout)
                if conn.drained and conn.waitable:
                    # The last read emptied the socket: wait for data, rather than
                    # first trying a read that fails (a system call and an exception).
                    conn.sock._wait(conn.sock._read_event)  # type: ignore[attr-defined]
                data = conn.sock.recv(RECV)
                conn.drained = len(data) < RECV
            except TimeoutError:
                return None
            except OSError as exc:
                self.close()
                raise Broken(f"read failed: {exc}") from None
            if not data:
                if self._until_close:
                    self._done = True
                    self.close()
                    return b""
                self.close()
                raise Broken("the connection closed mid-body")
            conn.buffer += data

    def _plain(self, raw: bytes) -> bytes:
        if self._until_close:
            return raw
        assert self._conn is not None
        if len(raw) >= self._left:
            out, self._conn.buffer = raw[: self._left], raw[self._left :]
            self._left = 0
            self._done = True
            return out
        self._left -= len(raw)
        return raw

    def _decode(self, raw: bytes) -> bytes:
        """Chunked transfer decoding of whatever arrived; a partial line waits in the buffer."""
        out: list[bytes] = []
        position, end = 0, len(raw)
        stage, left = self._stage, self._left
        while position < end:
            if stage == "data":
                take = min(left, end - position)
                out.append(raw[position : position + take])
                position += take
                left -= take
                if left == 0:
                    stage = "crlf"
                continue
            line_end = raw.find(b"\r\n", position)
            if line_end < 0:
                if end - position > 4096:
                    raise self._protocol("chunk framing line too long")
                break
            if stage == "crlf":
                if line_end != position:
                    raise self._protocol("chunk data not followed by CRLF")
                position += 2
                stage = "size"
                continue
            if stage == "trailer":
                blank = line_end == position
                self._trailer += line_end + 2 - position
                if self._trailer > MAX_HEAD:
                    raise self._protocol("chunked trailer too large")
                position = line_end + 2
                if blank:
                    self._done = True
                    break
                continue
            # A size line: 1*HEXDIG, maybe then ";extensions" (spaces allowed before ";").
            size, semicolon, _ = raw[position:line_end].partition(b";")
            if semicolon:
                size = size.rstrip(b" \t")
            if not _HEX.fullmatch(size):
                raise self._protocol(f"bad chunk size: {size[:20]!r}")
            left = int(size, 16)
            position = line_end + 2
            stage = "trailer" if left == 0 else "data"
        self._stage, self._left = stage, left
        assert self._conn is not None
        self._conn.buffer = raw[position:]
        if not out:
            return b""
        return out[0] if len(out) == 1 else b"".join(out)

    def _protocol(self, why: str) -> ProtocolError:
        self.close()
        return ProtocolError(why)

    def _finish(self) -> None:
        """The body is complete: the connection can serve the next request."""
        conn, self._conn = self._conn, None
        if conn is None:
            return
        if self._until_close or self.headers.get("connection", "").lower() == "close":
            conn.close()
        else:
            self._pool.put(conn)

    def read_all(self, limit: int = MAX_ERROR_BODY, timeout: float = 10.0) -> bytes:
        """The whole (small) body, e.g. an error's; at most `limit` bytes are kept."""
        parts: list[bytes] = []
        size = 0
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                self.close()
                break
            data = self.read(remaining)
            if data is None:
                self.close()
                break
            if not data:
                break
            if size < limit:
                parts.append(data[: limit - size])
            size += len(data)
            if size > limit:
                self.close()  # the rest is not worth reading (it may never end)
                break
        return b"".join(parts)

    def close(self) -> None:
        """Drop the connection: the upstream sees it close and stops generating."""
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()


class Pool:
    """Keep-alive connections to one origin, optionally through an HTTP proxy."""

    def __init__(
        self,
        url: str,
        *,
        proxy: str = "",
        connect_timeout: float = 5.0,
        head_timeout: float = 60.0,
        max_idle: int = 256,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self.origin = Origin.of(url)
        self.proxy = Origin.of(proxy) if proxy else None
        self.proxy_auth = _basic_auth(proxy) if proxy else None
        self.connect_timeout = connect_timeout
        self.head_timeout = head_timeout
        self.max_idle = max_idle
        self._idle: list[Connection] = []
        self._ssl = (
            (ssl_context or ssl.create_default_context()) if self.origin.scheme == "https" else None
        )
        # Plain http through a proxy sends the absolute URL; https tunnels with CONNECT.
        self._absolute = self.proxy is not None and self._ssl is None

    def request_head(self, method: str, url: str, headers: dict[str, str]) -> bytes:
        """The request line and fixed headers, built once by the caller and reused."""
        target = url if self._absolute else _path_of(url)
        lines = [f"{method} {target} HTTP/1.1", f"Host: {self.origin.authority}"]
        lines += [f"{k}: {v}" for k, v in headers.items()]
        if self._absolute and self.proxy_auth:
            lines.append(f"Proxy-Authorization: {self.proxy_auth}")
        return ("\r\n".join(lines) + "\r\n").encode("latin-1")

    def send(self, head: bytes, body: bytes) -> Response:
        """Send one request and read its head. A stale pooled connection is replaced."""
        message = b"%sContent-Length: %d\r\n\r\n%s" % (head, len(body), body)
        while True:
            conn = self._idle_connection() or self._connect()
            try:
                conn.sock.settimeout(self.head_timeout)
                conn.sock.sendall(message)
                return self._read_head(conn)
            except Broken:
                conn.close()
                if conn.reused:
                    continue  # the server had closed it while idle: try a fresh one
                raise
            except TimeoutError:
                conn.close()
                raise WireTimeout("no answer from the model server in time") from None
            except OSError as exc:
                conn.close()
                if conn.reused:
                    continue
                raise Broken(f"sending failed: {exc}") from None
            except BaseException:
                conn.close()
                raise

    def _read_head(self, conn: Connection) -> Response:
        # 100 Continue and friends come before the real head: skip a few, in a loop.
        for _ in range(MAX_INTERIM + 1):
            status, headers = _parse_head(_head_bytes(conn))
            if status == 101:
                raise ProtocolError("unexpected 101 Switching Protocols")
            if not 100 <= status < 200:
                return Response(status, headers, conn, self)
        raise ProtocolError(f"more than {MAX_INTERIM} interim (1xx) responses")

    def _connect(self) -> Connection:
        target = self.proxy or self.origin
        try:
            sock = socket.create_connection((target.host, target.port), self.connect_timeout)
        except TimeoutError:
            raise WireTimeout(f"connecting to {target.host}:{target.port} timed out") from None
        except OSError as exc:
            raise ConnectFailed(f"cannot connect to {target.host}:{target.port}: {exc}") from None
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
            if self.proxy is not None and self._ssl is not None:
                self._tunnel(sock)
            if self._ssl is not None:
                sock.settimeout(self.connect_timeout)
                sock = self._ssl.wrap_socket(sock, server_hostname=self.origin.host)
        except TimeoutError:
            sock.close()
            raise WireTimeout("TLS or proxy set-up timed out") from None
        except (OSError, ssl.SSLError) as exc:
            sock.close()
            raise ConnectFailed(f"cannot set up the connection: {exc}") from None
        except BaseException:
            sock.close()  # the proxy refused the tunnel, or the greenlet was killed
            raise
        return Connection(sock)

    def _tunnel(self, sock: socket.socket) -> None:
        authority = f"{self.origin.host}:{self.origin.port}"
        lines = [f"CONNECT {authority} HTTP/1.1", f"Host: {authority}"]
        if self.proxy_auth:
            lines.append(f"Proxy-Authorization: {self.proxy_auth}")
        sock.settimeout(self.connect_timeout)
        sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = sock.recv(4096)
            if not chunk or len(data) > MAX_HEAD:
                raise ConnectFailed("the proxy closed the tunnel")
            data += chunk
        status = data.split(b" ", 2)[1:2]
        if status != [b"200"]:
            raise ConnectFailed(f"the proxy refused the tunnel: {data.splitlines()[0][:80]!r}")

    def _idle_connection(self) -> Connection | None:
        while self._idle:
            conn = self._idle.pop()
            try:
                # Readable while idle means closed by the server (or stray bytes);
                # long idle, a NAT or balancer may have dropped it without a word.
                fresh = time.monotonic() - conn.idle_since < MAX_IDLE_AGE
                if fresh and not readable_now(conn.sock):
                    return conn
            except (OSError, ValueError):
                pass
            conn.close()
        return None

    def put(self, conn: Connection) -> None:
        if conn.buffer or len(self._idle) >= self.max_idle:
            conn.close()  # stray bytes after a body: never reuse
            return
        conn.reused = True
        conn.idle_since = time.monotonic()
        self._idle.append(conn)

    def clear(self) -> None:
        while self._idle:
            self._idle.pop().close()


def _head_bytes(conn: Connection) -> bytes:
    """The next head from `conn`, without its blank line; what follows stays buffered."""
    data = conn.buffer
    conn.buffer = b""
    scanned = 0
    while True:
        end = data.find(b"\r\n\r\n", scanned)
        if end >= 0:
            break
        if len(data) > MAX_HEAD:
            raise ProtocolError("response head too large")
        scanned = max(0, len(data) - 3)  # only new bytes can complete the blank line
        chunk = conn.sock.recv(RECV)
        if not chunk:
            raise Broken("the connection closed before the answer")
        data += chunk
    if end > MAX_HEAD:
        raise ProtocolError("response head too large")
    conn.buffer = data[end + 4 :]
    return data[:end]


def _parse_head(raw: bytes) -> tuple[int, dict[str, str]]:
    """Status and headers (names lower-cased, repeats joined with ", ")."""
    crlf = raw.count(b"\r\n")
    if raw.count(b"\r") != crlf or raw.count(b"\n") != crlf or b"\0" in raw:
        raise ProtocolError("a bare CR, LF or NUL in the response head")
    lines = raw.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ", 2)
    if (
        len(parts) < 2
        or parts[0] not in ("HTTP/1.1", "HTTP/1.0")
        or not _STATUS.fullmatch(parts[1])
    ):
        raise ProtocolError(f"bad status line: {lines[0][:80]!r}")
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        # No colon, a space before it, or a folded line: RFC 9112 says reject.
        if not sep or not _TOKEN.fullmatch(name):
            raise ProtocolError(f"bad header line: {line[:80]!r}")
        key = name.lower()
        value = value.strip(" \t")
        headers[key] = f"{headers[key]}, {value}" if key in headers else value
    return int(parts[1]), headers


def _content_length(raw: str) -> int:
    """1*DIGIT; a repeated header (joined with ", ") only if every copy agrees."""
    values = {v.strip(" \t") for v in raw.split(",")}
    if len(values) != 1:
        raise ProtocolError(f"conflicting content-length: {raw!r:.40}")
    value = values.pop()
    if not _DIGITS.fullmatch(value):
        raise ProtocolError(f"bad content-length: {raw!r:.40}")
    return int(value)


def _path_of(url: str) -> str:
    parts = urllib.parse.urlsplit(url)
    return (parts.path or "/") + (f"?{parts.query}" if parts.query else "")


def _basic_auth(url: str) -> str | None:
    parts = urllib.parse.urlsplit(url)
    if parts.username is None:
        return None
    raw = f"{urllib.parse.unquote(parts.username)}:{urllib.parse.unquote(parts.password or '')}"
    return "Basic " + base64.b64encode(raw.encode()).decode()
