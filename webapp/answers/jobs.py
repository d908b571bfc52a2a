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

The job ties its parts together: the log and each reader's place in it
(`JobLog`, `Cursor`: joblog.py), who waits on it (`Fanout`: fanout.py), who
reads the relay and how long the answer outlives its readers (`Driver`,
`Grace`: handoff.py).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from typing import Any

import gevent

from webapp.answers.eventlog import EventLog
from webapp.answers.fanout import Fanout
from webapp.answers.handoff import Driver, Grace
from webapp.answers.joblog import JobLog, Numbered
from webapp.answers.store import CANCELLING, INTERRUPTED, StoredAnswer
from webapp.errors import AppError, ClientTooSlow
from webapp.relay.events import PING, Done, Failed, RelayEvent, close_source
from webapp.relay.generation import Relay, cancelled

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


class Job:
    """One resumable answer in this worker; see the module docstring. It is its
    relay's keeper (`reading`, `left`: the starting response reads the relay
    itself) and ties together the answer's log (`JobLog`), who waits on it
    (`Fanout`), who reads the relay (`Driver`) and how long it outlives its
    readers (`Grace`).

    Contract: `driven()` once, for the response that started the answer;
    `follow(after)` for any other reader, any number of times; `cancel()` from
    anywhere; `text()` and `finished` at any time. `on_finished(job)` is called
    once, when the relay has ended and the log holds its end; `forget_after`
    then times the job's stay in memory.
    """

    __slots__ = (
        "_driver",
        "_fanout",
        "_followed_elsewhere",
        "_forget_timer",
        "_grace",
        "_log",
        "_on_finished",
        "_relay",
        "_text",
        "answer_id",
        "prefix",
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
        self._relay: Relay | None = relay
        self._text = ""
        self.answer_id = answer_id
        self.prefix = prefix  # a Continue: the stored text it carries on, and numbers from
        self._log = JobLog(len(prefix))
        self._fanout = Fanout(self._log, heartbeat)
        self._driver = Driver()
        self._on_finished = on_finished
        self._followed_elsewhere = followed_elsewhere
        self._forget_timer: Any = None
        relay.keep_with(self, client_socket)
        relay.cleanups.append(self._end)
        # Until the response that started it drives it, nobody does: if it never
        # does (the server dropped the response unread), it is ended as abandoned.
        # Not sooner than UNDRIVEN: with RESUME_GRACE=0 the response must get there.
        self._grace = Grace(grace, self._abandon)
        self._grace.arm(max(grace, UNDRIVEN))
        if eventlog is not None:
            self._watch(1)
            gevent.spawn(self._publish, eventlog, owner)

    @property
    def start(self) -> int:
        """The id the answer's events number from: the length of the text it continues."""
        return self._log.start

    @property
    def finished(self) -> bool:
        return self._log.ended

    @property
    def events(self) -> list[RelayEvent]:
        """The log (it may lag the relay while only the driver reads)."""
        return self._log.events

    @property
    def followers(self) -> int:
        """The readers: the driver and the followers."""
        return self._grace.readers

    @property
    def watchers(self) -> int:
        """Who waits for the next event: the followers but the driver, the publisher."""
        return self._fanout.watchers

    def _sync(self) -> None:
        if self._relay is not None:  # else finished: the log is whole
            self._log.sync(self._relay.parts)

    def _grew(self) -> None:
        """The relay's new text, while anyone watches: log it and wake them."""
        self._sync()
        self._fanout.wake()

    def _watch(self, change: int) -> None:
        """One watcher more (1) or fewer (-1); the relay tells of each text while any."""
        watched = self._fanout.watch(change)
        if self._relay is not None:
            self._relay.report_growth(self._grew if watched else None)

    # Driving: the response that started the answer reads its relay -------------

    def driven(self) -> Iterator[RelayEvent]:
        """The answer's events for the response that started it: the relay's own,
        read in that response's greenlet, nothing between (the relay tells this job
        `reading`, `left`, and each text while anyone watches). Stopped before it
        began, the answer gives that response its end."""
        relay = self._relay
        if relay is None or self._driver.taken():
            return (event for _, event in self.follow(self.start))
        return relay.events()

    def reading(self) -> None:
        """The relay's keeper: its starting response reads it."""
        self._driver.reading()
        self._grace.attach()

    def left(self) -> None:
        """The relay's keeper: its starting response stopped reading; an answer that
        goes on (its relay still open) is read on by the job's own greenlet."""
        self._sync()  # from here the runner logs every event
        self._driver.left(self._relay)
        self._grace.detach(self.finished)

    def _end(self) -> None:
        """The relay has ended (a cleanup, run when it closed the upstream): log its
        end (a cancel if it sent none: stopped or killed), and tell everyone."""
        if self.finished:
            return
        self._sync()
        relay = self._relay
        assert relay is not None  # not finished
        self._text = self.prefix + relay.text()
        self._log.end(relay.end if relay.end is not None else Failed(cancelled()), self._text)
        relay.keep_with(None)
        relay.report_growth(None)
        self._relay = None
        self._fanout.wake()
        self._on_finished(self)

    def text(self) -> str:
        return self._text if self._relay is None else self.prefix + self._relay.text()

    def forget_after(self, seconds: float, forget: Callable[[Job], None]) -> None:
        """Call `forget(self)` in `seconds`, from a loop timer (no greenlet per answer)."""
        self._forget_timer = gevent.get_hub().loop.timer(seconds)
        self._forget_timer.start(forget, self)

    def _publish(self, eventlog: EventLog, owner: str) -> None:
        try:
            self._fanout.publish(eventlog, self.answer_id, owner, self.cancel)
        finally:
            self._watch(-1)  # the last watcher gone, the relay stops reporting texts

    def follow(
        self, after: int, client_gone: Callable[[], bool] = lambda: False
    ) -> Iterator[Numbered]:
        """The events after `after` characters (`Fanout.follow`). The grace starts
        when the last reader goes, this one included."""
        self._grace.attach()
        self._watch(1)
        self._sync()  # from here the relay reports each text (`_grew`)
        try:
            yield from self._fanout.follow(after, client_gone)
        finally:
            self._watch(-1)
            self._grace.detach(self.finished)

    def _abandon(self) -> None:
        """The grace ran out: end the answer as a plain one whose client left, unless
        someone reads it here or through another worker."""
        if self._grace.readers or self.finished:
            return
        # A reader who re-attached through another worker follows the row or Redis,
        # not this job: it keeps the answer going as a reader here would.
        followed = self._followed_elsewhere(self.answer_id)
        if self._grace.readers or self.finished:
            return  # someone came, or it ended, while it looked
        if followed:
            self._grace.arm()
            return
        relay = self._relay
        if relay is None or relay.closed or relay.end is not None:
            return  # ending already, as it ended
        log.info("resumable answer abandoned", extra={"fields": {"answer": self.answer_id}})
        self._driver.stop(relay, "client_disconnected")  # as a plain answer whose client left

    def cancel(self, outcome: str = "cancelled") -> None:
        """Stop now, whoever follows: the upstream is closed within a second, and the
        answer is recorded with `outcome`. One that has its end is left as it ended."""
        relay = self._relay
        if relay is None or relay.end is not None or relay.closed:
            return  # finished, or its end is on the way
        self._driver.stop(relay, outcome)


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
            answer.file_changes or [],
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
        job.forget_after(KEEP_FINISHED, self._forget)

    def _forget(self, job: Job) -> None:
        if self._jobs.get(job.answer_id) is job:
            del self._jobs[job.answer_id]
