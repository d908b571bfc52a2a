"""A resumable answer's job in one process: the starting response reads the relay,
hands it on when its client goes, and a Stop ends it in every state (never
driven, driven and reading, driven and stuck in a write, just handed on), with
the upstream closed and every reader given an end."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import gevent
import pytest
from gevent.event import Event

from tests.relay.test_relay import relay_for
from webapp.answers.joblog import Numbered
from webapp.answers.jobs import Job, writes_bounded
from webapp.errors import ClientTooSlow
from webapp.providers.base import Final
from webapp.relay.events import Done, Failed
from webapp.relay.formats import numbered
from webapp.relay.generation import WRITE_STALL, Relay
from webapp.web.ui import _with_blocks


def steady(tokens: int, every: float) -> Iterator[str | Final]:
    for i in range(tokens):
        gevent.sleep(every)
        yield f"t{i} "
    yield Final("stop")


def started(tokens: int = 100, every: float = 0.02) -> tuple[Relay, Job, list[float]]:
    """A started relay, its job, and when its upstream side was closed."""
    closed: list[float] = []
    relay = relay_for([steady(tokens, every)], TOTAL_TIMEOUT="30", IDLE_TIMEOUT="5")
    relay.cleanups.append(lambda: closed.append(time.monotonic()))
    relay.start(commit_after=None)
    return relay, Job(relay, "a", grace=5, heartbeat=10), closed


def drive(job: Job) -> Iterator[Numbered]:
    """The starting response's events, with their ids, as the page's stream numbers them."""
    return numbered(job.driven(), job.start)


def test_a_stop_before_the_response_drives_it_still_gives_that_response_the_end() -> None:
    relay, job, closed = started()
    job.cancel()
    assert job.finished and closed
    events = [event for _, event in drive(job)]
    assert len(events) == 1 and isinstance(events[0], Failed)
    assert events[0].error.code == "cancelled" and relay.outcome == "cancelled"


def test_a_stop_right_after_the_hand_off_ends_it() -> None:
    _, job, closed = started()
    driving = drive(job)
    next(driving)
    driving.close()  # the server stopped iterating: handed to the job's own greenlet
    job.cancel()  # before that greenlet ever ran
    gevent.sleep(0.1)
    assert job.finished and closed and isinstance(job.events[-1], Failed)


def test_a_stop_after_the_end_leaves_the_answer_as_it_ended() -> None:
    relay, job, _ = started(tokens=3, every=0.01)
    for _, event in drive(job):
        if isinstance(event, Done):
            job.cancel()  # the Stop crosses the end on the wire
    assert relay.outcome == "ok" and isinstance(job.events[-1], Done)


def test_a_stop_reaches_a_driver_stuck_in_a_write() -> None:
    _, job, closed = started()
    asked: list[float] = []

    def stop() -> None:
        asked.append(time.monotonic())
        job.cancel()

    gevent.spawn_later(0.3, stop)
    caught: list[BaseException] = []
    try:
        for end, _ in drive(job):
            if end > 20 and not asked:
                gevent.sleep(5)  # its client reads nothing: the write blocks
    except ClientTooSlow as exc:
        caught.append(exc)
    logged_at_stop = len(job.events)
    gevent.sleep(0.2)
    assert caught and "cancelled" in str(caught[0])
    assert closed and closed[0] - asked[0] <= 0.7
    assert len(job.events) == logged_at_stop and isinstance(job.events[-1], Failed)


def test_a_driver_that_stops_reading_is_let_go_and_the_answer_goes_on() -> None:
    relay, job, _ = started(tokens=40, every=0.05)
    seen: list[Any] = []
    done = Event()

    def watch() -> None:
        for _, event in job.follow(0):
            seen.append(event)
        done.set()

    gevent.spawn(watch)
    let_go: list[float] = []
    stalled_at = 0.0
    try:
        for end, _ in drive(job):
            if end > 12:
                stalled_at = time.monotonic()
                gevent.sleep(100)  # its client stopped reading
    except ClientTooSlow:
        let_go.append(time.monotonic())
    assert let_go and let_go[0] - stalled_at <= WRITE_STALL + 0.6
    assert done.wait(10)
    text = "".join(event for event in seen if isinstance(event, str))
    assert text == "".join(f"t{i} " for i in range(40)) and isinstance(seen[-1], Done)
    assert relay.outcome == "ok"


def test_a_finished_job_replays_from_any_point_and_a_reader_across_its_end_misses_none() -> None:
    _, job, _ = started(tokens=20, every=0.01)
    late: list[tuple[int, object]] = []

    def read_along() -> None:  # a reader that joined mid-answer and reads on past the end
        gevent.sleep(0.05)
        late.extend(job.follow(0))

    reader = gevent.spawn(read_along)
    driven = list(drive(job))
    reader.join(5)
    text = "".join(f"t{i} " for i in range(20))
    assert job.finished and job.text() == text
    assert "".join(e for _, e in late if isinstance(e, str)) == text
    assert isinstance(late[-1][1], Done) and late[-1][0] == len(text) == driven[-1][0]
    assert len(job.events) == 2  # a finished log is its text and its end, not a list per token
    for after in (0, 1, 7, len(text) - 1, len(text)):
        replay = list(job.follow(after))
        deltas = [(end, e) for end, e in replay if isinstance(e, str)]
        assert "".join(e for _, e in deltas) == text[after:]
        assert all(end == len(text) for end, _ in deltas)
        assert isinstance(replay[-1][1], Done) and replay[-1][0] == len(text)


def test_a_reattached_reader_that_stops_taking_writes_is_let_go() -> None:
    _, job, _ = started(tokens=200, every=0.01)
    driver = gevent.spawn(lambda: list(drive(job)))
    gevent.sleep(0.1)
    reader = writes_bounded(job.follow(0), 0.3)
    next(reader)
    assert job.watchers == 1
    # Its "write" blocks: the bound throws into it there, as into a blocked sendall.
    with pytest.raises(ClientTooSlow):
        gevent.sleep(2)
    reader.close()
    assert job.watchers == 0 and job.followers == 1  # only the driver is left
    driver.join(10)
    assert job.finished and isinstance(job.events[-1], Done)  # the answer went on


def test_readers_that_come_and_go_each_get_the_whole_text_once() -> None:
    """The log lags while only the driver reads; each reader catches it up on joining,
    however many tokens passed unlogged, and reads on live from there."""
    relay, job, _ = started(tokens=60, every=0.01)
    first: list[tuple[int, object]] = []

    def come_and_go() -> None:
        # Tokens the driver took with nobody else reading (well past the 5 asked for).
        while sum(map(len, relay.parts)) < 20:
            gevent.sleep(0.01)
        reading = job.follow(5)
        for item in reading:
            first.append(item)
            if len(first) == 4:
                break
        reading.close()

    later: list[tuple[int, object]] = []
    live = 0  # events the late reader got while the answer still ran

    def come_late() -> None:
        nonlocal live
        gevent.sleep(0.4)  # after the first reader left, more tokens went unlogged
        for item in job.follow(0):
            later.append(item)
            live += not job.finished

    readers = [gevent.spawn(come_and_go), gevent.spawn(come_late)]
    driven = list(drive(job))
    gevent.joinall(readers, timeout=5)
    text = "".join(f"t{i} " for i in range(60))
    assert "".join(e for _, e in driven if isinstance(e, str)) == text
    assert "".join(e for _, e in later if isinstance(e, str)) == text
    assert isinstance(later[-1][1], Done) and later[-1][0] == len(text)
    assert live > 5  # the catch-up, then token by token as they came
    # The first reader's catch-up began at 5 and each id is the length after it.
    got = "".join(e for _, e in first if isinstance(e, str))
    assert len(first) == 4 and got == text[5 : first[-1][0]]
    assert job.watchers == 0


def test_a_reader_claiming_more_text_than_there_is_gets_only_what_lies_past_its_claim() -> None:
    """`after` past the answer's length (no honest client sends it, as every id is
    a length it was sent): live text up to that point is not sent, as the stored
    row's follower does, rather than sent as if new."""
    relay, job, _ = started(tokens=40, every=0.01)
    got: list[tuple[int, object]] = []
    claim = 0

    def claim_ahead() -> None:
        nonlocal claim
        while sum(map(len, relay.parts)) < 20:
            gevent.sleep(0.005)
        claim = sum(map(len, relay.parts)) + 13  # mid-token, past what exists
        got.extend(job.follow(claim))

    reader = gevent.spawn(claim_ahead)
    list(drive(job))
    reader.join(5)
    text = "".join(f"t{i} " for i in range(40))
    deltas = [(end, e) for end, e in got if isinstance(e, str)]
    assert "".join(e for _, e in deltas) == text[claim:]
    assert all(end > claim for end, _ in deltas)
    assert isinstance(got[-1][1], Done) and got[-1][0] == len(text)


def test_the_page_hears_the_end_of_an_answer_only_once_it_is_recorded() -> None:
    """The page's stream highlights after the end, which lets other requests run: by
    then the answer must have ended (cleanups run: recorded, slot freed), so that a
    follow-up sent at once builds on all of it, as before for the API."""
    relay, job, closed = started(tokens=5, every=0.01)
    for _, event in _with_blocks(drive(job), job.text):
        if isinstance(event, Done):
            assert closed and job.finished and relay.outcome == "ok"
            break
    else:
        raise AssertionError("no end")


def test_a_stop_reaches_a_driver_inside_the_upstream_read_and_gives_it_the_end() -> None:
    _, job, closed = started(tokens=10, every=0.5)  # the driver waits in each read
    gevent.spawn_later(0.2, job.cancel)  # while it waits for the second text
    began = time.monotonic()
    events = list(drive(job))
    assert time.monotonic() - began < 0.45 and closed  # the read was interrupted
    assert [e for _, e in events if isinstance(e, str)] == ["t0 "]
    assert isinstance(events[-1][1], Failed) and events[-1][1].error.code == "cancelled"
    assert job.finished and isinstance(job.events[-1], Failed)


def test_stops_that_reach_a_handed_on_answer_while_it_closes_never_cut_its_cleanups() -> None:
    """The runner that reads on after a hand-off is stopped by request, in its own
    greenlet, never killed: a Stop (or a second one, or the grace) arriving while
    its cleanups run, one of which waits (a Redis round trip), leaves them all to
    run, the job's end last."""
    ran: list[str] = []
    relay = relay_for([steady(100, 0.02)], TOTAL_TIMEOUT="30", IDLE_TIMEOUT="5")
    relay.cleanups.append(lambda: (gevent.sleep(0.5), ran.append("slow")))
    relay.start(commit_after=None)
    job = Job(relay, "a", grace=5, heartbeat=10)
    driving = drive(job)
    next(driving)
    driving.close()  # its client left: handed on
    gevent.sleep(0.1)  # the runner reads on
    job.cancel()
    gevent.sleep(0.2)  # inside the slow cleanup now
    job.cancel()
    job._abandon()  # the grace running out meanwhile
    gevent.sleep(1)
    assert ran == ["slow"] and job.finished and isinstance(job.events[-1], Failed)
    assert relay.outcome == "cancelled"


def test_the_page_stream_after_the_end_has_a_write_bound_of_its_own(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The relay is closed before the page hears the end (above), and its watchdog with
    it: a client that stops reading then (the end, the blocks, the page's HTML) is
    let go by the page stream's own bound, so the stream still ends."""
    monkeypatch.setattr("webapp.web.ui.FOLLOWER_WRITE_STALL", 0.2)
    _, job, _ = started(tokens=5, every=0.01)
    began = 0.0
    with pytest.raises(ClientTooSlow):
        for _, event in _with_blocks(drive(job), job.text):
            if isinstance(event, Done):
                began = time.monotonic()
                gevent.sleep(5)  # its write blocks: the client reads nothing
    assert began and time.monotonic() - began < 1
