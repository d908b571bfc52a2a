"""One timer per answer that interrupts the relay's blocking read or write when due.

The relay reads the upstream and writes to the client from one greenlet, with
no timeout per read: setting and cancelling a timer per token would cost more
than the token. Instead the watchdog's single timer is armed for the next
moment anything could be due, and re-armed only when it fires.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from gevent import get_hub

from webapp.errors import ClientTooSlow
from webapp.providers.base import Final, UpstreamStream
from webapp.relay.deadlines import Deadlines

# While no token flows, the relay looks at the client's socket this often, so a
# closed tab stops the upstream within a second even in a silent stretch.
DISCONNECT_CHECK = 0.5
# After a Stop, how often the watchdog looks for a read to interrupt.
URGENT_POLL = 0.05


class ReadInterrupted(BaseException):
    """Thrown by the watchdog into the relay's own upstream read; never escapes it.

    A BaseException, like gevent's Timeout, so that no `except Exception` in a
    provider swallows it. Providers keep their state consistent at every
    blocking point, so an interrupted read loses nothing.
    """


class Watchdog:
    """Watches one relay greenlet, which sets `reading` around each upstream read
    (with `read_since`) and `writing` around each write to the client (the
    moment it began; 0.0 when none).

    When its timer fires: during a read, it throws ReadInterrupted if a bound
    or keep-alive is due (per `deadlines`) or the client should be looked at;
    during a write past `write_limit`, it calls `on_too_slow` and throws
    ClientTooSlow, so the server drops a client that stopped reading. Otherwise
    it waits again until the next thing could be due.
    """

    __slots__ = (
        "clock",
        "deadlines",
        "greenlet",
        "on_too_slow",
        "read_since",
        "reading",
        "stall_limit",
        "stopped",
        "timer",
        "timer_at",
        "urgent",
        "write_limit",
        "writing",
    )

    def __init__(
        self,
        clock: Callable[[], float],
        deadlines: Deadlines,
        greenlet: Any,
        on_too_slow: Callable[[], None],
    ) -> None:
        self.clock = clock
        self.deadlines = deadlines
        self.greenlet = greenlet
        self.on_too_slow = on_too_slow
        self.reading = False
        self.writing = 0.0
        # A resumable answer's starting response: a write stalled this long lets
        # its client go (the answer goes on for the others); 0.0: only write_limit.
        self.stall_limit = 0.0
        self.read_since = 0.0
        self.write_limit = deadlines.total_at
        self.timer: Any = None
        self.timer_at = 0.0
        self.stopped = False
        self.urgent = False

    def arm(self, delay: float) -> None:
        if self.timer is not None:
            self.timer.stop()
        delay = max(delay, 0.001)
        timer = get_hub().loop.timer(delay)
        timer.start(self._fire)
        self.timer, self.timer_at = timer, self.clock() + delay

    def cover_read(self, now: float, limit: float) -> None:
        """The read starting at `now` must end by `limit`, or sooner for a look at
        the client; the timer already armed covers it if it fires earlier."""
        self.read_since = now
        wake_at = now + DISCONNECT_CHECK if now + DISCONNECT_CHECK < limit else limit
        if self.timer is None or self.timer_at > wake_at:
            self.arm(wake_at - now)

    def read(self, stream: UpstreamStream, now: float, limit: float) -> str | Final | None:
        """One read of `stream`, begun at `now`, interrupted (then None) when due."""
        self.cover_read(now, limit)
        self.reading = True
        try:
            return stream.read(None)
        except ReadInterrupted:
            return None
        finally:
            self.reading = False

    def guard_write(self, limit: float) -> None:
        """The next write is one the client must take by `limit`."""
        self.writing = self.clock()
        self.write_limit = limit
        if self.timer is None or self.timer_at > limit:
            self.arm(limit - self.clock())

    def hurry(self) -> None:
        """A Stop was asked: interrupt the read in progress now, else the next one;
        a write in progress that is not done within DISCONNECT_CHECK lets its
        client go."""
        self.urgent = True
        # A write in progress gets a moment to finish (a client that reads, a block
        # being highlighted), so the client still hears the end; then it is let go.
        self.write_limit = min(self.write_limit, self.clock() + DISCONNECT_CHECK)
        self.arm(0.0)

    def stop(self) -> None:
        self.stopped = True
        if self.timer is not None:
            self.timer.stop()
            self.timer = None

    def _fire(self) -> None:
        """Runs in the hub."""
        self.timer = None
        if self.stopped:
            return
        now = self.clock()
        if self.reading:
            due = (
                now
                if self.urgent
                else min(self.deadlines.next_at(), self.read_since + DISCONNECT_CHECK)
            )
            if now < due:
                self.arm(due - now)
            else:
                # As gevent's own Timeout does: raise inside the waiting greenlet.
                self.greenlet.throw(ReadInterrupted)
        elif self.writing:
            # Blocked in a write: the client is not reading. Without this, a
            # client that never reads would hold the answer (and the upstream, by
            # backpressure) for ever.
            limit = self.write_limit
            stalled = self.stall_limit and self.writing + self.stall_limit < limit
            if stalled:
                limit = self.writing + self.stall_limit
            if now < limit:
                self.arm(limit - now)
            elif self.urgent:
                self.greenlet.throw(ClientTooSlow("cancelled"))
            elif stalled:
                # Let this client go; the answer is handed on and can be re-attached.
                self.greenlet.throw(ClientTooSlow("client_too_slow"))
            else:
                self.on_too_slow()
                self.greenlet.throw(ClientTooSlow("client_too_slow"))
        elif self.urgent:
            self.arm(URGENT_POLL)  # between a read and a write: look again soon
        # Otherwise the relay waits for its opener, with timeouts of its own.
