"""Hostile or careless clients, and a flooding upstream, against the app served for real.

Each case here once held a worker, exhausted its memory, cut a body silently or
answered 500 with a traceback; each now ends cleanly with a clear status.
"""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from flask import Flask

from tests.conftest import Server
from tests.fake_upstream import FakeUpstream
from tests.helpers import memory, prompt, worker_pid
from webapp.relay.events import Done
from webapp.relay.formats import numbered
from webapp.relay.generation import CHARS_PER_TOKEN_BOUND
from webapp.web.guard import Guard
from webapp.web.ui import _with_blocks

# -- a flooding upstream ---------------------------------------------------------------


def test_a_flooding_upstream_is_cut_at_the_answer_bound(server: Server, fake: FakeUpstream) -> None:
    before = memory(worker_pid(server), "VmRSS")
    started = time.monotonic()
    response = requests.post(
        server.url + "/generate-code/",
        json={"prompt": prompt("flood=200 id=flood"), "max_tokens": 100},
        headers={"Accept": "application/x-ndjson"},
        timeout=30,
    )
    events = [json.loads(line) for line in response.text.splitlines()]
    text = "".join(e["text"] for e in events if e["type"] == "delta")
    assert len(text) == 100 * CHARS_PER_TOKEN_BOUND  # exactly up to the bound, then the error
    assert events[-1]["type"] == "error" and events[-1]["code"] == "answer_too_large"
    closed = fake.wait_closed(1, timeout=3)
    assert closed and closed[0].how == "client_closed"  # the app stopped reading the flood
    assert time.monotonic() - started < 6  # well within TOTAL_TIMEOUT (6 s in tests)
    grown = memory(worker_pid(server), "VmRSS") - before
    assert grown < 100 << 20  # 200 MB offered, far less held

    whole = requests.post(
        server.url + "/generate-code/",
        json={"prompt": prompt("flood=50"), "max_tokens": 10, "stream": False},
        timeout=30,
    )
    assert whole.status_code == 502 and whole.json()["error"]["code"] == "answer_too_large"


def test_the_hard_cap_holds_whatever_max_tokens_says(serve: Any, fake: FakeUpstream) -> None:
    server = serve(MAX_ANSWER_CHARS="5000")
    response = requests.post(
        server.url + "/generate-code/",
        json={"prompt": prompt("flood=20"), "max_tokens": 500},
        headers={"Accept": "application/x-ndjson"},
        timeout=30,
    )
    events = [json.loads(line) for line in response.text.splitlines()]
    assert sum(len(e["text"]) for e in events if e["type"] == "delta") == 5000
    assert events[-1]["code"] == "answer_too_large"


# -- request bodies ------------------------------------------------------------------


def chunked(body: bytes, size: int = 1000) -> Iterator[bytes]:
    for start in range(0, len(body), size):
        yield body[start : start + size]


def test_a_chunked_body_over_the_limit_is_413_not_cut(serve: Any, fake: FakeUpstream) -> None:
    server = serve(MAX_BODY_BYTES="2000")
    big = json.dumps({"prompt": "x" * 5000}).encode()
    response = requests.post(
        server.url + "/generate-code/",
        data=chunked(big),  # a generator: requests sends Transfer-Encoding: chunked
        headers={"Content-Type": "application/json"},
        timeout=10,
    )
    assert response.status_code == 413
    assert response.json()["error"]["code"] == "body_too_large"
    small = json.dumps({"prompt": prompt(), "stream": False}).encode()
    fine = requests.post(
        server.url + "/generate-code/",
        data=chunked(small, 7),
        headers={"Content-Type": "application/json"},
        timeout=10,
    )
    assert fine.status_code == 200 and fine.json()["text"]


def test_deep_json_on_the_page_route_is_a_400(app: Flask) -> None:
    client = app.test_client()
    page = client.get("/").get_data(as_text=True)
    token = page.split('name="csrf_token" type="hidden" value="')[1].split('"')[0]
    response = client.post(
        "/ui/stream",
        data="[" * 30_000 + "]" * 30_000,
        headers={
            "X-CSRFToken": token,
            "Content-Type": "application/json",
            "Accept": "application/x-ndjson, application/json",
        },
    )
    assert response.status_code == 400
    assert response.get_json()["error"]["code"] == "invalid_json"


# -- slow clients ------------------------------------------------------------------


def closed_within(sock: socket.socket, seconds: float) -> tuple[bool, bytes]:
    """Read until the server closes; (closed in time, what it sent)."""
    sock.settimeout(0.2)
    received = b""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            data = sock.recv(65536)
        except TimeoutError:
            continue
        except ConnectionResetError:
            return True, received
        if not data:
            return True, received
        received += data
    return False, received


def test_slow_clients_are_closed_after_the_read_timeout(serve: Any, fake: FakeUpstream) -> None:
    server = serve(CLIENT_READ_TIMEOUT="1")
    address = ("127.0.0.1", server.port)
    # Half a request head, then nothing.
    with socket.create_connection(address) as half_head:
        half_head.sendall(b"POST /generate-code/ HTTP/1.1\r\nHost: x\r\n")
        closed, _ = closed_within(half_head, 4)
        assert closed
    # A head that drips in a byte at a time, never finishing within the bound.
    with socket.create_connection(address) as drip:
        drip.settimeout(0.2)
        started = time.monotonic()
        try:
            for byte in b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"a" * 100:
                drip.sendall(bytes([byte]))
                time.sleep(0.1)
                if time.monotonic() - started > 4:
                    break
        except OSError:
            pass  # closed under our feet: what we want
        closed, _ = closed_within(drip, 2)
        assert closed and time.monotonic() - started < 4
    # A whole head, then half the body it announced.
    with socket.create_connection(address) as half_body:
        half_body.sendall(
            b"POST /generate-code/ HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Content-Length: 100\r\n\r\n" + b'{"prompt": "'
        )
        closed, sent = closed_within(half_body, 4)
        assert closed and sent.startswith(b"HTTP/1.1 408")
    # An idle kept-alive connection is not a slow client: it keeps gunicorn's own bound.
    with socket.create_connection(address) as idle:
        for _ in range(2):
            idle.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            idle.settimeout(5)
            assert idle.recv(65536).startswith(b"HTTP/1.1 200")
            time.sleep(1.5)
    assert requests.get(server.url + "/healthz", timeout=5).ok


# -- the page's code blocks --------------------------------------------------------


class _Answer:
    def __init__(self) -> None:
        self.parts: list[str] = []

    def text(self) -> str:
        return "".join(self.parts)


def test_a_bare_opening_fence_is_not_a_block_until_it_closes(app: Flask) -> None:
    answer = _Answer()

    def events() -> Iterator[Any]:
        for piece in ["Here:\n", "```\n", "print(1)\n", "print(2)\n", "```\n", "Done."]:
            answer.parts.append(piece)
            yield piece
        yield Done("stop", {}, [], "r", {})

    seen = []
    with app.app_context():
        for _, event in _with_blocks(numbered(events()), answer.text):
            seen.append(event)
    blocks = [(i, e) for i, e in enumerate(seen) if isinstance(e, dict) and e["type"] == "block"]
    assert len(blocks) == 1
    at, block = blocks[0]
    assert seen[at - 1] == "```\n"  # sent as soon as the closing fence came, not at the end
    assert "print" in block["html"] and "2" in block["html"]


# -- bookkeeping -------------------------------------------------------------------


def test_the_stream_counter_forgets_clients_at_zero(app: Flask) -> None:
    from webapp.config import Config
    from webapp.errors import TooManyRequests

    guard = Guard(Config.from_env({"MAX_CONCURRENT_STREAMS_PER_CLIENT": "2"}))
    for client in range(100):
        held = [guard.acquire_stream(f"ip:10.0.0.{client}") for _ in range(2)]
        # Counted while held (a counter that counted nothing would forget nothing):
        with pytest.raises(TooManyRequests):
            guard.acquire_stream(f"ip:10.0.0.{client}")
        assert len(guard.streams) == 1
        for slot in held:
            guard.release_stream(slot)
    assert len(guard.streams) == 0


def test_an_operators_metrics_folder_loses_only_our_files(serve: Any, tmp_path: Path) -> None:
    keep = tmp_path / "keep.txt"
    keep.write_text("the operator's")
    stale = tmp_path / "counter_99999.db"
    stale.write_bytes(b"old samples")
    server = serve(PROMETHEUS_MULTIPROC_DIR=str(tmp_path))
    assert requests.get(server.url + "/metrics", timeout=5).ok
    assert keep.read_text() == "the operator's"
    assert not stale.exists()


# -- round three: the history's new surface ---------------------------------------------


def keyed_app(**overrides: str) -> Flask:
    from tests.conftest import TEST_SETTINGS
    from webapp import create_app

    return create_app({**TEST_SETTINGS, **overrides})


def test_unicode_digits_are_a_400_that_names_the_field(client: Any) -> None:
    """`str.isdigit` takes "²", which `int` refuses: that was a 500."""
    for url, field in (
        ("/answers?limit=%C2%B2", "limit"),
        ("/answers/someid/events?after=%C2%B2", "after"),
        ("/ui/answers/someid/events?after=%C2%B2", "after"),
    ):
        response = client.get(url)
        assert response.status_code == 400, url
        assert f"{field}: must be a whole number" in response.get_data(as_text=True), url
    by_header = client.get("/answers/someid/events", headers={"Last-Event-ID": "²"})
    assert by_header.status_code == 400
    assert by_header.get_json()["error"]["message"].startswith("Last-Event-ID:")


def test_metrics_need_a_token_when_keys_are_set() -> None:
    keyed = keyed_app(API_KEYS="sk-live-one", METRICS_TOKEN="scrape-me").test_client()
    refused = keyed.get("/metrics")
    assert refused.status_code == 401
    assert refused.get_json()["error"]["code"] == "metrics_token_required"
    assert "codegen_" not in refused.get_data(as_text=True)
    wrong = keyed.get("/metrics", headers={"Authorization": "Bearer nope"})
    assert wrong.status_code == 401
    for token in ("scrape-me", "sk-live-one"):
        scraped = keyed.get("/metrics", headers={"Authorization": f"Bearer {token}"})
        assert scraped.status_code == 200 and "codegen_requests_total" in scraped.get_data(
            as_text=True
        )
    # A token alone protects them too; with neither they stay open (a private network).
    token_only = keyed_app(METRICS_TOKEN="scrape-me").test_client()
    assert token_only.get("/metrics").status_code == 401
    assert keyed_app().test_client().get("/metrics").status_code == 200


def test_healthz_shows_only_scheme_host_port_and_path_of_the_upstream() -> None:
    url = "https://user:pw@llm.example:8443/v1/?api-key=SECRET-QUERY#SECRET-FRAGMENT"
    body = keyed_app(OPENAI_BASE_URL=url).test_client().get("/healthz").get_json()
    assert body["base_url"] == "https://llm.example:8443/v1/"
    assert "SECRET" not in json.dumps(body) and "pw" not in json.dumps(body)


def test_a_flood_of_stops_is_limited_apart_from_the_history(client: Any) -> None:
    flooded = keyed_app(STOP_RATE_LIMIT="3/minute", HISTORY_RATE_LIMIT="2/minute").test_client()
    statuses = [flooded.post("/answers/nosuchanswer/cancel").status_code for _ in range(5)]
    assert statuses == [404, 404, 404, 429, 429]
    # The history's own window was not used up by the Stops.
    assert flooded.get("/answers").status_code == 200


def test_a_cross_site_change_to_the_history_is_refused(client: Any, fake: FakeUpstream) -> None:
    """The /answers routes take the page's cookie: a change from another site (a
    form or fetch on evil.example, which the browser sends the cookie with) is a
    403; the page's own requests and scripts holding their cookie still work."""
    started = client.post("/generate-code/", json={"prompt": prompt()})
    answer_id = started.headers["X-Answer-ID"]
    share = f"/answers/{answer_id}/share"
    for headers in (
        {"Origin": "https://evil.example"},
        {"Origin": "null"},
        {"Sec-Fetch-Site": "cross-site", "Origin": "https://evil.example"},
        {"Sec-Fetch-Site": "same-site"},
    ):
        refused = client.post(share, headers=headers)
        assert refused.status_code == 403, headers
        assert refused.get_json()["error"]["code"] == "cross_site_request"
    assert client.get(f"/answers/{answer_id}").get_json()["shared"] is False
    assert client.delete(share, headers={"Origin": "https://evil.example"}).status_code == 403
    assert (
        client.delete(
            f"/answers/{answer_id}", headers={"Origin": "https://evil.example"}
        ).status_code
        == 403
    )
    page = client.post(
        share, headers={"Sec-Fetch-Site": "same-origin", "Origin": "http://localhost"}
    )
    assert page.status_code == 200
    script = client.delete(share)  # no Origin, no Sec-Fetch-Site: a script with its cookie
    assert script.status_code == 204


def test_the_pages_stop_works_under_api_keys(serve: Any, fake: FakeUpstream) -> None:
    """The page's Stop posts to /answers/<id>/cancel with its cookie: under API_KEYS it
    was a 401 and the answer ran on."""
    from tests.helpers import csrf_token_of

    server = serve(API_KEYS="sk-live-one")
    visitor = requests.Session()
    token = csrf_token_of(visitor.get(server.url + "/signin").text)
    signed = visitor.post(server.url + "/signin", data={"csrf_token": token, "key": "sk-live-one"})
    token = csrf_token_of(signed.text)
    with visitor.post(
        server.url + "/ui/stream",
        json={"prompt": prompt("forever=1 delay=0.05"), "resumable": True},
        headers={"X-CSRFToken": token},
        stream=True,
        timeout=30,
    ) as running:
        assert running.status_code == 200
        answer_id = running.headers["X-Answer-ID"]
        lines = running.iter_lines()
        next(lines)
        stopped = visitor.post(
            f"{server.url}/answers/{answer_id}/cancel",
            headers={"X-CSRFToken": token, "Origin": server.url, "Sec-Fetch-Site": "same-origin"},
        )
        assert stopped.status_code == 204, stopped.text
        tail = [json.loads(line) for line in lines if line]
    assert tail[-1]["type"] in ("done", "error")
    assert tail[-1].get("finish_reason", tail[-1].get("code")) == "cancelled"
    # A cross-site Stop with the same cookie is refused.
    assert (
        visitor.post(
            f"{server.url}/answers/{answer_id}/cancel", headers={"Origin": "https://evil.example"}
        ).status_code
        == 403
    )


def test_readers_count_against_the_clients_stream_bound(serve: Any, fake: FakeUpstream) -> None:
    server = serve(MAX_CONCURRENT_STREAMS_PER_CLIENT="3")
    with requests.post(
        server.url + "/generate-code/",
        json={"prompt": prompt("forever=1 delay=0.05"), "resumable": True},
        headers={"Accept": "text/event-stream"},
        stream=True,
        timeout=30,
    ) as answer:
        answer_id = answer.headers["X-Answer-ID"]
        cookies = answer.cookies
        readers = []
        try:
            for _ in range(3):
                reader = requests.get(
                    f"{server.url}/answers/{answer_id}/events",
                    cookies=cookies,
                    stream=True,
                    timeout=30,
                )
                readers.append(reader)
            statuses = [r.status_code for r in readers]
            assert statuses == [200, 200, 429]  # the answer itself holds the first slot
            assert readers[2].json()["error"]["code"] == "too_many_streams"
            page = requests.get(
                f"{server.url}/ui/answers/{answer_id}/events", cookies=cookies, timeout=30
            )
            assert page.status_code == 429
        finally:
            for reader in readers:
                if reader.status_code == 200:
                    reader.raw._fp.fp.raw._sock.shutdown(socket.SHUT_RDWR)  # the reader leaves
                reader.close()
        # A reader that left gives its slot back.
        deadline = time.monotonic() + 3
        while True:
            again = requests.get(
                f"{server.url}/answers/{answer_id}/events", cookies=cookies, stream=True, timeout=30
            )
            again.close()
            if again.status_code == 200 or time.monotonic() > deadline:
                break
            time.sleep(0.2)

        assert again.status_code == 200


def test_compare_is_bounded_in_lines_and_time_and_runs_in_a_child() -> None:
    """difflib took 9 s of the event loop on two 12,000-line versions (the same lines,
    evens then odds); GNU diff in a child takes a fraction of that, is waited on
    cooperatively under gevent, and is killed at its time bound."""
    from webapp.answers import exports

    lines = [f"line {i}" for i in range(12_000)]
    shuffled = lines[::2] + lines[1::2]
    diff = exports.unified_diff(lines, shuffled, "version 1", "version 2")
    assert [d.text for d in diff[:2]] == ["--- version 1", "+++ version 2"]
    assert sum(d.kind == "add" for d in diff) == sum(d.kind == "del" for d in diff) > 0
    try:
        exports.unified_diff(lines, shuffled, "a", "b", timeout=0.001)
    except exports.DiffUnavailable as exc:
        assert "took too long" in str(exc)
    else:
        raise AssertionError("a diff past its time bound was not stopped")
    too_long = ["x"] * (exports.MAX_DIFF_LINES + 1)
    try:
        exports.unified_diff(too_long, [], "a", "b")
    except exports.DiffUnavailable as exc:
        assert "too long to compare" in str(exc)
    else:
        raise AssertionError("a diff past its line bound ran")
