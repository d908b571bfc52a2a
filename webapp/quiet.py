"""Work that waits for the worker's quiet moments: when its loop has no event
pending, nobody is kept waiting by it.

A burst of requests keeps a worker's loop busy with their starts until most of
their first tokens are out (~200 ms for 300 at once on the bench machine).
Whatever else runs in that time is added to those first tokens: the history's
row inserts, a full collection of the cyclic garbage collector (10-25 ms
there, measured), ids and cookies made on the spot. Done in the next quiet
moment instead, the same work costs the same CPU and is out of the burst (an
event that arrives meanwhile still waits for it, as for any work). In a loop
that is never quiet, the history's writes go ahead after a bounded wait, the
interpreter's own full collections still run (a higher threshold), and a stock
stays empty: its values are made when needed, as without it.

Only from greenlets of the hub's thread (not from the hub itself).

- `until_quiet(bound)`: the calling greenlet waits for a quiet moment.
- `Stock`: values made ahead in quiet moments (ids, anonymous owners' cookies).
- `collect_when_quiet()`: the worker's full collections, in quiet moments.
"""

from __future__ import annotations

import gc
import logging
import os
import time
import weakref
from collections.abc import Callable
from typing import Any, Generic, TypeVar

import gevent
from gevent import get_hub

log = logging.getLogger("webapp.quiet")
T = TypeVar("T")


def _quiet_watcher() -> Any:
    """A libev idle watcher at the lowest priority: it runs only when no other event
    is pending, and does not keep the loop alive."""
    loop = get_hub().loop
    return loop.idle(ref=False, priority=loop.MINPRI)


def until_quiet(bound: float) -> bool:
    """Wait until the loop has no other event pending, at most `bound` seconds. True
    if it was quiet."""
    with gevent.Timeout(bound, False):
        get_hub().wait(_quiet_watcher())
        return True
    return False


class Stock(Generic[T]):
    """Up to `size` values of `make()`, made ahead in the worker's idle time.

    `take()` gives one, or None when none is ready (the caller makes its own): it
    never waits and never makes one itself. Below half full, it asks the loop for
    its idle moments (a libev idle watcher at the lowest priority, which runs only
    when no other event is pending), and each makes `batch` values until the stock
    is full: a burst takes from the stock, the quiet after it refills it.

    Nothing older than `fresh` seconds is handed out (a value may state when it was
    made: an id's time prefix, a cookie's signing time). A forked process starts
    with every stock empty, so no two workers hold the same values.
    """

    def __init__(self, make: Callable[[], T], *, size: int, batch: int, fresh: float) -> None:
        self._make = make
        self.size, self._batch, self._fresh = size, batch, fresh
        self._ready: list[T] = []
        self._oldest = 0.0  # when the oldest value in `_ready` was made
        self._idle: Any = None
        _stocks.add(self)

    def __len__(self) -> int:
        return len(self._ready)

    def take(self) -> T | None:
        ready = self._ready
        if ready and time.time() - self._oldest > self._fresh:
            ready.clear()
        if len(ready) < self.size // 2 and (self._idle is None or not self._idle.active):
            self._ask_for_idle_time()
        return ready.pop() if ready else None

    def clear(self) -> None:
        if self._idle is not None:
            self._idle.stop()  # an active idle watcher would keep the loop from sleeping
        self._ready = []
        self._idle = None

    def _ask_for_idle_time(self) -> None:
        if self._idle is None:
            self._idle = _quiet_watcher()
        self._idle.start(self._fill)

    def _fill(self) -> None:
        """Runs in the hub, when the loop is idle: one batch; stops when full."""
        idle, ready = self._idle, self._ready
        if idle is None:  # emptied meanwhile (a fork)
            return
        try:
            if not ready:
                self._oldest = time.time()
            make = self._make
            for _ in range(min(self._batch, self.size - len(ready))):
                ready.append(make())
        except Exception:  # never in the hub's face: one attempt per take() that asks
            log.exception("making values ahead failed; they are made when needed")
            idle.stop()
            return
        if len(ready) >= self.size:
            idle.stop()


_stocks: weakref.WeakSet[Stock[Any]] = weakref.WeakSet()


def _empty_stocks() -> None:
    for stock in list(_stocks):
        stock.clear()


os.register_at_fork(after_in_child=_empty_stocks)


# Full collections: the interpreter (3.11) runs one after 10 generation-1
# collections if the objects promoted since are over a quarter of the old ones,
# whenever the tenth falls, and in a burst it does: its objects are what the
# young collections promote. Here one is started after 10 generation-1
# collections, in the next quiet moment (without the quarter rule, so maybe
# more often, at most every CHECK_EVERY); the interpreter's own threshold is
# raised to BACKSTOP so that a worker that is never quiet still collects.
FULL_AFTER = 10
BACKSTOP = 50
CHECK_EVERY = 0.5


def collect_when_quiet(*, wait: float = 5.0) -> gevent.Greenlet[..., None]:
    """Move this process's full garbage collections to quiet moments (a worker's
    start-up calls this once). Young collections are unchanged: they are short."""
    young, middle, _ = gc.get_threshold()
    gc.set_threshold(young, middle, BACKSTOP)

    def collector() -> None:
        while True:
            gevent.sleep(CHECK_EVERY)
            if gc.get_count()[2] >= FULL_AFTER and until_quiet(wait):
                gc.collect()

    return gevent.spawn(collector)
