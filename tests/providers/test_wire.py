"""The small HTTP/1.1 client under the OpenAI provider, against a real socket server.

The server plays scripted bytes: split at awkward places, slowly, or wrong.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator

import pytest

from webapp.providers import wire

HEAD = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n"


def chunked(*parts: bytes, trailer: bytes = b"") -> bytes:
    return b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in parts) + b"0\r\n" + trailer + b"\r\n"


class Server:
    """Answers each request on a connection with the next script: a list of
    byte strings (sent one by one, TCP_NODELAY) or floats (sleeps)."""

    def __init__(self, scripts: list[list[bytes | float]], close_after: bool = False) -> None:
        self.scripts = list(scripts)
        self.close_after = close_after
        self.connections = 0
        self.requests: list[bytes] = []
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.connections += 1
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        buffer = b""
        with conn:
            while self.scripts:
                while b"\r\n\r\n" not in buffer:
                    data = conn.recv(65536)
                    if not data:
                        return
                    buffer += data
                head, _, rest = buffer.partition(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n"):
                    if line.lower().startswith(b"content-length:"):
                        length = int(line.split(b":")[1])
                while len(rest) < length:
                    rest += conn.recv(65536)
                self.requests.append(head + b"\r\n\r\n" + rest[:length])
                buffer = rest[length:]
                for step in self.scripts.pop(0):
                    if isinstance(step, float):
                        time.sleep(step)
                        continue
                    try:
                        conn.sendall(step)
                    except OSError:
                        return  # the client gave up on this answer (a protocol error)
                if self.close_after:
                    return

    def close(self) -> None:
        self.sock.close()


POOLS: list[wire.Pool] = []


@pytest.fixture()
def make_server() -> Iterator[type[Server]]:
    made: list[Server] = []

    def factory(*args: object, **kwargs: object) -> Server:
        server = Server(*args, **kwargs)  # type: ignore[arg-type]
        made.append(server)
        return server

    yield factory  # type: ignore[misc]
    while POOLS:
        POOLS.pop().clear()  # idle keep-alive connections
    for server in made:
        server.close()


def pool_for(server: Server) -> wire.Pool:
    pool = wire.Pool(f"http://127.0.0.1:{server.port}/v1/chat/completions", head_timeout=5)
    POOLS.append(pool)
    return pool


def send(pool: wire.Pool) -> wire.Response:
    head = pool.request_head("POST", pool_url(pool), {"Content-Type": "application/json"})
    return pool.send(head, b"{}")


def pool_url(pool: wire.Pool) -> str:
    return f"http://127.0.0.1:{pool.origin.port}/v1/chat/completions"


def body_of(response: wire.Response) -> bytes:
    out = b""
    while True:
        data = response.read(5)
        assert data is not None
        if not data:
            return out
        out += data


def test_a_chunked_body_split_at_every_byte_decodes_whole(make_server: type[Server]) -> None:
    body = chunked(b"data: one\n\n", b"data: two\n\n", b"x" * 300)
    expected = b"data: one\n\ndata: two\n\n" + b"x" * 300
    whole = HEAD + body
    start = len(HEAD)
    scripts: list[list[bytes | float]] = [
        [whole[:i], 0.002, whole[i:]] for i in range(start + 1, len(whole))
    ]
    server = make_server(scripts)
    pool = pool_for(server)
    for _ in scripts:
        assert body_of(send(pool)) == expected
    # Every answer completed cleanly, so one keep-alive connection served them all.
    assert server.connections == 1


def test_one_byte_at_a_time_with_extensions_and_trailers(make_server: type[Server]) -> None:
    raw = HEAD + b"5;name=value\r\nhello\r\n1\r\n!\r\n" + b"0\r\nX-Trailer: yes\r\n\r\n"
    server = make_server([[bytes([b]) for b in raw]])
    assert body_of(send(pool_for(server))) == b"hello!"


def test_content_length_and_close_delimited_bodies(make_server: type[Server]) -> None:
    sized = b"HTTP/1.1 429 Too Many\r\nContent-Length: 5\r\nRetry-After: 2\r\n\r\nslow!"
    server = make_server([[sized], [b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n", b"abc"]])
    server.close_after = False
    pool = pool_for(server)
    response = send(pool)
    assert (response.status, response.headers["retry-after"]) == (429, "2")
    assert response.read_all() == b"slow!"
    server.close_after = True  # the second answer ends when the server closes
    assert body_of(send(pool)) == b"abc"


def test_a_read_that_times_out_loses_nothing(make_server: type[Server]) -> None:
    server = make_server([[HEAD + b"4\r\nab", 0.3, b"cd\r\n", 0.3, b"0\r\n\r\n"]])
    response = send(pool_for(server))
    got = response.read(2)
    assert got == b"ab"
    assert response.read(0.05) is None  # silence: nothing lost, nothing invented
    assert response.read(2) == b"cd"
    assert response.read(0.05) is None
    assert response.read(2) == b""
    assert response.done


def test_a_pooled_connection_the_server_closed_is_replaced(make_server: type[Server]) -> None:
    ok = HEAD + chunked(b"hi")
    server = make_server([[ok], [ok]], close_after=True)
    pool = pool_for(server)
    assert body_of(send(pool)) == b"hi"
    time.sleep(0.1)  # the server has closed the idle keep-alive connection by now
    assert body_of(send(pool)) == b"hi"
    assert server.connections == 2


def test_a_body_cut_short_is_broken_not_complete(make_server: type[Server]) -> None:
    server = make_server([[HEAD + b"10\r\nonly part"]], close_after=True)
    response = send(pool_for(server))
    assert response.read(2) == b"only part"
    with pytest.raises(wire.Broken):
        response.read(2)


@pytest.mark.parametrize(
    "raw",
    [
        HEAD + b"zz\r\nhello\r\n0\r\n\r\n",  # not hex
        HEAD + b"2\r\nhello\r\n0\r\n\r\n",  # data longer than its size
        b"SPDY/9 200 OK\r\n\r\n",  # not HTTP/1.x
    ],
)
def test_bad_framing_is_a_protocol_error(make_server: type[Server], raw: bytes) -> None:
    server = make_server([[raw]], close_after=True)
    with pytest.raises(wire.ProtocolError):
        body_of(send(pool_for(server)))


def test_nothing_listening_is_connect_failed() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    pool = wire.Pool(f"http://127.0.0.1:{port}/v1/chat/completions")
    with pytest.raises(wire.ConnectFailed):
        send(pool)


def test_the_request_carries_host_headers_and_length(make_server: type[Server]) -> None:
    server = make_server([[HEAD + chunked(b"x")]])
    pool = pool_for(server)
    head = pool.request_head("POST", pool_url(pool), {"Authorization": "Bearer k"})
    body_of(pool.send(head, b'{"a":1}'))
    request = server.requests[0]
    assert request.startswith(b"POST /v1/chat/completions HTTP/1.1\r\n")
    assert f"Host: 127.0.0.1:{server.port}\r\n".encode() in request
    assert b"Authorization: Bearer k\r\n" in request
    assert request.endswith(b'Content-Length: 7\r\n\r\n{"a":1}')


def test_an_empty_body_frees_its_connection_for_the_next_request(
    make_server: type[Server],
) -> None:
    empty = b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"
    no_content = b"HTTP/1.1 204 No Content\r\n\r\n"  # no length: still no body
    server = make_server([[empty], [no_content], [HEAD + chunked(b"ok")]])
    pool = pool_for(server)
    assert body_of(send(pool)) == b""
    started = time.monotonic()
    assert send(pool).read_all() == b""
    assert time.monotonic() - started < 1
    assert body_of(send(pool)) == b"ok"
    assert server.connections == 1


def test_a_connection_idle_too_long_is_not_reused(
    make_server: type[Server], monkeypatch: pytest.MonkeyPatch
) -> None:
    ok = HEAD + chunked(b"hi")
    server = make_server([[ok], [ok]])
    pool = pool_for(server)
    assert body_of(send(pool)) == b"hi"
    monkeypatch.setattr(wire, "MAX_IDLE_AGE", 0.0)  # as if a balancer forgot it
    assert body_of(send(pool)) == b"hi"
    assert server.connections == 2


# -- strict HTTP/1.1: what Python's int() or a lenient split would let through ------


def answer_with_size(size: bytes) -> bytes:
    return HEAD + size + b"\r\nhello\r\n0\r\n\r\n"


@pytest.mark.parametrize(
    "size",
    [
        b"0x5",  # int(_, 16) takes a 0x prefix
        b"5_0",  # ... and underscores
        b" +5 ",  # ... and a sign and spaces
        b"-1",
        b"",
        b"5 ",  # spaces only before an extension
        b"0" * 16 + b"5",  # more than 16 hex digits
        b"\xd9\xa5",  # a non-ASCII digit
    ],
)
def test_a_chunk_size_must_be_plain_hex_digits(make_server: type[Server], size: bytes) -> None:
    server = make_server([[answer_with_size(size)]], close_after=True)
    with pytest.raises(wire.ProtocolError):
        body_of(send(pool_for(server)))


@pytest.mark.parametrize("size", [b"5", b"05", b"0000000000000005", b"5;a=b", b"5 ;a=b", b"5\t;x"])
def test_valid_chunk_sizes_still_decode(make_server: type[Server], size: bytes) -> None:
    server = make_server([[answer_with_size(size)]])
    assert body_of(send(pool_for(server))) == b"hello"


def sized(length: str, extra: bytes = b"") -> bytes:
    return b"HTTP/1.1 200 OK\r\nContent-Length: %s\r\n%s\r\nhello" % (length.encode(), extra)


@pytest.mark.parametrize(
    "raw",
    [
        sized("-3"),
        sized("1_0"),
        sized("+5"),
        sized("5x"),
        sized(""),
        sized("0x5"),
        sized("5", b"Content-Length: 6\r\n"),  # two that disagree
        sized("5, 6"),
        sized("9" * 40),  # absurd
    ],
)
def test_a_content_length_must_be_plain_digits_and_agree(
    make_server: type[Server], raw: bytes
) -> None:
    server = make_server([[raw]], close_after=True)
    with pytest.raises(wire.ProtocolError):
        body_of(send(pool_for(server)))


def test_a_repeated_content_length_that_agrees_is_fine(make_server: type[Server]) -> None:
    server = make_server([[sized("5", b"Content-Length: 5\r\n")]])
    assert body_of(send(pool_for(server))) == b"hello"


@pytest.mark.parametrize(
    "headers",
    [
        b"Transfer-Encoding: chunked\r\nContent-Length: 5\r\n",  # which frames the body?
        b"Content-Length: 5\r\nTransfer-Encoding: chunked\r\n",
        b"Transfer-Encoding: gzip, chunked\r\n",
        b"Transfer-Encoding: identity\r\n",
        b"Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n",
        b"Transfer-Encoding: xchunked\r\n",
    ],
)
def test_only_plain_chunked_transfer_encoding_is_accepted(
    make_server: type[Server], headers: bytes
) -> None:
    raw = b"HTTP/1.1 200 OK\r\n" + headers + b"\r\n" + chunked(b"hello")
    server = make_server([[raw]], close_after=True)
    with pytest.raises(wire.ProtocolError):
        body_of(send(pool_for(server)))


CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"


def test_a_few_interim_heads_are_skipped(make_server: type[Server]) -> None:
    early_hints = b"HTTP/1.1 103 Early Hints\r\nLink: </x>\r\n\r\n"
    server = make_server([[CONTINUE * 9 + early_hints + HEAD + chunked(b"ok")]])
    response = send(pool_for(server))
    assert response.status == 200
    assert body_of(response) == b"ok"


@pytest.mark.parametrize("count", [11, 5000])
def test_endless_interim_heads_are_a_protocol_error(make_server: type[Server], count: int) -> None:
    # 5,000 used to recurse once per head: RecursionError, not a clean failure.
    server = make_server([[CONTINUE * count + HEAD + chunked(b"ok")]], close_after=True)
    with pytest.raises(wire.ProtocolError):
        send(pool_for(server))


def test_a_101_without_an_upgrade_request_is_a_protocol_error(make_server: type[Server]) -> None:
    raw = b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: h2c\r\n\r\n" + HEAD + chunked(b"ok")
    server = make_server([[raw]], close_after=True)
    with pytest.raises(wire.ProtocolError):
        send(pool_for(server))


@pytest.mark.parametrize(
    "line",
    [
        b"X-No-Colon",
        b"Content-Length : 5",  # whitespace before the colon
        b"Content-Length\t: 5",
        b" folded: continuation",  # obsolete line folding
        b": no name",
        b"Bad@Name: 1",
        b"X-A: 1\nX-B: 2",  # a bare LF: where does the line end?
        b"X-A: 1\rX-B: 2",
        b"X-A: a\0b",
    ],
)
def test_a_malformed_header_line_is_a_protocol_error(
    make_server: type[Server], line: bytes
) -> None:
    raw = HEAD[:-2] + line + b"\r\n\r\n" + chunked(b"hello")
    server = make_server([[raw]], close_after=True)
    with pytest.raises(wire.ProtocolError):
        send(pool_for(server))


@pytest.mark.parametrize("status", [b"2000", b"+20", b"2_0", b"abc", b"20"])
def test_a_status_code_must_be_three_digits(make_server: type[Server], status: bytes) -> None:
    server = make_server([[b"HTTP/1.1 " + status + b" OK\r\nContent-Length: 0\r\n\r\n"]])
    with pytest.raises(wire.ProtocolError):
        send(pool_for(server))


def test_endless_trailers_are_a_protocol_error(make_server: type[Server]) -> None:
    trailers = b"X-T: " + b"y" * 1000 + b"\r\n"
    raw = HEAD + b"2\r\nok\r\n0\r\n" + trailers * 200 + b"\r\n"
    server = make_server([[raw]], close_after=True)
    response = send(pool_for(server))
    with pytest.raises(wire.ProtocolError):
        body_of(response)


def test_an_endless_error_body_is_cut_at_the_limit(make_server: type[Server]) -> None:
    # A close-delimited error body that goes on: read_all keeps `limit` bytes and
    # stops there, rather than reading (and waiting) until the body's end.
    head = b"HTTP/1.1 500 Oops\r\nContent-Type: text/plain\r\n\r\n"
    server = make_server([[head, b"e" * 200_000, 30.0, b"never"]], close_after=True)
    response = send(pool_for(server))
    started = time.monotonic()
    assert response.read_all(limit=1000, timeout=20) == b"e" * 1000
    assert time.monotonic() - started < 10  # not the server's 30 s, nor the 20 s timeout
