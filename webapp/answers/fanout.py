"""Whoever waits on a resumable answer besides its driver: its followers and its
Redis publisher (webapp/answers/jobs.py)."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import gevent
from gevent.event import Event

from webapp.answers.eventlog import PUBLISH_INTERVAL, EventLog, RedisUnavailable
from webapp.answers.joblog import JobLog, Numbered
from webapp.answers.recording import CANCEL_CHECK
from webapp.relay.events import PING
from webapp.relay.watchdog import DISCONNECT_CHECK


class Fanout:
    """Wakes every watcher of one answer's log at once: one Event, swapped and set
    at each wake (a new event, the end, or a tick). One ticker per answer, from
    the first follower on, wakes them every DISCONNECT_CHECK so that they can look
    at their clients and send keep-alives: not one timer per event and watcher.

    Contract: `watch(+1)` / `watch(-1)` as a watcher comes and goes (it returns
    whether any is left: the relay reports each text only then); `wake()` after
    each event logged and at the end; `follow()` is one follower's read of the
    log, live, to its end; `publish()` is the publisher's.
    """

    __slots__ = ("_changed", "_heartbeat", "_log", "_ticker", "_watchers")

    def __init__(self, log: JobLog, heartbeat: float) -> None:
        self._log = log
        self._heartbeat = heartbeat
        self._changed = Event()
        self._watchers = 0  # who waits on `_changed`: the followers, the publisher
        self._ticker: gevent.Greenlet[..., None] | None = None

    @property
    def watchers(self) -> int:
        return self._watchers

    def watch(self, change: int) -> bool:
        """One watcher more (1) or fewer (-1); whether any is left."""
        self._watchers += change
        return self._watchers > 0

    def wake(self) -> None:
        """Wake every watcher: a new event, the end, or a tick."""
        changed, self._changed = self._changed, Event()
        changed.set()

    def _tick(self) -> None:
        while not self._log.ended:
            gevent.sleep(DISCONNECT_CHECK)
            if self._watchers:
                self.wake()

    def follow(self, after: int, client_gone: Callable[[], bool]) -> Iterator[Numbered]:
        """The events after `after` characters: what is logged (its text as one
        delta), then each new one, with a PING after each silent heartbeat. While
        silent it looks at the client every DISCONNECT_CHECK: one that left stops
        following then, not at the next write."""
        if self._ticker is None:
            self._ticker = gevent.spawn(self._tick)
        log = self._log
        cursor = log.cursor(after)
        caught_up = cursor.catch_up()
        if caught_up is not None:
            yield caught_up
        while True:
            yield from cursor.logged()
            if log.ended:
                return  # its end yielded
            ticks = 0
            while not cursor.pending() and not log.ended:
                self._changed.wait()  # no timeout: the ticker wakes us too
                if cursor.pending() or log.ended:
                    break
                if client_gone():
                    return
                ticks += 1
                if ticks * DISCONNECT_CHECK >= self._heartbeat:
                    yield -1, PING
                    ticks = 0

    def publish(
        self, eventlog: EventLog, answer_id: str, owner: str, stop: Callable[[], None]
    ) -> None:
        """Copy the log to Redis in batches (consecutive deltas as one entry) until its
        end is copied, or until an outage; call `stop()` for a Stop sent to another
        instance. The caller counts it as a watcher meanwhile (`watch`)."""
        log = self._log
        cursor = log.cursor()
        while True:
            finished = log.ended
            entries = cursor.entries()
            try:
                if entries:
                    stopped = eventlog.publish(answer_id, owner, entries)
                else:
                    stopped = eventlog.cancel_requested(answer_id)
            except RedisUnavailable:
                return  # this instance still serves it, through the job and the store
            if stopped:
                stop()
            if finished and not cursor.pending():
                return
            self._changed.wait(CANCEL_CHECK)  # a Stop sent to another instance (Redis)
            gevent.sleep(PUBLISH_INTERVAL)  # let a batch gather
