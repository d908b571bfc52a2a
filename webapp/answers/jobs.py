"""Answers that outlive their response: a refresh, a dropped connection or a
switch of worker does not lose or cancel them.

A resumable answer runs as a `Job`. Every event goes into the job's log (at the
latest when someone other than the driver needs it; see below), numbered by the
answer's length in characters once it is applied (an event's id is "everything
up to here"). The response that started the answer reads its relay's own
events (`driven`), in its own greenlet, exactly as a plain answer does: no
layer, greenlet switch or list to fill per event while nobody else reads the
answer (the relay keeps its texts anyway: the log catches up from them when a
reader or a hand-off needs it; while someone watches, the relay calls `_grew`
with each text). The job is the relay's keeper: when that response's client
goes away, the relay stays open and is handed to a greenlet of the job's own,
which reads on. Any number of other responses follow
the job (`follow(after)`): the text after `after` first, in one delta, then
each new event as it comes; nothing twice, nothing missing, whichever worker or
moment they join at.

When the last reader leaves, the job keeps generating for RESUME_GRACE
seconds; if nobody comes back, its relay is closed (the upstream with it), as
a non-resumable answer is closed when its client leaves. `cancel()` closes it
within a second, whoever reads it. A finished job stays in memory for
KEEP_FINISHED (5) seconds; later re-attachments replay it from the history store.

Memory: the log holds the same string objects as the relay's text (bounded by
the answer's size bound), and one offset per event, once someone reads it. A
finished job keeps its text as one delta and its end: a worker under load holds
hundreds of finished answers, and a log per token would be thousands of objects
for the collector.

Cost: nothing per answer runs unless needed. The grace and KEEP_FINISHED are
bare loop timers (a greenlet only when the grace runs out); the ticker and the
Redis publisher start only with a watcher or Redis.
"""

from __future__ import annotations

import bisect
import logging
import time
from collections.abc import Callable, Iterator
from typing import Any

import gevent
from gevent.event import Event

from webapp.answers.eventlog import PUBLISH_INTERVAL, EventLog, RedisUnavailable, encode_end
from webapp.answers.recording import CANCEL_CHECK
from webapp.answers.store import CANCELLING, INTERRUPTED, StoredAnswer
from webapp.errors import AppError, ClientTooSlow
from webapp.relay.events import PING, Done, Failed, Ping, RelayEvent, close_source
from webapp.relay.generation import Relay, cancelled
from webapp.relay.watchdog import DISCONNECT_CHECK

log = logging.getLogger("webapp.answers.jobs")

# A finished job answers re-attachments from memory this long (the page's first
# reconnects come within 2 s); after it, the stored row replays the answer, in full
# since the recorder flushes its end within 50 ms. Kept short: with 60 s, a worker
# relaying 300 answers at a time held ~2,400 finished jobs for nobody.
KEEP_FINISHED = 5.0
# How long a job waits for the response that started it to begin reading it.
UNDRIVEN = 10.0
# A re-attached reader that takes none of a write this long is let go (it holds
# nobody back, only its connection): generous enough for the whole text of a
# capped answer in one write to a slow phone.
FOLLOWER_WRITE_STALL = 30.0

Numbered = tuple[int, RelayEvent | Ping]
"""An event with its id: the answer's length once it is applied (pings: -1)."""


class Job:
    """One resumable answer in this worker; see the module docstring. It is its
    relay's keeper (`reading`, `left`): the starting response reads the relay itself."""

    __slots__ = (
        "_changed",
        "_driving",
        "_followed_elsewhere",
        "_grace",
        "_grace_s",
        "_heartbeat",
        "_logged",
        "_on_finished",
        "_runner",
        "_runner_began",
        "_text",
        "_ticker",
        "answer_id",
        "ends",
        "events",
        "finished",
        "followers",
        "forget_timer",
        "prefix",
        "relay",
        "start",
        "watchers",
    )

    def __init__(
        self,
        relay: Relay,
        answer_id: str,
        *,
        prefix: str = "",
        grace: float,
        heartbeat: float,
        on_finished: Callable[[Job], None] = lambda job: None,
        eventlog: EventLog | None = None,
        owner: str = "",
        followed_elsewhere: Callable[[str], bool] = lambda answer_id: False,
        client_socket: object = None,
    ) -> None:
        # Dropped at the end (the text kept): a finished job stays KEEP_FINISHED
        # seconds, and its relay's objects would only swell the collector's work.
        self.relay: Relay | None = relay
        self._text = ""
        self.answer_id = answer_id
        # The log. While only the driver reads the answer it may lag the relay's
        # texts (`_sync` catches it up): whoever else reads it syncs it first.
        self.events: list[RelayEvent] = []
        self.ends: list[int] = []  # the answer's length after each event
        self._logged = 0  # how many of the relay's texts (`parts`) the log holds
        self.prefix = prefix  # a Continue: the stored text it carries on, and numbers from
        self.start = len(prefix)
        self.finished = False
        self.followers = 0  # the driver and the watchers
        self.watchers = 0  # who waits on `_changed`: followers but the driver, the publisher
        self._grace_s = grace
        self._heartbeat = heartbeat
        self._changed = Event()
        self._driving = False
        self._runner: gevent.Greenlet[..., None] | None = None
        self._runner_began = False
        self._ticker: gevent.Greenlet[..., None] | None = None
        self._on_finished = on_finished
        self._followed_elsewhere = followed_elsewhere
        self.forget_timer: Any = None  # Jobs': when a finished job leaves memory
        relay.keep_with(self, client_socket)
        relay.cleanups.append(self._end)
        # Until the response that started it drives it, nobody does: if it never
        # does (the server dropped the response unread), it is ended as abandoned.
        # Not sooner than UNDRIVEN: with RESUME_GRACE=0 the response must get there.
        self._grace: Any = None
        self._start_grace(max(grace, UNDRIVEN))
        if eventlog is not None:
            self._watch(1)
            gevent.spawn(self._publish, eventlog, owner)

    def _sync(self) -> None:
        """Bring the log up to the relay's texts. Each text the relay passes on is in
        its `parts` by then, in order, one per event, and nothing switches
        greenlets between the two, so the log never misses or repeats one."""
        relay = self.relay
        if relay is None:
            return  # finished: the log is whole
        parts = relay.parts
        if self._logged < len(parts):
            events, ends = self.events, self.ends
            length = ends[-1] if ends else self.start
            for text in parts[self._logged :]:
                length += len(text)
                events.append(text)
                ends.append(length)
            self._logged = len(parts)

    def _wake(self) -> None:
        """Wake every watcher: a new event, the end, or a tick."""
        changed, self._changed = self._changed, Event()
        changed.set()

    def _grew(self) -> None:
        """The relay's new text, while anyone watches: log it and wake them."""
        self._sync()
        self._wake()

    def _watch(self, change: int) -> None:
        """One watcher more (1) or fewer (-1); the relay tells of each text while any."""
        self.watchers += change
        if self.relay is not None:
            self.relay.report_growth(self._grew if self.watchers else None)

    def _tick(self) -> None:
        """Wake the watchers every DISCONNECT_CHECK while the answer runs, so they can
        look at their clients and send keep-alives: one timer per answer, not one per
        event and watcher. Runs from the first watcher on."""
        while not self.finished:
            gevent.sleep(DISCONNECT_CHECK)
            if self.watchers:
                self._wake()

    # Driving: the response that started the answer reads its relay -------------

    def driven(self) -> Iterator[RelayEvent]:
        """The answer's events for the response that started it: the relay's own,
        read in that response's greenlet, nothing between (the relay tells this job
        what it needs: `reading`, `left`, and each text while anyone watches). When
        that response's client goes away, the relay is handed to a greenlet of the
        job's own, which reads on for the others and the grace. Stopped before it
        began, the answer gives that response its end."""
        relay = self.relay
        if relay is None or self._driving or self._runner is not None:
            return (event for _, event in self.follow(self.start))
        return relay.events()

    def reading(self) -> None:
        """The relay's keeper: its starting response reads it."""
        self._driving = True
        self._attached()

    def left(self) -> None:
        """The relay's keeper: its starting response stopped reading; an answer that
        goes on (its relay still open) is read on by the job's own greenlet."""
        self._driving = False
        if not self.finished:
            self._sync()  # from here the runner logs every event
            runner = self._runner = gevent.spawn(self._run)
            assert self.relay is not None  # not finished
            self.relay.move_to(runner)
        self._detached()

    def _run(self) -> None:
        """Read the relay on, after its driver left, until it ends or is stopped (its
        end, logged by `_end` from the relay's cleanup, is the job's end)."""
        self._runner_began = True
        relay = self.relay
        if relay is None:
            return
        for _ in relay.events():
            pass

    def _end(self) -> None:
        """The relay has ended (a cleanup, run when it closed the upstream): log its
        end (a cancel if it sent none: stopped or killed), and tell everyone."""
        if self.finished:
            return
        self._sync()
        relay = self.relay
        assert relay is not None  # not finished
        events = self.events
        events.append(relay.end if relay.end is not None else Failed(cancelled()))
        self.finished = True
        self._text = self.text()
        length = len(self._text)
        self.ends.append(length)
        relay.keep_with(None)
        relay.report_growth(None)
        self.relay = None
        # From now on the log is its text in one delta, then its end. Whoever reads
        # the old lists (a follower, the publisher) keeps them, end included.
        delta = self._text[self.start :]
        self.events = [delta, events[-1]] if delta else [events[-1]]
        self.ends = [length] * len(self.events)
        self._wake()
        self._on_finished(self)

    def text(self) -> str:
        return self._text if self.relay is None else self.prefix + self.relay.text()

    def _publish(self, eventlog: EventLog, owner: str) -> None:
        """Copy the log to Redis in batches (consecutive deltas as one entry), and
        honour a Stop sent to another instance. Stops at the end, or at an outage."""
        try:
            self._publish_all(eventlog, owner)
        finally:
            self._watch(-1)  # the last watcher gone, the relay stops reporting texts

    def _publish_all(self, eventlog: EventLog, owner: str) -> None:
        events, ends = self.events, self.ends
        published = 0
        while True:
            finished = self.finished
            entries: list[tuple[int, str, bytes]] = []
            while published < len(events):
                event = events[published]
                if type(event) is str:
                    last = published
                    while last + 1 < len(events) and type(events[last + 1]) is str:
                        last += 1
                    text = "".join(events[published : last + 1])  # type: ignore[arg-type]
                    entries.append((ends[last], "delta", text.encode()))
                    published = last + 1
                else:
                    kind, data = encode_end(event)  # type: ignore[arg-type]
                    entries.append((ends[published], kind, data))
                    published += 1
            try:
                if entries:
                    stop = eventlog.publish(self.answer_id, owner, entries)
                else:
                    stop = eventlog.cancel_requested(self.answer_id)
            except RedisUnavailable:
                return  # this instance still serves it, through the job and the store
            if stop:
                self.cancel()
            if finished and published == len(events):
                return
            self._changed.wait(CANCEL_CHECK)  # a Stop sent to another instance (Redis)
            gevent.sleep(PUBLISH_INTERVAL)  # let a batch gather

    # Following -----------------------------------------------------------------

    def follow(
        self, after: int, client_gone: Callable[[], bool] = lambda: False
    ) -> Iterator[Numbered]:
        """The events after `after` characters: what is logged (its text as one
        delta), then each new one, with a PING after each silent heartbeat. While
        silent it looks at the client every DISCONNECT_CHECK: one that left stops
        following then, not at the next write, and the grace starts."""
        self._attached()
        self._watch(1)
        self._sync()  # from here the relay reports each text (`_grew`)
        if self._ticker is None:
            self._ticker = gevent.spawn(self._tick)
        try:
            events, ends = self.events, self.ends
            after = max(after, self.start)
            index = bisect.bisect_right(ends, after)
            if index and type(events[index - 1]) is not str:
                index -= 1  # the end event has the final length as its id too: resend it
            backlog = index
            while backlog < len(events) and type(events[backlog]) is str:
                backlog += 1
            if backlog > index:
                text = "".join(events[index:backlog])  # type: ignore[arg-type]
                end = ends[backlog - 1]
                yield end, text[len(text) - (end - after) :]
                index = backlog
            while True:
                while index < len(events):
                    event, end = events[index], ends[index]
                    index += 1
                    if type(event) is not str:
                        yield end, event
                        return  # Done or Failed: the end
                    if end - len(event) < after:
                        # Only a client claiming text it cannot have yet gets here:
                        # from the point it claims, as the stored row's follower does.
                        if end <= after:
                            continue
                        event = event[len(event) - (end - after) :]
                    yield end, event
                if self.finished:
                    return
                ticks = 0
                while index == len(events) and not self.finished:
                    self._changed.wait()  # no timeout: the job's ticker wakes us too
                    if index < len(events) or self.finished:
                        break
                    if client_gone():
                        return
                    ticks += 1
                    if ticks * DISCONNECT_CHECK >= self._heartbeat:
                        yield -1, PING
                        ticks = 0
        finally:
            self._watch(-1)
            self._detached()

    def _attached(self) -> None:
        self.followers += 1
        if self._grace is not None:
            self._grace.close()
            self._grace = None

    def _detached(self) -> None:
        self.followers -= 1
        if self.followers == 0 and not self.finished:
            self._start_grace(self._grace_s)

    def _start_grace(self, seconds: float) -> None:
        # Runs in the hub when due, which must not block: ending the job can.
        self._grace = gevent.get_hub().loop.timer(seconds)
        self._grace.start(gevent.spawn, self._abandon)

    def _abandon(self) -> None:
        if self.followers or self.finished:
            return
        # A reader who re-attached through another worker follows the row or Redis,
        # not this job: it keeps the answer going as a reader here would.
        followed = self._followed_elsewhere(self.answer_id)
        if self.followers or self.finished:
            return  # someone came, or it ended, while it looked
        if followed:
            self._start_grace(self._grace_s)
            return
        relay = self.relay
        if relay is None or relay.closed or relay.end is not None:
            return  # ending already, as it ended
        log.info("resumable answer abandoned", extra={"fields": {"answer": self.answer_id}})
        relay.end_as("client_disconnected")  # as a plain answer whose client left
        self._stop()

    def _stop(self) -> None:
        relay = self.relay
        assert relay is not None  # not finished
        if relay.closed:
            return  # already ending: its cleanups (this job's end among them) are running
        runner = self._runner
        if self._driving or (runner is not None and self._runner_began):
            # Whoever reads it ends it within a second, in its own greenlet (its
            # watchdog interrupts the read): never killed inside its cleanups.
            relay.request_stop()
        else:
            # Nobody is inside the relay: never driven, or handed on and not yet
            # read on (the kill keeps that greenlet from starting). End it here; a
            # response that reads it later gets its end.
            if runner is not None:
                runner.kill(block=False)
            relay.close()

    def cancel(self, outcome: str = "cancelled") -> None:
        """Stop now, whoever follows: the upstream is closed within a second, and the
        answer is recorded with `outcome`. One that has its end is left as it ended."""
        relay = self.relay
        if relay is None or relay.end is not None or relay.closed:
            return  # finished, or its end is on the way
        relay.end_as(outcome)
        self._stop()


def writes_bounded(events: Iterator[Numbered], seconds: float) -> Iterator[Numbered]:
    """`events`, each of whose writes to the client must end within `seconds`: past
    it, ClientTooSlow is raised where the server is blocked writing, which drops the
    connection. For re-attached readers, which no relay watchdog covers."""
    stall = gevent.Timeout(seconds, ClientTooSlow("client_too_slow"))
    try:
        for item in events:
            stall.start()
            try:
                yield item
            finally:
                stall.cancel()
    finally:
        stall.close()
        close_source(events)  # the follower's own cleanup (watchers, the grace) now, not at GC


POLL_INTERVAL = 0.5
# A reader through the row marks it at each poll; the worker running the answer
# counts it as following if its mark is this recent (a few polls, for a busy database).
FOLLOWED_WITHIN = 4 * POLL_INTERVAL


def follow_stored(
    read: Callable[[], StoredAnswer | None],
    after: int,
    *,
    heartbeat: float,
    until: float,
    clock: Callable[[], float] = time.monotonic,
    following: Callable[[], object] = lambda: None,
) -> Iterator[Numbered]:
    """Follow an answer another worker (or an earlier one) generates, through its
    stored row: every POLL_INTERVAL s, the text past `after` (the store has it at
    most 2 s behind), then its end. A finished answer replays and ends at once.
    `following()` is called at each poll while it runs: the mark that keeps it going
    past its grace for this reader."""
    sent = after
    last_sent = clock()
    while True:
        answer = read()
        if answer is None:
            yield sent, Failed(AppError("The answer was deleted.", code="answer_not_found"))
            return
        if len(answer.text) > sent:
            yield len(answer.text), answer.text[sent:]
            sent, last_sent = len(answer.text), clock()
        if answer.outcome not in ("pending", CANCELLING):
            yield sent, end_of(answer)
            return
        if clock() >= until:
            late = AppError("The answer did not end in time.", code="deadline_exceeded")
            yield sent, Failed(late)
            return
        if clock() - last_sent >= heartbeat:
            yield -1, PING
            last_sent = clock()
        following()
        gevent.sleep(POLL_INTERVAL)


def end_of(answer: StoredAnswer) -> Done | Failed:
    """A stored answer's last event, as its relay sent it."""
    if answer.outcome == "ok":
        return Done(
            answer.finish_reason,
            answer.usage or {},
            answer.code_blocks,
            "",
            answer.timing or {},
            answer.cost_usd,
        )
    if answer.outcome == INTERRUPTED:
        message = (
            "The answer was interrupted: the server generating it stopped. "
            "What arrived is kept; Continue carries it on."
        )
        return Failed(AppError(message, code=INTERRUPTED))
    return Failed(AppError(f"The answer ended early ({answer.outcome}).", code=answer.outcome))


class Jobs:
    """This worker's resumable answers by id; finished ones stay KEEP_FINISHED seconds."""

    def __init__(
        self,
        grace: float,
        heartbeat: float,
        eventlog: EventLog | None = None,
        followed_elsewhere: Callable[[str], bool] = lambda answer_id: False,
    ) -> None:
        self.grace = grace
        self.heartbeat = heartbeat
        self.eventlog = eventlog
        self.followed_elsewhere = followed_elsewhere
        self._jobs: dict[str, Job] = {}
        self._running: set[str] = set()

    def start(
        self,
        relay: Relay,
        answer_id: str,
        owner: str,
        prefix: str = "",
        client_socket: object = None,
    ) -> Job:
        """The started `relay` as a job, for its response to read (`Job.driven`)."""
        job = Job(
            relay,
            answer_id,
            prefix=prefix,
            grace=self.grace,
            heartbeat=self.heartbeat,
            on_finished=self._finished,
            eventlog=self.eventlog,
            owner=owner,
            followed_elsewhere=self.followed_elsewhere,
            client_socket=client_socket,
        )
        self._jobs[answer_id] = job
        self._running.add(answer_id)
        return job

    def get(self, answer_id: str) -> Job | None:
        return self._jobs.get(answer_id)

    def running(self) -> set[str]:
        """The ids of the answers running here (not finished): the live set, to read."""
        return self._running

    def cancel(self, answer_id: str) -> bool:
        """Cancel the answer if it runs here; False if it does not (or has ended)."""
        job = self._jobs.get(answer_id)
        if job is None or job.finished:
            return False
        job.cancel()
        return True

    def stop_all(self, wait: float) -> None:
        """A worker's exit: end every answer running here (recorded as
        `server_shutdown`, not left pending), waiting up to `wait` s for them."""
        running = [job for job in self._jobs.values() if not job.finished]
        for job in running:
            job.cancel("server_shutdown")
        until = time.monotonic() + wait
        while time.monotonic() < until and not all(job.finished for job in running):
            gevent.sleep(0.05)

    def health(self) -> dict[str, str]:
        if self.eventlog is None:
            return {"resume_events": "this instance"}
        return {"resume_events": "redis" if self.eventlog.healthy else "redis down: this instance"}

    def _finished(self, job: Job) -> None:
        self._running.discard(job.answer_id)
        # A loop timer (its callback only deletes an entry): no greenlet per answer.
        job.forget_timer = gevent.get_hub().loop.timer(KEEP_FINISHED)
        job.forget_timer.start(self._forget, job)

    def _forget(self, job: Job) -> None:
        if self._jobs.get(job.answer_id) is job:
            del self._jobs[job.answer_id]
