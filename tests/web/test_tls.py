"""The OpenAI path over TLS, as it runs against api.openai.com: through gunicorn
and gevent, to a fault-injecting upstream with a certificate made for the test,
directly and through an HTTP CONNECT proxy."""

from __future__ import annotations

import contextlib
import socket
import ssl
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.fake_upstream import FakeUpstream
from tests.helpers import MARGIN, TOKENS, leave_mid_stream, prompt, sse, text_of


@pytest.fixture(scope="module")
def tls_fake(certificate: tuple[Path, Path]) -> Iterator[FakeUpstream]:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(*certificate)
    fake = FakeUpstream(tls=context).start()
    yield fake
    fake.stop()


class ConnectProxy:
    """A forward proxy that only tunnels (CONNECT), like most corporate proxies."""

    def __init__(self) -> None:
        self.tunnels: list[str] = []
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._tunnel, args=(client,), daemon=True).start()

    def _tunnel(self, client: socket.socket) -> None:
        head = b""
        while b"\r\n\r\n" not in head:
            head += client.recv(4096)
        method, target, _ = head.split(b" ", 2)
        if method != b"CONNECT":
            client.sendall(b"HTTP/1.1 405 Method Not Allowed\r\nContent-Length: 0\r\n\r\n")
            client.close()
            return
        self.tunnels.append(target.decode())
        host, port = target.decode().rsplit(":", 1)
        upstream = socket.create_connection((host, int(port)))
        client.sendall(b"HTTP/1.1 200 Connection established\r\n\r\n")
        for a, b in ((client, upstream), (upstream, client)):
            threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:
            pass  # the other direction closed both
        finally:
            for s in (source, sink):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)
                s.close()

    def close(self) -> None:
        self.sock.close()


def test_streams_over_tls_with_bounds_and_cancel(
    serve: Any, tls_fake: FakeUpstream, certificate: tuple[Path, Path]
) -> None:
    tls_fake.reset()  # a module's upstream: count only this test's streams
    server = serve(OPENAI_BASE_URL=tls_fake.url, SSL_CERT_FILE=str(certificate[0]))
    response = requests.post(
        server.url + "/generate-code/", json={"prompt": prompt("id=tls")}, timeout=30
    )
    assert response.status_code == 200 and response.text == "".join(TOKENS)

    # Silence mid-answer: the idle bound interrupts a read inside TLS, keeps the text.
    status, events, elapsed = sse(server, "tokens=10 delay=0.01 stall_after=3 id=tls-stall")
    assert status == 200 and events[-1][1]["code"] == "idle_timeout"
    assert text_of(events) == "t0 t1 t2 "
    assert elapsed < 1.0 + MARGIN  # the idle bound is 1 s
    assert len(tls_fake.wait_closed(2)) == 2 and tls_fake.open_streams == 0

    # A client that leaves mid-stream stops the upstream within a second. The close
    # looked at is that stream's own: the stalled one's, earlier, would pass as well.
    gone_at = leave_mid_stream(server, "tls-gone", reads=1)
    closed = tls_fake.wait_closed(3, timeout=3)
    assert len(closed) == 3, closed
    assert closed[-1].request_id == tls_fake.records_for("id=tls-gone")[0].number
    assert closed[-1].how == "client_closed" and 0 <= closed[-1].at - gone_at < 1.0


def test_a_certificate_the_machine_does_not_trust_is_refused(
    serve: Any, tls_fake: FakeUpstream
) -> None:
    server = serve(OPENAI_BASE_URL=tls_fake.url)  # the system store, not the test's cert
    response = requests.post(
        server.url + "/generate-code/", json={"prompt": prompt("id=untrusted")}, timeout=30
    )
    assert response.status_code == 503
    assert response.json()["error"]["code"] == "upstream_unreachable"
    assert not tls_fake.records_for("id=untrusted")


def test_https_through_a_connect_proxy(
    serve: Any, tls_fake: FakeUpstream, certificate: tuple[Path, Path]
) -> None:
    proxy = ConnectProxy()
    try:
        server = serve(
            OPENAI_BASE_URL=tls_fake.url,
            SSL_CERT_FILE=str(certificate[0]),
            UPSTREAM_PROXY=proxy.url,
        )
        response = requests.post(
            server.url + "/generate-code/", json={"prompt": prompt("id=tunnel")}, timeout=30
        )
        assert response.status_code == 200 and response.text == "".join(TOKENS)
        port = tls_fake.url.split(":")[2].split("/")[0]
        assert proxy.tunnels == [f"127.0.0.1:{port}"]
    finally:
        proxy.close()
