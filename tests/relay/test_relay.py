"""The relay in-process, with scripted providers: the watchdog and the opener at
the edges a real upstream rarely reaches (gevent, no sockets to the client)."""

from __future__ import annotations

import os
import resource
import socket
from collections.abc import Iterator

import gevent
import pytest

from tests.conftest import IN_CI, ScriptedProvider
from webapp.config import Config
from webapp.errors import (
    BadRequest,
    ClientTooSlow,
    RateLimited,
    UpstreamError,
    UpstreamTimeout,
    UpstreamUnavailable,
)
from webapp.providers.base import Final, GenerationRequest, IteratorStream, UpstreamStream
from webapp.relay import generation
from webapp.relay.events import Done, Failed, Ping
from webapp.relay.generation import Relay
from webapp.sockets import readable_now


def relay_for(streams: list[Iterator[str | Final]], **settings: str) -> Relay:
    config = Config.from_env({"OPENAI_API_KEY": "x", "HEARTBEAT_INTERVAL": "10", **settings})

    class Scripted:
        models = ("m",)
        continues_partial = False

        def open(self, request: GenerationRequest) -> UpstreamStream:
            return IteratorStream(streams.pop(0))

        def count_tokens(self, text: str) -> int:
            return len(text)

    request = GenerationRequest([{"role": "user", "content": "x"}], "m", 100)
    return Relay(Scripted(), request, config, "rid", len, 1)  # type: ignore[arg-type]


def test_an_opener_that_outlives_its_kill_cannot_touch_the_next_attempt() -> None:
    def one_token_then_silence() -> Iterator[str | Final]:
        yield "hello "
        gevent.sleep(100)

    def slow_to_stop() -> Iterator[str | Final]:
        try:
            gevent.sleep(100)
        finally:
            gevent.sleep(1.5)  # longer than the relay's 1 s kill wait
        yield "never"

    relay = relay_for(
        [one_token_then_silence(), slow_to_stop(), slow_to_stop(), slow_to_stop()],
        IDLE_TIMEOUT="0.5",
        TOTAL_TIMEOUT="20",
        RESUME_ON_FAILURE="true",
        RESUME_MAX="3",
    )
    relay.start(commit_after=None)
    events = list(relay.events())
    assert events[0] == "hello "
    assert isinstance(events[-1], Failed) and events[-1].error.code == "idle_timeout"
    assert relay.resumes == 3


def test_a_last_event_the_client_never_takes_is_dropped_after_the_grace(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(generation, "WRITE_GRACE", 0.5)

    def one_token_then_break() -> Iterator[str | Final]:
        yield "tok "
        gevent.sleep(0.05)
        raise UpstreamError("boom", code="upstream_error")

    released: list[int] = []
    relay = relay_for([one_token_then_break()], TOTAL_TIMEOUT="1", IDLE_TIMEOUT="5")
    relay.cleanups.append(lambda: released.append(1))
    relay.start(commit_after=None)
    events = relay.events()
    assert next(events) == "tok "
    assert isinstance(next(events), Failed)
    # The server now writes the error event; a client that does not read blocks
    # that write, as a sleep does here. The watchdog must end it.
    with pytest.raises(ClientTooSlow):
        gevent.sleep(3)
    events.close()
    assert relay.outcome == "client_too_slow" and released == [1]


def test_a_client_reading_normally_is_never_dropped() -> None:
    def steady() -> Iterator[str | Final]:
        for i in range(30):
            gevent.sleep(0.05)
            yield f"t{i} "
        yield Final("stop")

    relay = relay_for([steady()], TOTAL_TIMEOUT="10", IDLE_TIMEOUT="1")
    relay.start(commit_after=None)
    events = list(relay.events())
    assert "".join(e for e in events if isinstance(e, str)) == "".join(f"t{i} " for i in range(30))
    assert isinstance(events[-1], Done) and relay.outcome == "ok"


def test_readable_now_works_past_descriptor_1024() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    # Any descriptor past select()'s 1024 shows it: up to 2000, as the hard limit allows.
    fd = 2000 if hard == resource.RLIM_INFINITY else min(2000, hard - 1)
    if fd < 1024:
        message = f"the hard file limit ({hard}) allows no descriptor past 1024"
        if IN_CI:
            pytest.fail(message)
        pytest.skip(message)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, fd + 1), hard))
    a, b = socket.socketpair()
    high = socket.socket(fileno=os.dup2(a.fileno(), fd))
    try:
        assert high.fileno() >= 1024
        assert not readable_now(high)
        b.sendall(b"x")
        assert readable_now(high)
    finally:
        for s in (a, b, high):
            s.close()
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


# -- retry, bounds and resume, in-process with a scripted provider --------------------


def scripted_relay(
    provider: ScriptedProvider, sleeps: list[float] | None = None, **settings: str
) -> Relay:
    """A relay over `provider` with small bounds; retry waits are recorded, not slept."""
    config = Config.from_env(
        {
            "OPENAI_API_KEY": "x",
            "FIRST_TOKEN_TIMEOUT": "1",
            "IDLE_TIMEOUT": "0.3",
            "TOTAL_TIMEOUT": "3",
            "HEARTBEAT_INTERVAL": "10",
            "RETRY_MAX_ATTEMPTS": "3",
            "RETRY_AFTER_MAX": "2",
            **settings,
        }
    )
    request = GenerationRequest([{"role": "user", "content": "x"}], "m", 100)
    recorded = sleeps if sleeps is not None else []
    return Relay(provider, request, config, "rid", len, 1, sleep=recorded.append)


def texts(events: list[object]) -> str:
    return "".join(e for e in events if isinstance(e, str))


def test_failed_attempts_are_retried_before_the_first_token_only(
    scripted: ScriptedProvider,
) -> None:
    scripted.enqueue(UpstreamUnavailable("down"))
    scripted.enqueue(RateLimited("slow down", retry_after=0.7))
    scripted.enqueue("a ", "b ", Final("stop"))
    sleeps: list[float] = []
    relay = scripted_relay(scripted, sleeps)
    relay.start(commit_after=None)
    events = list(relay.events())
    assert texts(events) == "a b " and isinstance(events[-1], Done)
    assert relay.attempts == 3
    assert 0 <= sleeps[0] <= 0.5  # full jitter on the first backoff step (RETRY_BASE_DELAY)
    assert sleeps[1] == 0.7  # the upstream's Retry-After, exactly


def test_a_retry_after_beyond_the_maximum_ends_the_retries(scripted: ScriptedProvider) -> None:
    scripted.enqueue(RateLimited("slow down", retry_after=5.0))
    relay = scripted_relay(scripted)
    with pytest.raises(RateLimited):
        relay.start(commit_after=None)
    assert relay.attempts == 1 and relay.http_status == 429


def test_a_refusal_is_never_retried(scripted: ScriptedProvider) -> None:
    scripted.enqueue(BadRequest("no", code="upstream_bad_request"))
    relay = scripted_relay(scripted)
    with pytest.raises(BadRequest):
        relay.start(commit_after=None)
    assert relay.attempts == 1


def test_silence_before_the_first_token_is_a_timeout(scripted: ScriptedProvider) -> None:
    scripted.enqueue(5.0, "late ")
    relay = scripted_relay(scripted, FIRST_TOKEN_TIMEOUT="0.3")
    with pytest.raises(UpstreamTimeout) as raised:
        relay.start(commit_after=None)
    assert raised.value.code == "first_token_timeout"


def test_silence_mid_answer_ends_it_with_what_arrived(scripted: ScriptedProvider) -> None:
    scripted.enqueue("a ", "b ", 5.0, "never ")
    relay = scripted_relay(scripted)
    relay.start(commit_after=None)
    events = list(relay.events())
    assert texts(events) == "a b "
    assert isinstance(events[-1], Failed) and events[-1].error.code == "idle_timeout"


def test_the_total_deadline_ends_an_endless_answer(scripted: ScriptedProvider) -> None:
    scripted.enqueue(*[step for _ in range(100) for step in ("t ", 0.05)])
    relay = scripted_relay(scripted, TOTAL_TIMEOUT="0.5")
    relay.start(commit_after=None)
    events = list(relay.events())
    assert isinstance(events[-1], Failed) and events[-1].error.code == "deadline_exceeded"
    assert 3 <= texts(events).count("t ") <= 12


def test_a_break_mid_answer_resumes_without_repeating(scripted: ScriptedProvider) -> None:
    scripted.enqueue("a ", "b ", UpstreamError("cut", code="upstream_disconnected"))
    scripted.enqueue("c ", Final("stop"))
    relay = scripted_relay(scripted, RESUME_ON_FAILURE="true")
    relay.start(commit_after=None)
    events = list(relay.events())
    assert texts(events) == "a b c " and isinstance(events[-1], Done)
    assert relay.resumes == 1
    continuation = scripted.requests[1].messages
    assert continuation[-2] == {"role": "assistant", "content": "a b "}


def test_keep_alives_flow_while_the_model_is_silent(scripted: ScriptedProvider) -> None:
    scripted.enqueue(0.5, "a ", Final("stop"))
    relay = scripted_relay(scripted, HEARTBEAT_INTERVAL="0.1", FIRST_TOKEN_TIMEOUT="2")
    relay.start(commit_after=0.1)
    events = list(relay.events())
    pings = [e for e in events if isinstance(e, Ping)]
    assert len(pings) >= 2 and texts(events) == "a "


def test_a_request_without_temperature_gets_the_configured_default(
    scripted: ScriptedProvider,
) -> None:
    from webapp.relay.generation import GenerationService

    config = Config.from_env({"OPENAI_API_KEY": "x", "DEFAULT_TEMPERATURE": "0"})
    service = GenerationService(config, scripted, len)
    assert service.relay("r", "hello").request.temperature == 0.0
    assert service.relay("r", "hello", temperature=0.7).request.temperature == 0.7
