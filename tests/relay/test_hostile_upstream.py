"""A hostile or broken model server: lines that never end, floods, wrong types,
absurd Retry-After values, error texts that echo our key.

First the pieces (the SSE decoder, redaction, the status mapping, Retry-After)
as plain functions; then each case end to end through gunicorn against the
fake upstream, asserting the outcome, that the key never reaches the client,
that /healthz on the same worker stays responsive while the bad stream is in
flight, and that the worker's memory stays bounded.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import gevent
import pytest
import requests

from tests.conftest import TEST_SETTINGS, Server
from tests.fake_upstream import BAD_EVENTS, BAD_USAGE, FLOOD_TOKEN, FakeUpstream
from tests.helpers import memory, metrics, prompt, sse_events, value, worker_pid
from webapp.errors import BadRequest, RateLimited, UpstreamError, UpstreamMalformed
from webapp.providers.base import Final
from webapp.providers.openai import (
    MAX_LINE,
    YIELD_EVERY,
    SSEDecoder,
    SSEStream,
    in_band_error,
    parse_sse,
    redact,
    retry_after,
    safe_identifier,
    status_error,
)

KEY = TEST_SETTINGS["OPENAI_API_KEY"]
MARGIN = 1.0
HEALTHZ_BOUND = 0.5  # seconds: responsive, not fast
MEMORY_BOUND = 150 * 1024 * 1024  # bytes of worker RSS growth (the long line is 48 MB)


def delta(text: str) -> bytes:
    return b'data: {"choices":[{"delta":{"content":%s}}]}\n\n' % json.dumps(text).encode()


def event(obj: Any) -> bytes:
    return b"data: " + json.dumps(obj).encode() + b"\n\n"


# -- the decoder: one line is bounded ------------------------------------------------


def test_a_line_that_never_ends_fails_at_the_bound_without_keeping_it() -> None:
    decoder = SSEDecoder()
    assert decoder.feed(delta("a")) == "a"
    piece = b"data: " + b"x" * 65530
    fed = 0
    while decoder.failure is None:
        assert decoder.feed(piece) == ""
        fed += len(piece)
        assert fed < 2 * MAX_LINE, "the line was never refused"
    assert isinstance(decoder.failure, UpstreamMalformed)
    assert decoder.failure.code == "upstream_malformed"
    assert MAX_LINE < fed <= MAX_LINE + len(piece)
    assert decoder._partial_size <= MAX_LINE + len(piece) and not decoder._partial
    assert decoder.feed(b"\n\n" + delta("late")) == ""  # nothing after a failure


def test_a_long_line_in_one_read_fails_too() -> None:
    stream = parse_sse(iter([delta("a") + b"data: " + b"x" * (MAX_LINE + 1) + b"\n\n"]))
    assert next(stream) == "a"
    with pytest.raises(UpstreamMalformed):
        next(stream)


def test_a_line_just_under_the_bound_in_small_pieces_is_decoded_whole() -> None:
    text = "y" * (MAX_LINE - 100)
    raw = delta(text) + delta("z")
    decoder = SSEDecoder()
    out = [decoder.feed(raw[i : i + 1000]) for i in range(0, len(raw), 1000)]
    assert "".join(out) == text + "z"
    assert decoder.failure is None


def test_events_split_at_every_byte_still_decode() -> None:
    raw = delta("one") + b": comment\n\n" + delta("two") + b"data: [DONE]\n\n"
    decoder = SSEDecoder()
    assert "".join(decoder.feed(raw[i : i + 1]) for i in range(len(raw))) == "onetwo"
    assert decoder.done


# -- the decoder: types ----------------------------------------------------------


@pytest.mark.parametrize("kind", sorted(BAD_EVENTS))
def test_an_event_of_the_wrong_shape_is_malformed_after_the_text_before_it(kind: str) -> None:
    stream = parse_sse(iter([delta("a") + delta("b") + event(BAD_EVENTS[kind])]))
    assert next(stream) == "ab"
    with pytest.raises(UpstreamMalformed) as caught:
        next(stream)
    assert caught.value.code == "upstream_malformed"


@pytest.mark.parametrize(
    "choices",
    [
        [{"delta": {}, "finish_reason": None}],
        [{"delta": {"role": "assistant", "content": None}}],
        [{"finish_reason": "stop"}],  # no delta at all
        [],
    ],
)
def test_events_without_text_are_fine(choices: Any) -> None:
    decoder = SSEDecoder()
    assert decoder.feed(event({"choices": choices})) == ""
    assert decoder.failure is None


@pytest.mark.parametrize("kind", sorted(BAD_USAGE))
def test_implausible_token_counts_are_dropped(kind: str) -> None:
    body = delta("a") + event({"choices": [], "usage": BAD_USAGE[kind]}) + b"data: [DONE]\n\n"
    items = list(parse_sse(iter([body])))
    assert items[0] == "a"
    final = items[-1]
    assert isinstance(final, Final) and final.usage is None


def test_plausible_counts_are_kept_and_bad_ones_beside_them_dropped() -> None:
    usage = {"prompt_tokens": 11, "completion_tokens": -1, "total_tokens": 2**53 + 1}
    body = event({"choices": [], "usage": usage}) + b"data: [DONE]\n\n"
    final = list(parse_sse(iter([body])))[-1]
    assert isinstance(final, Final) and final.usage == {"prompt_tokens": 11}


# -- the stream lets other greenlets run ------------------------------------------


class EndlessNoise:
    """A wire.Response stand-in whose reads never block and never bring text."""

    def __init__(self, flag: list[int]) -> None:
        self.flag = flag
        self.seen: list[int] = []  # per read: had the other greenlet run yet?
        self.done = False

    def read(self, timeout: float | None) -> bytes:
        self.seen.append(len(self.flag))
        return b": keep-alive\n\n" * 100

    def close(self) -> None:
        pass


def test_a_stream_of_reads_without_text_lets_other_greenlets_run() -> None:
    ran: list[int] = []
    response = EndlessNoise(ran)
    gevent.spawn(ran.append, 1)
    stream = SSEStream(response)  # type: ignore[arg-type]
    assert stream.read(0.2) is None
    assert ran == [1]
    assert 1 in response.seen[: YIELD_EVERY + 1]


class EndlessText(EndlessNoise):
    def read(self, timeout: float | None) -> bytes:
        self.seen.append(len(self.flag))
        return delta("t") * 100


def test_a_stream_of_text_that_never_pauses_lets_other_greenlets_run() -> None:
    ran: list[int] = []
    response = EndlessText(ran)
    gevent.spawn(ran.append, 1)
    stream = SSEStream(response)  # type: ignore[arg-type]
    for _ in range(YIELD_EVERY + 1):
        assert stream.read(None) == "t" * 100
    assert ran == [1]


# -- redaction, identifiers, fixed messages ----------------------------------------


@pytest.mark.parametrize(
    "text",
    [
        "authorization: Bearer abc.def-ghi",
        "Authorization:Bearer abc.def-ghi",
        '{"authorization": "Bearer abc.def-ghi"}',
        "header was AUTHORIZATION: abc.def-ghi",
        "Bearer abc.def-ghi",
        "key sk-proj-abcdefgh1234 leaked",
        "x-api-key: abc.def-ghi",
        "api_key=abc.def-ghi",
    ],
)
def test_redact_removes_anything_that_looks_like_a_key(text: str) -> None:
    out = redact(text)
    assert "abc.def-ghi" not in out and "abcdefgh1234" not in out
    assert "[redacted]" in out


def test_redact_removes_the_configured_key_wherever_it_is() -> None:
    out = redact(f"weird-place:{KEY}!and again {KEY}", [KEY])
    assert KEY not in out and out.count("[redacted]") == 2
    assert redact("plain words, no key", [KEY]) == "plain words, no key"
    assert redact("a b c", [""]) == "a b c"  # an empty key redacts nothing


@pytest.mark.parametrize(
    ("candidates", "expected"),
    [
        (("model_not_found",), "model_not_found"),
        ((None, "invalid_request_error"), "invalid_request_error"),
        ((429,), "429"),
        (("has spaces", "ok.v1"), "ok.v1"),
        (("x" * 65,), None),
        (("Bearer sk-abc",), None),
        (({"a": 1}, ["b"], True), None),
    ],
)
def test_only_short_plain_identifiers_are_passed_on(
    candidates: tuple[Any, ...], expected: str | None
) -> None:
    assert safe_identifier(*candidates) == expected


ECHO = f"Cannot POST /v1/chat/completions\nauthorization: Bearer {KEY}\nhost: model"


@pytest.mark.parametrize(
    ("status", "kind", "message"),
    [
        (404, UpstreamError, "The model server answered 404 (model_not_found)."),
        (400, BadRequest, "The model server refused the request (model_not_found)."),
        (500, UpstreamError, "The model server answered 500 (model_not_found)."),
    ],
)
def test_status_errors_use_our_words_and_log_the_upstreams_redacted(
    caplog: pytest.LogCaptureFixture, status: int, kind: type, message: str
) -> None:
    with caplog.at_level("WARNING", logger="webapp.upstream"):
        error = status_error(status, {}, ECHO, upstream_code="model_not_found", secrets=[KEY])
    assert type(error) is kind
    assert error.message == message
    assert KEY not in json.dumps(error.to_dict())
    assert "Cannot POST" in caplog.text and KEY not in caplog.text


def test_an_in_band_error_uses_our_words() -> None:
    error = in_band_error({"message": ECHO, "code": "server_error"}, [KEY])
    assert error.message == "The model server reported an error (server_error)."
    assert in_band_error("just a string: " + ECHO).message == "The model server reported an error."


# -- Retry-After --------------------------------------------------------------------


@pytest.mark.parametrize(
    "value", ["1e400", "inf", "-inf", "nan", "-5", "1_0", "+3", "9" * 400, "", "soon"]
)
def test_a_retry_after_that_is_not_a_plain_number_or_date_counts_as_absent(value: str) -> None:
    assert retry_after({"retry-after": value}) is None
    assert retry_after({"retry-after-ms": value}) is None
    assert retry_after({"retry-after-ms": value, "retry-after": "2"}) == 2.0


def test_retry_after_reads_seconds_milliseconds_and_dates() -> None:
    assert retry_after({"retry-after": "2"}) == 2.0
    assert retry_after({"retry-after": "0.25"}) == 0.25
    assert retry_after({"retry-after-ms": "300"}) == 0.3
    date = "Wed, 21 Oct 2015 07:28:00 GMT"
    assert retry_after({"retry-after": date}, now=1445412480.0 - 10) == 10.0
    assert retry_after({"retry-after": date}, now=1445412480.0 + 10) == 0.0  # passed
    assert retry_after({"retry-after": "Fri, 31 Dec 99999 23:59:59 GMT"}) is None
    assert retry_after({"retry-after": "3600"}, limit=1.5) == 1.5


@pytest.mark.parametrize("status", [429, 503, 500])
def test_a_retry_after_beyond_the_maximum_is_cut_to_it_and_ends_the_retries(
    status: int,
) -> None:
    error = status_error(status, {"retry-after": "3600"}, retry_after_max=1.5)
    assert error.retry_after == 1.5 and not error.retryable
    assert error.to_dict()["retry_after"] == 1.5
    absurd = status_error(status, {"retry-after": "1e400"}, retry_after_max=1.5)
    assert absurd.retry_after is None and absurd.retryable
    honoured = status_error(status, {"retry-after": "1"}, retry_after_max=1.5)
    assert honoured.retry_after == 1.0 and honoured.retryable


def test_rate_limited_keeps_its_type_when_cut() -> None:
    assert isinstance(status_error(429, {"retry-after": "99"}, retry_after_max=1), RateLimited)


# -- end to end, through gunicorn ----------------------------------------------------


@pytest.fixture(scope="module")
def hostile(serve: Callable[..., Server]) -> Server:
    # A server of its own (an otherwise unused variable makes it distinct), so the
    # memory measured is this module's.
    return serve(HOSTILE_UPSTREAM_TESTS="1")


def reset_peak(pid: int) -> bool:
    """Restart VmHWM at the current RSS (Linux: write 5 to clear_refs)."""
    try:
        Path(f"/proc/{pid}/clear_refs").write_text("5")
    except OSError:
        return False
    return True


# Runs in a process of its own: this one's threads (the fake upstream sending
# as fast as it can) would otherwise add their GIL waits to the latencies.
PROBE = r"""
import http.client, json, select, sys, time
port = int(sys.argv[1])
latencies, errors = [], []
conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
while len(latencies) < 3 or not select.select([sys.stdin], [], [], 0)[0]:
    started = time.monotonic()
    try:
        conn.request("GET", "/healthz")
        response = conn.getresponse()
        response.read()
        if response.status != 200:
            errors.append(response.status)
    except OSError as exc:
        errors.append(repr(exc))
        break
    latencies.append(time.monotonic() - started)
    if len(latencies) == 1:
        print("ready", flush=True)
    time.sleep(0.02)
print(json.dumps({"latencies": latencies, "errors": errors}), flush=True)
"""


class Probe:
    """/healthz, again and again from another process, while something else goes on."""

    def __init__(self, server: Server) -> None:
        self.server = server
        self.latencies: list[float] = []
        self.errors: list[Any] = []

    def __enter__(self) -> Probe:
        self._proc = subprocess.Popen(
            [sys.executable, "-c", PROBE, str(self.server.port)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self._proc.stdout is not None
        assert self._proc.stdout.readline() == "ready\n"  # probing before the request
        return self

    def __exit__(self, *exc: object) -> None:
        out, _ = self._proc.communicate("stop\n", timeout=30)
        result = json.loads(out.strip().splitlines()[-1])
        self.latencies, self.errors = result["latencies"], result["errors"]

    def check(self) -> None:
        assert not self.errors, self.errors
        assert len(self.latencies) >= 3
        assert max(self.latencies) < HEALTHZ_BOUND, self.latencies


class Watched:
    """One request to the hostile server, with /healthz probed and memory measured."""

    def __init__(self, server: Server) -> None:
        self.server = server
        self.pid = worker_pid(server)
        # Settle the worker first (lazy imports, tiktoken's tables).
        requests.post(server.url + "/generate-code/", json={"prompt": prompt()}, timeout=30)
        self.before = memory(self.pid, "VmRSS")
        self.peak_reset = reset_peak(self.pid)

    def post(self, directive: str, **body: Any) -> tuple[requests.Response, float, Probe]:
        with Probe(self.server) as probe:
            started = time.monotonic()
            response = requests.post(
                self.server.url + "/generate-code/",
                json={"prompt": prompt(directive), **body},
                headers={"Accept": "text/event-stream"},
                timeout=60,
            )
            elapsed = time.monotonic() - started
        return response, elapsed, probe

    def growth(self) -> int:
        after = memory(self.pid, "VmHWM" if self.peak_reset else "VmRSS")
        return after - self.before


@pytest.fixture()
def watched(hostile: Server, fake: FakeUpstream) -> Iterator[Watched]:
    watched = Watched(hostile)
    yield watched
    # Every upstream stream the app opened was closed (the warm-up's is one).
    assert fake.wait_closed(1) and fake.open_streams == 0


def final_error(response: requests.Response) -> tuple[str, dict[str, Any]]:
    if response.status_code != 200:
        return "status", response.json()["error"]
    name, data = sse_events(response.text)[-1]
    return name, data


def text_of(response: requests.Response) -> str:
    return "".join(d["text"] for n, d in sse_events(response.text) if n == "delta")


@pytest.mark.parametrize("after", [3, 0])
def test_an_endless_line_ends_the_answer_malformed_in_bound(
    watched: Watched, fake: FakeUpstream, after: int
) -> None:
    response, elapsed, probe = watched.post(f"longline_after={after} line_mb=48 id=line{after}")
    name, error = final_error(response)
    if after:
        assert response.status_code == 200 and name == "error"
        assert text_of(response) == "t0 t1 t2 "
    else:
        assert response.status_code == 502  # nothing was sent yet: a status
    assert error["code"] == "upstream_malformed"
    assert elapsed < MARGIN
    assert len(fake.records_for(f"id=line{after}")) == 1  # not retried
    probe.check()
    assert watched.growth() < MEMORY_BOUND


def test_an_endless_flood_without_text_ends_at_the_idle_bound(
    watched: Watched, fake: FakeUpstream
) -> None:
    # SSE comments as fast as the socket takes them, for ever: the socket is
    # never empty, so only a stream that yields lets the watchdog end it.
    response, elapsed, probe = watched.post("noise_after=2 id=noise")
    assert response.status_code == 200
    assert text_of(response) == "t0 t1 "
    name, error = final_error(response)
    assert (name, error["code"]) == ("error", "idle_timeout")
    assert 1.0 <= elapsed < 1.0 + MARGIN  # IDLE_TIMEOUT=1
    probe.check()
    assert watched.growth() < MEMORY_BOUND


def test_empty_deltas_flooding_before_the_first_token_end_at_its_bound(
    watched: Watched, fake: FakeUpstream
) -> None:
    response, elapsed, probe = watched.post("noise_after=0 noise=empty id=empties")
    _, error = final_error(response)
    assert response.status_code == 504 and error["code"] == "first_token_timeout"
    assert 2.0 <= elapsed < 2.0 + MARGIN  # FIRST_TOKEN_TIMEOUT=2
    probe.check()
    assert watched.growth() < MEMORY_BOUND


@pytest.mark.parametrize("kind", ["content_int", "content_list", "choices_dict", "delta_list"])
def test_wrong_types_mid_stream_are_an_error_event(
    watched: Watched, fake: FakeUpstream, kind: str
) -> None:
    response, elapsed, probe = watched.post(f"bad_after=2 bad={kind} id=type")
    assert response.status_code == 200
    assert text_of(response) == "t0 t1 "
    name, error = final_error(response)
    assert (name, error["code"]) == ("error", "upstream_malformed")
    assert elapsed < MARGIN
    probe.check()


@pytest.mark.parametrize("kind", ["content_dict", "finish_int", "event_list"])
def test_wrong_types_are_a_502_for_a_whole_answer(
    watched: Watched, fake: FakeUpstream, kind: str
) -> None:
    response, _, probe = watched.post(f"bad_after=2 bad={kind} id=whole", stream=False)
    assert response.status_code == 502
    assert response.json()["error"]["code"] == "upstream_malformed"
    probe.check()


@pytest.mark.parametrize("kind", sorted(BAD_USAGE))
def test_implausible_usage_never_reaches_the_answer_or_the_metrics(
    watched: Watched, fake: FakeUpstream, kind: str
) -> None:
    before = metrics(watched.server)
    response, _, probe = watched.post(f"usage={kind} id=usage")
    name, done = final_error(response)
    assert response.status_code == 200 and name == "done"
    # The upstream's counts were dropped: the app's own count of the answer stands in.
    usage = done["usage"]
    assert set(usage) == {"prompt_tokens", "completion_tokens", "total_tokens"}, usage
    for count in usage.values():
        assert type(count) is int and 0 < count < 2**53
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
    # The counters moved by those counts (2**60 is finite and not negative: the check
    # on every sample below alone would let it in).
    after = metrics(watched.server)
    for counted_as in ("prompt", "completion"):
        labels = {"model": "gpt-4o-mini", "kind": counted_as}
        moved = value(after, "codegen_tokens_total", **labels) - value(
            before, "codegen_tokens_total", **labels
        )
        assert moved == usage[f"{counted_as}_tokens"], (counted_as, moved, usage)
    exposed = requests.get(watched.server.url + "/metrics", timeout=10)
    assert exposed.ok
    counted = [
        line
        for line in exposed.text.splitlines()
        if line.startswith("codegen_tokens_total{") and not line.startswith("#")
    ]
    assert counted, "no codegen_tokens_total samples: the check below would pass on nothing"
    for line in counted:
        sample = float(line.rsplit(" ", 1)[1])
        assert math.isfinite(sample) and sample >= 0, line
    assert "Traceback" not in watched.server.logs()
    probe.check()


@pytest.mark.parametrize(
    "hint",
    [
        "retry_after=1e400",
        "retry_after=inf",
        "retry_after=nan",
        "retry_after=-5",
        "retry_after_ms=1e400",
        "retry_after=99999999999999999999",
    ],
)
def test_absurd_retry_after_values_are_clean_429s(
    watched: Watched, fake: FakeUpstream, hint: str
) -> None:
    response, elapsed, probe = watched.post(f"fail=429,429,429,429 {hint} id=ra")
    assert response.status_code == 429
    error = response.json()["error"]
    assert error["code"] == "upstream_rate_limited"
    # Passed on at most as RETRY_AFTER_MAX (1.5 s, rounded up to whole seconds).
    assert error.get("retry_after", 0) <= 1.5
    assert int(response.headers.get("Retry-After", "0")) <= 2
    assert elapsed < 2.0 + MARGIN  # FIRST_TOKEN_TIMEOUT bounds the retries
    probe.check()


def test_a_retry_after_beyond_the_maximum_is_passed_on_as_the_maximum(
    watched: Watched, fake: FakeUpstream
) -> None:
    response, elapsed, _ = watched.post("fail=503,503 retry_after=3600 id=long")
    assert response.status_code == 503
    assert response.json()["error"]["retry_after"] == 1.5
    assert response.headers["Retry-After"] == "2"
    assert len(fake.records_for("id=long")) == 1  # longer than we wait: no retry
    assert elapsed < MARGIN


@pytest.mark.parametrize(
    ("directive", "status", "code", "message"),
    [
        (
            "status=404 echo=json err_code=model_not_found",
            502,
            "upstream_error",
            "The model server answered 404 (model_not_found).",
        ),
        ("status=404 echo=text", 502, "upstream_error", "The model server answered 404."),
        (
            "status=400 echo=json err_code=invalid_value",
            400,
            "upstream_bad_request",
            "The model server refused the request (invalid_value).",
        ),
        (
            "fail=500,500,500 echo=json",  # the fake's error type is `fake`
            502,
            "upstream_error",
            "The model server answered 500 (fake).",
        ),
        (
            "error_after=0 echo=json err_code=boom",
            502,
            "upstream_error",
            "The model server reported an error (boom).",
        ),
        (
            "error_after=2 echo=json err_code=not/an:identifier",  # then its type is named
            200,
            "upstream_error",
            "The model server reported an error (server_error).",
        ),
    ],
)
def test_an_upstream_that_echoes_our_key_never_shows_it(
    watched: Watched,
    fake: FakeUpstream,
    directive: str,
    status: int,
    code: str,
    message: str,
) -> None:
    logged_before = len(watched.server.logs())  # the module's server: earlier tests logged too
    response, _, probe = watched.post(directive + " id=echo")
    assert response.status_code == status
    _, error = final_error(response)
    assert (error["code"], error["message"]) == (code, message)
    assert KEY not in response.text and "Bearer" not in response.text
    assert fake.records_for("id=echo")[0].headers["authorization"] == f"Bearer {KEY}"
    # The log keeps the upstream's words for the operator, with the key redacted.
    deadline = time.monotonic() + 5
    while "[redacted]" not in watched.server.logs()[logged_before:]:
        assert time.monotonic() < deadline, watched.server.logs()[logged_before:][-2000:]
        time.sleep(0.05)
    assert KEY not in watched.server.logs()
    probe.check()


def test_a_fast_flood_of_valid_deltas_keeps_the_worker_responsive(
    watched: Watched, fake: FakeUpstream
) -> None:
    # 4 MB of text in small deltas (~64 MB of SSE), as fast as they go. Whatever
    # bound the relay puts on an answer's size, it ends cleanly (done, or an error
    # event) with what was sent, in order, and /healthz stays quick meanwhile.
    response, _, probe = watched.post("flood=4 tokens=2 id=flood")
    assert response.status_code == 200
    name, end = final_error(response)
    assert name in ("done", "error")
    if name == "error":  # the answer's size bound, and no other failure
        assert end["code"] == "answer_too_large", end
    sent = fake.records_for("id=flood")[0].flood_bytes
    whole = FLOOD_TOKEN * (sent // len(FLOOD_TOKEN)) + "t0 t1 "
    received = text_of(response)
    assert received and whole.startswith(received)
    if name == "done":
        assert received == whole
    probe.check()


# -- one translation of wire errors, and the SDK's private surface -------------------


def all_subclasses(cls: type) -> list[type]:
    found = []
    for sub in cls.__subclasses__():
        found += [sub, *all_subclasses(sub)]
    return found


def test_every_wire_error_is_translated() -> None:
    from webapp.errors import AppError
    from webapp.providers import openai as provider
    from webapp.providers import wire

    kinds = all_subclasses(wire.WireError)
    assert len(kinds) >= 4
    for kind in kinds:
        assert kind in provider._OPENING_FAILURES, kind.__name__
        opening = provider.wire_error(kind("Bearer sk-secret-123456789"), (), streaming=False)
        streaming = provider.wire_error(kind("x"), (), streaming=True)
        for error in (opening, streaming):
            assert isinstance(error, AppError) and "sk-secret" not in error.message
        assert streaming.code == "upstream_disconnected"


def test_without_the_sdks_private_builder_the_request_is_the_same(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import openai

    from webapp.providers.openai import request_template

    client = openai.OpenAI(api_key="sk-test", base_url="http://127.0.0.1:9/v1", max_retries=0)
    url, headers = request_template(client)
    monkeypatch.setattr(type(client), "_build_request", None)  # as if a release dropped it
    by_hand_url, by_hand = request_template(client)
    assert by_hand_url == url == "http://127.0.0.1:9/v1/chat/completions"
    lower = {k.lower(): v for k, v in headers.items()}
    # What a streamed request needs is there (an empty set would pass the loop below).
    needed = {"authorization", "content-type", "accept", "accept-encoding"}
    assert needed <= {k.lower() for k in by_hand}, by_hand
    assert lower["authorization"] == "Bearer sk-test"
    for name, sent in by_hand.items():
        if name.lower() != "user-agent":
            assert lower[name.lower()] == sent, name
