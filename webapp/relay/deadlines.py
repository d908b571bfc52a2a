"""What is due next for one answer: its three bounds and its next keep-alive.

The one place that says when the relay must act. The stream loop asks
`next_at()` before each read, the opening wait and the watchdog ask
`next_due(now)`, and `due(now)` names what came due. Pure: no gevent, no I/O,
no clock of its own (every time is passed in), so tests drive it directly.
"""

from __future__ import annotations

from webapp.config import Config

# What can come due, in the order it wins a tie.
TOTAL = "deadline_exceeded"
FIRST_TOKEN = "first_token_timeout"
IDLE = "idle_timeout"
PING = "ping"


class Deadlines:
    """The bounds of one answer, on the relay's clock.

    - first token: `first_token_timeout` after `started`, while no text came;
    - idle: `idle_timeout` after the last upstream text, once text came;
    - total: `total_timeout` after `started`, always;
    - ping: `heartbeat` after the last write to the client (not a bound: a
      keep-alive is due).

    The relay moves `last_upstream`, `last_sent` and `got_text` as the answer
    goes; nothing else changes after construction.
    """

    __slots__ = (
        "first_token_timeout",
        "got_text",
        "heartbeat",
        "idle_timeout",
        "last_sent",
        "last_upstream",
        "started",
        "total_at",
    )

    def __init__(
        self,
        started: float,
        *,
        first_token_timeout: float,
        idle_timeout: float,
        total_timeout: float,
        heartbeat: float,
    ) -> None:
        self.started = started
        self.first_token_timeout = first_token_timeout
        self.idle_timeout = idle_timeout
        self.heartbeat = heartbeat
        self.total_at = started + total_timeout
        self.last_upstream = started
        # Counted from the request: a response started by a keep-alive owes its
        # next one an interval after the request, not after the response began.
        self.last_sent = started
        self.got_text = False

    @classmethod
    def of(cls, started: float, config: Config) -> Deadlines:
        return cls(
            started,
            first_token_timeout=config.first_token_timeout,
            idle_timeout=config.idle_timeout,
            total_timeout=config.total_timeout,
            heartbeat=config.heartbeat_interval,
        )

    def upstream_at(self) -> float:
        """When the upstream's silence becomes a failure (first-token or idle bound)."""
        if not self.got_text:
            return self.started + self.first_token_timeout
        return self.last_upstream + self.idle_timeout

    def next_at(self) -> float:
        """The earliest moment something is due (the hot path: no object made)."""
        at = self.upstream_at()
        if self.total_at < at:
            at = self.total_at
        ping = self.last_sent + self.heartbeat
        return ping if ping < at else at

    def due(self, now: float) -> str | None:
        """What is due at `now`: a bound (TOTAL, FIRST_TOKEN, IDLE), PING, or None."""
        if now >= self.total_at:
            return TOTAL
        if now >= self.upstream_at():
            return IDLE if self.got_text else FIRST_TOKEN
        if now >= self.last_sent + self.heartbeat:
            return PING
        return None

    def next_due(self, now: float) -> tuple[float, str]:
        """(when, what) of the next thing to come due, at or after `now`."""
        candidates = (
            (self.total_at, TOTAL),
            (self.upstream_at(), IDLE if self.got_text else FIRST_TOKEN),
            (self.last_sent + self.heartbeat, PING),
        )
        return min(candidates, key=lambda c: c[0])
