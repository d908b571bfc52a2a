"""Answers into the history store, off the per-token path.

A `Recorder` writes three times per answer at most, plus progress:
- `begin()` creates the row before the answer starts (its id is the
  `X-Answer-ID` header);
- one greenlet per worker saves, every SAVE_INTERVAL seconds, the text of the
  answers that grew since, so a crash loses at most that much;
- the relay's cleanup (run once when the answer ends, whatever happened)
  saves the final text, code blocks, finish reason, usage and timing.

The relay itself never knows: it appends to a list, and the recorder reads
that list's length to see growth. A failed write is logged and counted, and
never reaches the stream.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

import gevent

from webapp.codeblocks import extract_code_blocks
from webapp.errors import HistoryUnavailable
from webapp.generation import Relay
from webapp.history import Store, StoredAnswer

log = logging.getLogger("webapp.history")

SAVE_INTERVAL = 2.0
PURGE_INTERVAL = 3600.0


@dataclass(slots=True)
class Recording:
    """One answer being recorded: its row, the relay, and the text it continues."""

    answer_id: str
    owner: str
    relay: Relay
    prefix: str = ""  # a Continue: the stored text this answer carries on
    saved_parts: int = 0

    def text(self) -> str:
        return self.prefix + self.relay.text()


class Recorder:
    """Records answers in `store`; see the module docstring for when it writes."""

    def __init__(
        self,
        store: Store,
        *,
        history_days: int = 0,
        on_failure: Callable[[str], None] = lambda operation: None,
        interval: float = SAVE_INTERVAL,
    ) -> None:
        self.store = store
        self.history_days = history_days
        self._on_failure = on_failure
        self._interval = interval
        self._active: dict[str, Recording] = {}
        self._saver: gevent.Greenlet[..., None] | None = None
        self._purged_at = 0.0

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
    ) -> tuple[str, str] | None:
        """Create the answer's row (or reopen the one it continues) and arrange for
        its end to be saved. Returns the answer's and its conversation's ids, or
        None if the store failed (the answer goes ahead, unrecorded)."""
        try:
            if continues is not None:
                self.store.reopen(owner, continues.id)
                answer_id, conversation_id = continues.id, continues.conversation_id
            else:
                row = self.store.create(
                    owner,
                    prompt=prompt,
                    language=language,
                    model=relay.request.model,
                    temperature=relay.request.temperature,
                    max_tokens=relay.request.max_tokens,
                    conversation_id=conversation_id,
                    parent_id=parent_id,
                )
                answer_id, conversation_id = row.id, row.conversation_id
        except HistoryUnavailable:
            self._failed("create")
            return None
        recording = Recording(answer_id, owner, relay, continues.text if continues else "")
        self._active[answer_id] = recording
        relay.cleanups.append(lambda: self._end(recording, continues))
        if self._saver is None or self._saver.dead:
            self._saver = gevent.spawn(self._save_progress)
        return answer_id, conversation_id

    def _end(self, recording: Recording, continued: StoredAnswer | None) -> None:
        self._active.pop(recording.answer_id, None)
        relay = recording.relay
        try:
            if continued is None and relay.http_status != 200 and not relay.parts:
                # Refused before it began (the client got an error status): nothing to keep.
                self.store.delete_answer(recording.owner, recording.answer_id)
                return
            text = recording.text()
            usage = relay.usage
            if continued is not None and continued.usage and usage:
                usage = {k: usage.get(k, 0) + continued.usage.get(k, 0) for k in usage}
            final = relay.final
            self.store.finish(
                recording.answer_id,
                text=text,
                code_blocks=extract_code_blocks(text),
                finish_reason=final.finish_reason if final else None,
                outcome=relay.outcome,
                usage=usage,
                cost_usd=relay.cost_usd,
                timing=relay.timing(),
            )
        except HistoryUnavailable:
            self._failed("finish")

    def _save_progress(self) -> None:
        """Every interval: the text of each answer that grew. Ends when none is left."""
        while self._active:
            gevent.sleep(self._interval)
            for recording in list(self._active.values()):
                grown = len(recording.relay.parts)
                if grown == recording.saved_parts or recording.answer_id not in self._active:
                    continue
                try:
                    self.store.save_text(recording.answer_id, recording.text())
                    recording.saved_parts = grown
                except HistoryUnavailable:
                    self._failed("save")
            self._maybe_purge()

    def _maybe_purge(self) -> None:
        """HISTORY_DAYS: a bounded batch of old answers, at most once an interval."""
        if not self.history_days or time.monotonic() - self._purged_at < PURGE_INTERVAL:
            return
        self._purged_at = time.monotonic()
        try:
            gone = self.store.purge(self.history_days)
            if gone:
                log.info("history purge", extra={"fields": {"deleted": gone}})
        except HistoryUnavailable:
            self._failed("purge")

    def purge_now(self) -> int:
        """Run one purge batch now (start-up, tests); 0 when HISTORY_DAYS is 0."""
        if not self.history_days:
            return 0
        self._purged_at = time.monotonic()
        try:
            return self.store.purge(self.history_days)
        except HistoryUnavailable:
            self._failed("purge")
            return 0

    def _failed(self, operation: str) -> None:
        log.exception("history write failed", extra={"fields": {"operation": operation}})
        self._on_failure(operation)
