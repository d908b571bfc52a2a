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
                    else:
                        conn.sendall(step)
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
