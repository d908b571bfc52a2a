"""webapp/web/fastio.py: the bytes it puts on the wire, pinned, and its version guard."""

from __future__ import annotations

from typing import Any

import pytest
from gunicorn.config import Config as GunicornConfig

from webapp.web import fastio


class Capture:
    """A socket that records each sendall: one entry per system call the server makes."""

    def __init__(self) -> None:
        self.calls: list[bytes] = []

    def sendall(self, data: Any) -> None:
        self.calls.append(bytes(data))


class Request:
    version = (1, 1)
    method = "GET"
    headers: list[tuple[str, str]] = []  # noqa: RUF012 - read-only here

    def should_close(self) -> bool:
        return False


def test_the_head_goes_out_with_the_first_chunk() -> None:
    sock = Capture()
    response = fastio.HeadWithFirstChunk(Request(), sock, GunicornConfig())
    response.start_response("200 OK", [("Content-Type", "text/plain")])
    response.send_headers()  # gunicorn calls this before the first write
    assert sock.calls == []  # held back until there is a body byte to go with it
    response.write(b"hello")
    response.write(b"world")
    response.close()
    head, first = sock.calls[0].split(b"\r\n\r\n", 1)
    assert head.startswith(b"HTTP/1.1 200 OK\r\n")
    assert b"Transfer-Encoding: chunked" in head and b"Content-Type: text/plain" in head
    assert first == b"5\r\nhello\r\n"  # head and first chunk: one system call
    assert sock.calls[1:] == [b"5\r\nworld\r\n", b"0\r\n\r\n"]


def test_a_response_with_no_body_still_sends_its_head_once() -> None:
    sock = Capture()
    response = fastio.HeadWithFirstChunk(Request(), sock, GunicornConfig())
    response.start_response("204 No Content", [])
    response.close()
    assert len(sock.calls) == 1 and sock.calls[0].startswith(b"HTTP/1.1 204 No Content\r\n")
    assert sock.calls[0].endswith(b"\r\n\r\n")


def test_sendall_sends_everything_in_order() -> None:
    from gevent import socket as gsocket

    a, b = gsocket.socketpair()
    try:
        payload = bytes(range(256)) * 4096  # 1 MiB: more than one plain send takes
        reader_got = bytearray()

        def drain() -> None:
            while len(reader_got) < len(payload):
                reader_got.extend(b.recv(65536))

        import gevent

        reader = gevent.spawn(drain)
        fastio._sendall(a, payload)
        reader.join(timeout=10)
        assert bytes(reader_got) == payload
    finally:
        a.close()
        b.close()


def test_these_versions_are_the_ones_the_patches_were_written_for() -> None:
    assert fastio.compatible() == []


def test_other_versions_leave_the_server_as_shipped(monkeypatch: pytest.MonkeyPatch) -> None:
    from gunicorn.http import unreader, wsgi

    monkeypatch.setattr(fastio.gunicorn, "__version__", "99.0.0")
    before = (wsgi.Response, unreader.SocketUnreader.chunk)
    fastio.install()
    assert (wsgi.Response, unreader.SocketUnreader.chunk) == before
