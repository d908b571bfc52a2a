"""Answers into the history store, off the per-token path and off the way to the
first token.

A `Recorder` keeps one writer greenlet per worker:
- `begin()` makes the answer's ids at once (its `X-Answer-ID`) and queues its
  row; the writer inserts the queued rows COALESCE (50 ms) later, in the
  worker's quiet moments (webapp/quiet.py), BATCH answers a transaction; it
  waits QUIET_WAIT at most in all for them, then writes the rest at once.
  Three hundred answers starting together cost three commits, after their
  first tokens rather than between them (measured: the inserts of such a
  burst went from ~50 ms after its start to ~300 ms, when the median first
  token was at ~200 ms).
- every SAVE_INTERVAL seconds, the writer saves what the answers that grew added
  since, in one transaction, so a crash loses at most that much (and the wait
  for a quiet moment); only while the answer runs, so a save never cuts an end.
  The others' rows are touched: a running row untouched for ANSWER_LEASE belongs
  to an instance that died, and its readers hear that it was interrupted.
- the relay's cleanup (run once when the answer ends, whatever happened)
  queues the final text, code blocks, finish reason, usage and timing, and
  wakes the writer: they are written as new rows are, with every other answer
  that started or ended meanwhile. Reads in this worker flush the queue first;
  another worker sees a new answer or an end 50 ms later, or up to QUIET_WAIT
  more when this worker is busy. An end is never written before its row.
- with HISTORY_MAX_ANSWERS, each owner with new answers in a write loses its oldest
  past the bound, in a transaction of its own (a failed prune loses no new row).

The relay never knows: it appends to a list, and the writer reads that list's
length to see growth. A failed write is logged and counted, and never reaches
the stream.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass
from typing import NamedTuple

import gevent
from gevent.event import Event
from gevent.lock import Semaphore
from sqlalchemy.engine import Connection

from webapp.answers import files
from webapp.answers.store import FinishedAnswer, NewAnswer, Store, StoredAnswer
from webapp.errors import HistoryUnavailable
from webapp.quiet import until_quiet
from webapp.relay.attachments import Attachment, changes, new_versions
from webapp.relay.codeblocks import extract_code_blocks
from webapp.relay.events import Done
from webapp.relay.generation import Relay

log = logging.getLogger("webapp.answers.store")

SAVE_INTERVAL = 2.0
# How often a Stop sent to another worker or instance is looked for: by the writer
# (through the row) and by a running job (through Redis).
CANCEL_CHECK = 0.4
COALESCE = 0.05
# Writes wait this long at most for a quiet moment, and take this many answers a
# transaction (~2 ms of a worker's time with SQLite), so that they delay no
# event by more.
QUIET_WAIT = 0.5
BATCH = 100
PURGE_INTERVAL = 3600.0


class Recorded(NamedTuple):
    """The ids a recorded answer got when it began (its X-Answer-ID, X-Conversation-ID)."""

    answer_id: str
    conversation_id: str


@dataclass(slots=True)
class Recording:
    """One answer being recorded: its row, the relay, and the text it continues."""

    answer_id: str
    owner: str
    relay: Relay
    prefix: str = ""  # a Continue: the stored text this answer carries on
    saved_parts: int = 0  # the relay's parts in its row's text
    saved_chars: int = 0  # the length of its row's text: prefix and those parts
    written: bool = False  # its row is in the database
    lost: bool = False  # its row could not be written: nothing more to save

    def text(self) -> str:
        return self.prefix + self.relay.text()


class Recorder:
    """Records answers in `store`; see the module docstring for when it writes."""

    def __init__(
        self,
        store: Store,
        *,
        history_days: int = 0,
        max_answers: int = 0,
        on_failure: Callable[[str], None] = lambda operation: None,
        on_cancel: Callable[[str], object] = lambda answer_id: None,
        cancellable: Callable[[], Collection[str]] = list,
        interval: float = SAVE_INTERVAL,
    ) -> None:
        self.store = store
        self.upkeep = Upkeep(
            store,
            history_days=history_days,
            max_answers=max_answers,
            on_failure=on_failure,
            on_cancel=on_cancel,
            cancellable=cancellable,
        )
        self._interval = interval
        self._active: dict[str, Recording] = {}
        self._queued: list[tuple[NewAnswer, Recording]] = []
        self._ended: list[FinishedAnswer] = []
        self._wake = Event()
        # One flush at a time (the writer's, a read's): with a database whose calls
        # yield (PostgreSQL), a second could write an end while its row's insert is
        # still uncommitted in the first, and update nothing.
        self._flushing = Semaphore()
        self._writer: gevent.Greenlet[..., None] | None = None

    def begin(
        self,
        relay: Relay,
        owner: str,
        *,
        prompt: str,
        language: str | None,
        conversation_id: str | None = None,
        parent_id: str | None = None,
        continues: StoredAnswer | None = None,
    ) -> Recorded | None:
        """Queue the answer's row (or reopen the answer it continues) and arrange for
        its end to be saved. Returns the answer's and its conversation's ids, or
        None if the store failed (the answer goes ahead, unrecorded)."""
        if continues is not None:
            try:
                self.store.reopen(owner, continues.id)
            except HistoryUnavailable:
                self.upkeep.failed("create")
                return None
            recording = Recording(
                continues.id,
                owner,
                relay,
                continues.text,
                saved_chars=len(continues.text),
                written=True,
            )
            ids = Recorded(continues.id, continues.conversation_id)
        else:
            new = Store.new_answer(
                owner,
                prompt=prompt,
                language=language,
                model=relay.request.model,
                temperature=relay.request.temperature,
                max_tokens=relay.request.max_tokens,
                conversation_id=conversation_id,
                parent_id=parent_id,
            )
            new.files = relay.attachments
            recording = Recording(new.id, owner, relay)
            self._queued.append((new, recording))
            ids = Recorded(new.id, new.conversation_id)
        self._active[recording.answer_id] = recording
        relay.cleanups.append(lambda: self._end(recording, continues))
        if self._writer is None or self._writer.dead:
            self._writer = gevent.spawn(self._write)
        self._wake.set()
        return ids

    def running(self, answer_id: str) -> bool:
        """Whether the answer runs in this worker, short of its end. Once its relay
        has its end (sent, or being sent to a client slow to take it), the end is
        recorded when the relay closes, a moment later: a read waits for that."""
        recording = self._active.get(answer_id)
        return recording is not None and recording.relay.end is None

    def flush(self, most: int | None = None) -> None:
        """Write what is queued now (at `most` new and `most` ended answers), in one
        transaction: new answers, then ended ones (the writer does this on its own;
        reads call it first, for all). Waits for a flush in progress to commit."""
        with self._flushing:
            self._flush(most)

    def _flush(self, most: int | None) -> None:
        ended: list[FinishedAnswer] = []
        if most is None:
            queued, self._queued = self._queued, []
            ended, self._ended = self._ended, []
        else:
            queued, self._queued = self._queued[:most], self._queued[most:]
            # An end is written with or after its row, never before: the end of an
            # answer whose row is still queued for a later batch waits for it.
            later = {recording.answer_id for _, recording in self._queued}
            kept: list[FinishedAnswer] = []
            for end in self._ended:
                (ended if len(ended) < most and end.id not in later else kept).append(end)
            self._ended = kept
        if not queued and not ended:
            return
        try:
            self.store.write([new for new, _ in queued], ended, _files_of(queued, ended))
        except HistoryUnavailable:
            self.upkeep.failed("create" if queued else "finish")
            for _, recording in queued:
                recording.lost = True
                self._active.pop(recording.answer_id, None)
            return
        for _, recording in queued:
            recording.written = True
        if self.upkeep.max_answers and queued:
            self.upkeep.prune({new.owner for new, _ in queued})

    def close(self) -> None:
        """Write what is queued, stop the writer, close the database's connections
        (a worker's exit)."""
        self.flush()
        if self._writer is not None:
            self._writer.kill()
        self.store.close()

    def _end(self, recording: Recording, continued: StoredAnswer | None) -> None:
        self._active.pop(recording.answer_id, None)
        relay = recording.relay
        if continued is None and relay.http_status != 200 and not relay.parts:
            # Refused before it began (the client got an error status): nothing to keep.
            self._queued = [q for q in self._queued if q[1] is not recording]
            if recording.written:
                try:
                    self.store.delete_answer(recording.owner, recording.answer_id)
                except HistoryUnavailable:
                    self.upkeep.failed("finish")
            return
        if recording.lost:
            return
        self._ended.append(finished(recording, continued))
        if self._writer is None or self._writer.dead:
            self._writer = gevent.spawn(self._write)
        self._wake.set()

    def _write(self) -> None:
        """The writer: queued rows as soon as the loop is free, the text of the
        answers that grew every interval. Ends when nothing is left to watch."""
        next_save = time.monotonic() + self._interval
        while self._active or self._queued or self._ended:
            wait = max(0.0, next_save - time.monotonic())
            if self.upkeep.cancellable():  # a Stop may reach a resumable answer through its row
                wait = min(wait, CANCEL_CHECK)
            if self._wake.wait(wait):
                # Let a burst gather: one transaction for the answers that start
                # (or end) together, not one each between their requests.
                gevent.sleep(COALESCE)
            self._wake.clear()
            self.upkeep.check_cancels()  # a Stop is not held back for a quiet moment
            # Writes wait for the loop's quiet moments (webapp/quiet.py), a batch at
            # a time: not between a burst's requests and their first tokens. At most
            # QUIET_WAIT in all per pass, then the rest goes at once; and only what
            # was queued when the pass began, so that a stream of new answers cannot
            # keep the writer from its other work.
            waited_until = time.monotonic() + QUIET_WAIT
            batches = -(-len(self._queued) // BATCH) + -(-len(self._ended) // BATCH)
            for _ in range(batches):
                if not (self._queued or self._ended):
                    break
                self._until_quiet(waited_until)
                self.flush(BATCH)
                self.upkeep.check_cancels()
            if time.monotonic() >= next_save:
                self._until_quiet(waited_until)
                self.upkeep.save_progress(self._active.values())
                self.upkeep.maybe_purge()
                next_save = time.monotonic() + self._interval

    @staticmethod
    def _until_quiet(deadline: float) -> None:
        left = deadline - time.monotonic()
        if left > 0:
            until_quiet(left)


class Upkeep:
    """The writer's work besides writing rows, each pass: Stops that reached another
    worker (through the row), the running answers' growth and leases, and the bounds
    on what is kept (HISTORY_MAX_ANSWERS, HISTORY_DAYS). A failure is logged and
    counted (`on_failure`), never raised."""

    def __init__(
        self,
        store: Store,
        *,
        history_days: int,
        max_answers: int,
        on_failure: Callable[[str], None],
        on_cancel: Callable[[str], object],
        cancellable: Callable[[], Collection[str]],
    ) -> None:
        self.store = store
        self.history_days = history_days
        self.max_answers = max_answers
        self.on_failure = on_failure
        self.on_cancel = on_cancel
        self.cancellable = cancellable
        self._purged_at = 0.0

    def prune(self, owners: set[str]) -> None:
        """HISTORY_MAX_ANSWERS: only owners who just added answers can be past it."""
        try:
            gone = self.store.prune(owners, self.max_answers)
        except HistoryUnavailable:
            self.failed("prune")
            return
        if gone:
            log.info("history prune", extra={"fields": {"deleted": gone}})

    def check_cancels(self) -> None:
        """A Stop that reached another worker is a mark in the row: honour it here."""
        running = self.cancellable()  # resumable answers: the others end with their client
        if not running:
            return
        try:
            wanted = self.store.cancel_requested()
        except HistoryUnavailable:
            self.failed("cancel")
            return
        for answer_id in wanted:
            if answer_id in running:
                self.on_cancel(answer_id)

    def save_progress(self, active: Iterable[Recording]) -> None:
        """What each answer added since its last save, not its whole text again: a
        long answer's saves cost what it grew, not its length times its saves (at
        300 tokens, 7 joins of up to 300 parts were ~15% of history's CPU)."""
        grown: list[tuple[Recording, int, str]] = []
        idle: list[str] = []
        for recording in active:
            parts = recording.relay.parts
            count = len(parts)
            if recording.written and count != recording.saved_parts:
                grown.append((recording, count, "".join(parts[recording.saved_parts : count])))
            elif recording.written:
                idle.append(recording.answer_id)
        if idle:  # a save renews a row's lease; these have nothing to save
            try:
                self.store.renew(idle)
            except HistoryUnavailable:
                self.failed("save")
        if not grown:
            return
        try:
            self.store.save_growth([(r.answer_id, r.saved_chars, added) for r, _, added in grown])
        except HistoryUnavailable:
            self.failed("save")
            return
        for recording, count, added in grown:
            recording.saved_parts = count
            recording.saved_chars += len(added)

    def maybe_purge(self) -> None:
        """HISTORY_DAYS: a bounded batch of old answers, at most once an hour."""
        if self.history_days and time.monotonic() - self._purged_at >= PURGE_INTERVAL:
            self.purge_now()

    def purge_now(self) -> int:
        """One purge batch now (at start-up, then from the writer); 0 when HISTORY_DAYS is 0."""
        if not self.history_days:
            return 0
        self._purged_at = time.monotonic()
        try:
            gone = self.store.purge(self.history_days)
        except HistoryUnavailable:
            self.failed("purge")
            return 0
        if gone:
            log.info("history purge", extra={"fields": {"deleted": gone}})
        return gone

    def failed(self, operation: str) -> None:
        log.exception("history write failed", extra={"fields": {"operation": operation}})
        self.on_failure(operation)


def finished(recording: Recording, continued: StoredAnswer | None) -> FinishedAnswer:
    """What an ended answer's row holds: its whole text (a Continue's too), its blocks
    and usage, and the files it changed (with their diffs) and their new versions."""
    relay = recording.relay
    text = recording.text()
    usage = relay.usage
    if continued is not None and continued.usage and usage:
        usage = {k: usage.get(k, 0) + continued.usage.get(k, 0) for k in usage}
    final, end = relay.final, relay.end
    changed: list[dict[str, object]] | None = None
    if isinstance(end, Done) and continued is None:
        # The client was told these; the same text, so the same blocks.
        blocks, timing, changed = end.code_blocks, end.timing, end.files
    else:  # a Continue's blocks span the stored text too; a failure sent none
        blocks, timing = extract_code_blocks(text), relay.timing()
        if relay.attachments and relay.outcome == "ok":
            changed = changes(text, blocks, relay.attachments)
    results: list[Attachment] = []
    if changed:
        names = {entry["name"] for entry in changed}
        versions = new_versions(blocks, relay.attachments)
        results = [file for file in versions if file.name in names]
    return FinishedAnswer(
        recording.answer_id,
        text,
        blocks,
        final.finish_reason if final else None,
        relay.outcome,
        usage,
        relay.cost_usd,
        timing,
        changed if relay.attachments else None,
        tuple(results),
    )


def _files_of(
    queued: list[tuple[NewAnswer, Recording]], ended: list[FinishedAnswer]
) -> Callable[[Connection], None] | None:
    """What Store.write also writes: the new answers' attachments and the versions
    the ended ones gave (None, the usual case, when there are none)."""
    attached = [(new.id, new.files) for new, _ in queued if new.files]
    given = [(end.id, end.results) for end in ended if end.results]
    if not attached and not given:
        return None

    def write(connection: Connection) -> None:
        for answer_id, held in attached:
            files.link(connection, answer_id, files.ATTACHED, held)
        for answer_id, held in given:
            files.unlink(connection, answer_id, files.RESULT)  # a Continue's: the new ones
            files.link(connection, answer_id, files.RESULT, held)

    return write
