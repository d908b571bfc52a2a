"""An answer's life after it starts, in one place: find it, follow it, stop it.

    Answers.answer_of(id, owner)             the stored answer, or a 404
    Answers.start(params, owner, ...)        a new answer (webapp/answers/starting.py)
    Answers.follow(id, owner, after, gone)   its events after `after` characters
    Answers.cancel(id, owner)                Stop, wherever it runs

An answer is followed one of three ways, chosen here: live from its job when it
runs in this worker; from its event log in Redis when it runs on another worker
or machine (REDIS_URL); else through its stored row, polled. A Stop takes one of
two ways: the job, when it runs here; else a mark (in Redis and in the row) that
the worker running it looks at. The routes (webapp/web/) only render; they never
choose.

A row another worker just wrote may not be readable yet (its writer coalesces,
webapp/answers/recording.py): reads that may be about a new row read again for
FRESH_WAIT, only when the id's time says the row may be that new.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TypeVar

import gevent

from webapp.answers.eventlog import EventLog, RedisUnavailable
from webapp.answers.files import AnswerFiles, FileStore
from webapp.answers.joblog import Numbered
from webapp.answers.jobs import FOLLOWER_WRITE_STALL, Jobs, follow_stored, writes_bounded
from webapp.answers.recording import COALESCE, QUIET_WAIT, SAVE_INTERVAL, Recorder
from webapp.answers.starting import Started, Starter
from webapp.answers.store import (
    CANCELLING,
    INTERRUPTED,
    Store,
    StoredAnswer,
    may_be_new,
    now,
)
from webapp.config import Config
from webapp.errors import HistoryUnavailable, NotFound
from webapp.relay.events import PING
from webapp.relay.generation import GenerationService
from webapp.relay.schema import GenerateCodeRequest

# The worker running an answer writes its row COALESCE after the start and its end
# COALESCE after the end, up to QUIET_WAIT later when busy, and its client can hear
# of both sooner. A request that another worker gets in that moment (a Stop, a
# re-attachment, a follow-up, a Continue) reads again every FRESH_POLL until it sees
# them, for FRESH_WAIT at most. The writer may be in its wait for a quiet moment when
# the write is queued, then wait again: FRESH_WAIT covers both.
FRESH_WAIT = COALESCE + 2 * QUIET_WAIT + 0.25
FRESH_POLL = 0.1
# Each waiting request holds a greenlet and reads every FRESH_POLL: a flood of made-up
# recent ids gets no more than this many waiting at once in a worker.
MOST_WAITING = 32

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Followed:
    """A reader's view of an answer: its events, its text so far (for the page's code
    blocks), and which way it is followed (`job`, `redis` or `store`)."""

    events: Iterator[Numbered]
    text: Callable[[], str]
    way: str


class Freshness:
    """Reads that may be about a row another worker has not written yet (see the module
    docstring): `fresh` reads again until it sees it, `settled` says whether a stored
    answer's state is whole. At most MOST_WAITING requests wait at once in a worker."""

    def __init__(self, recorder: Recorder | None, config: Config) -> None:
        self.recorder = recorder
        self.config = config
        self._waiting = 0

    def fresh(
        self,
        read: Callable[[], T],
        seen: Callable[[T], bool],
        found: T,
        *,
        row_id: str,
        missing: bool,
    ) -> T:
        """`found` (a first `read()`), or `read()` again every FRESH_POLL until `seen`
        says it holds what another worker may not have written yet, for FRESH_WAIT at
        most. When `found` holds nothing (`missing`), only if `row_id`'s time says its
        row may be new. Past MOST_WAITING requests waiting in this worker, `found`."""
        if seen(found) or self._waiting >= MOST_WAITING:
            return found
        if missing and not may_be_new(row_id, within=FRESH_WAIT):
            return found
        self._waiting += 1
        try:
            until = time.monotonic() + FRESH_WAIT
            while not seen(found) and time.monotonic() < until:
                gevent.sleep(FRESH_POLL)
                if self.recorder is not None:
                    self.recorder.flush()  # what this worker just queued, as every read here
                found = read()
            return found
        finally:
            self._waiting -= 1

    def settled(self, answer: StoredAnswer) -> bool:
        """Whether an answer's stored state is whole: it ended; or it runs here, short
        of its end; or nobody will end it (unchanged for longer than an answer can run
        without a save: its worker is gone). Not: it runs, or is being stopped,
        elsewhere, or ended there with its end on the way."""
        if answer.outcome not in ("pending", CANCELLING):
            return True
        if self.recorder is not None and self.recorder.running(answer.id):
            return True
        longest = self.config.total_timeout + self.config.resume_grace + 2 * SAVE_INTERVAL
        return (now() - answer.updated_at).total_seconds() > longest


class Answers:
    """Stored and running answers of this worker, its instance and the others, for
    one owner at a time: another owner's answer is a 404, as a missing one is.

    Built once by the app factory over the worker's jobs, the recorder (None with
    HISTORY=off) and the settings. Every read flushes this worker's queued writes
    first, so an answer that just started here is in what is read."""

    def __init__(
        self,
        *,
        jobs: Jobs,
        recorder: Recorder | None,
        config: Config,
        generation: GenerationService,
    ) -> None:
        self.jobs = jobs
        self.recorder = recorder
        self.config = config
        self.freshness = Freshness(recorder, config)
        self._file_store: FileStore | None = None
        self._starter = Starter(self, generation)

    # Starting -----------------------------------------------------------------------

    def start(
        self,
        params: GenerateCodeRequest,
        owner: str,
        *,
        request_id: str,
        client: str,
        client_socket: object = None,
        admit: Callable[[], Callable[[], None]] | None = None,
    ) -> Started:
        """A new answer, the owner's (webapp/answers/starting.py): what it builds on, its
        relay (not started yet) and its record."""
        return self._starter.start(
            params,
            owner,
            request_id=request_id,
            client=client,
            client_socket=client_socket,
            admit=admit,
        )

    # Reading ------------------------------------------------------------------------

    def store(self) -> Store:
        """The history store; a 404 `history_off` when the server keeps no history."""
        if self.recorder is None:
            raise NotFound("This server keeps no history (HISTORY=off).", code="history_off")
        self.recorder.flush()
        return self.recorder.store

    def answer_of(self, answer_id: str, owner: str, *, ended: bool = False) -> StoredAnswer:
        """One of the owner's answers, or a 404. One that another worker just started
        (or, with `ended`, just ended) may not be written yet: read again for
        FRESH_WAIT. A made-up id is a 404 at once."""
        stored = self.store()

        def read() -> StoredAnswer | None:
            return stored.get(owner, answer_id)

        def seen(answer: StoredAnswer | None) -> bool:
            return answer is not None and (not ended or self.freshness.settled(answer))

        found = read()
        found = self.freshness.fresh(read, seen, found, row_id=answer_id, missing=found is None)
        if found is None:
            raise NotFound("There is no answer of yours with that id.")
        return found

    def files_of(self, answer_id: str, owner: str) -> AnswerFiles:
        """One of the owner's answers' files (a 404 as `answer_of`)."""
        self.answer_of(answer_id, owner)
        return self.files().of(owner, answer_id)

    def files(self) -> FileStore:
        """The answers' files (webapp/answers/files.py), after this worker's writes."""
        stored = self.store()  # flushes this worker's queued writes, as every read does
        if self._file_store is None:
            self._file_store = FileStore(stored.engine)
        return self._file_store

    def locate(self, answer_id: str, owner: str) -> StoredAnswer | None:
        """One of the owner's answers, from the database; None when only Redis knows it
        (another machine's, with its own database); else a 404."""
        eventlog = self.jobs.eventlog
        history_off: NotFound | None = None
        try:
            stored: Store | None = self.store()
        except NotFound as exc:  # HISTORY=off here: another instance's, through Redis only
            stored, history_off = None, exc

        def read() -> tuple[StoredAnswer | None, bool]:
            found = stored.get(owner, answer_id) if stored is not None else None
            elsewhere = (
                found is None and eventlog is not None and _owned(eventlog, answer_id, owner)
            )
            return found, elsewhere

        def known(got: tuple[StoredAnswer | None, bool]) -> bool:
            return got[0] is not None or got[1]

        found, elsewhere = self.freshness.fresh(read, known, read(), row_id=answer_id, missing=True)
        if found is None and not elsewhere:
            if history_off is not None:
                raise history_off  # its 404 says so
            raise NotFound("There is no answer of yours with that id.")
        return found

    # Following ----------------------------------------------------------------------

    def follow(
        self, answer_id: str, owner: str, after: int, client_gone: Callable[[], bool]
    ) -> Followed:
        """The answer's events after `after` characters, then live ones, to its end;
        a reader that stops taking them is let go after FOLLOWER_WRITE_STALL s."""
        followed = self._follow(answer_id, owner, after, client_gone)
        events = writes_bounded(followed.events, FOLLOWER_WRITE_STALL)
        return Followed(events, followed.text, followed.way)

    def _follow(
        self, answer_id: str, owner: str, after: int, client_gone: Callable[[], bool]
    ) -> Followed:
        config = self.config
        until = time.monotonic() + config.total_timeout + config.resume_grace
        eventlog = self.jobs.eventlog
        answer = self.locate(answer_id, owner)
        if answer is None:
            # Another machine's answer, not in this one's database: Redis knows its owner.
            assert eventlog is not None
            events = eventlog.follow(
                answer_id, after, heartbeat=config.heartbeat_interval, until=until
            )
            collected = _Collected()
            return Followed(collected.wrap(events), collected.text, "redis")
        job = self.jobs.get(answer_id)
        if job is not None:
            return Followed(job.follow(after, client_gone), job.text, "job")
        latest, history = [answer], self.store()

        def read() -> StoredAnswer | None:
            found = history.get(owner, answer_id)
            if found is not None:
                latest[0] = found
            return found

        def following() -> None:
            with contextlib.suppress(HistoryUnavailable):  # then it may end at its grace
                history.mark_followed(answer_id)

        def stored_from(sent: int) -> Iterator[Numbered]:
            return follow_stored(
                read, sent, heartbeat=config.heartbeat_interval, until=until, following=following
            )

        if eventlog is None or answer.outcome not in ("pending", CANCELLING):
            return Followed(stored_from(after), lambda: latest[0].text, "store")

        def abandoned() -> bool:
            """Its instance died: the row's lease ran out (a read marks it interrupted);
            what it published past its last save is kept in the row."""
            with contextlib.suppress(HistoryUnavailable, RedisUnavailable):
                found = read()
                if found is not None and found.outcome == INTERRUPTED:
                    history.keep_interrupted_text(answer_id, eventlog.text(answer_id))
                return found is None or found.outcome not in ("pending", CANCELLING)
            return False

        events = eventlog.follow(
            answer_id, after, heartbeat=config.heartbeat_interval, until=until, abandoned=abandoned
        )
        collected = _Collected(answer.text[:after])
        return Followed(collected.wrap(_then(events, after, stored_from)), collected.text, "redis")

    # Stopping -----------------------------------------------------------------------

    def cancel(self, answer_id: str, owner: str) -> str:
        """Stop: the upstream closes within a second, whoever is attached, on any
        worker. Says how: `job` (it ran here), `row` (a mark in its row, for the
        worker running it), `redis` (another machine's), `ended` (it had ended)."""
        eventlog = self.jobs.eventlog
        answer = self.locate(answer_id, owner)
        if answer is None:
            assert eventlog is not None
            eventlog.request_cancel(answer_id)  # another machine's: its job looks
            return "redis"
        if self.jobs.cancel(answer_id):
            return "job"
        if answer.outcome not in ("pending", CANCELLING):
            return "ended"
        self.store().request_cancel(owner, answer_id)  # its worker looks every 0.4 s
        if eventlog is not None:
            with contextlib.suppress(RedisUnavailable):
                eventlog.request_cancel(answer_id)
        return "row"


def _owned(eventlog: EventLog, answer_id: str, owner: str) -> bool:
    try:
        return eventlog.owner_of(answer_id) == owner
    except RedisUnavailable:
        return False


def _then(
    events: Iterator[Numbered], after: int, rest: Callable[[int], Iterator[Numbered]]
) -> Iterator[Numbered]:
    """`events` (from `after` characters on) to their end; if they stop short of one
    (Redis saw the answer's instance die), `rest(characters sent)`: the row's text
    past them, and its end."""
    sent = after
    for end, event in events:
        yield end, event
        if type(event) is not str and event is not PING:
            return  # Done or Failed
        if end >= 0:
            sent = end
    yield from rest(sent)


class _Collected:
    """The text a Redis follower has seen, for the page's code blocks."""

    def __init__(self, known: str = "") -> None:
        self.parts = [known]

    def wrap(self, events: Iterator[Numbered]) -> Iterator[Numbered]:
        for end, event in events:
            if type(event) is str:
                self.parts.append(event)
            yield end, event

    def text(self) -> str:
        return "".join(self.parts)
