"""Who reads a resumable answer's relay, and how long the answer outlives its
readers (webapp/answers/jobs.py)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import gevent

from webapp.relay.generation import Relay


class Grace:
    """How long an answer outlives its readers (the driver and the followers).

    Contract: `attach()` as a reader comes, `detach(finished)` as it goes; while
    none reads an unfinished answer, a timer runs (`arm`, also at the start, when
    nobody reads it yet), and when it runs out `on_expiry` is called in a greenlet
    of its own. A reader coming disarms it. The timer is a bare loop timer (no
    greenlet per answer) whose callback only spawns: the hub must not block.
    """

    __slots__ = ("_on_expiry", "_readers", "_seconds", "_timer")

    def __init__(self, seconds: float, on_expiry: Callable[[], None]) -> None:
        self._seconds = seconds
        self._on_expiry = on_expiry
        self._readers = 0
        self._timer: Any = None

    @property
    def readers(self) -> int:
        return self._readers

    def arm(self, seconds: float | None = None) -> None:
        """Call `on_expiry` in `seconds` (the grace by default) unless a reader comes."""
        self._timer = gevent.get_hub().loop.timer(self._seconds if seconds is None else seconds)
        self._timer.start(gevent.spawn, self._on_expiry)

    def attach(self) -> None:
        self._readers += 1
        if self._timer is not None:
            self._timer.close()
            self._timer = None

    def detach(self, finished: bool) -> None:
        self._readers -= 1
        if self._readers == 0 and not finished:
            self.arm()


class Driver:
    """Who reads a job's relay: the response that started the answer, from
    `reading()` to `left()`; then, if the answer goes on, a greenlet of the job's
    own (the runner) that reads it to its end, for the followers and the grace.

    Contract: `taken()` says whether anyone has read it or reads it (the starting
    response reads the relay itself only if not); `stop(relay, outcome)` ends it
    from outside, recorded with `outcome`, in the way that is safe for whoever is
    inside it: a reader is asked to stop, in its own greenlet, and is never
    killed inside the relay's cleanups.
    """

    __slots__ = ("_driving", "_runner", "_runner_began")

    def __init__(self) -> None:
        self._driving = False
        self._runner: gevent.Greenlet[..., None] | None = None
        self._runner_began = False

    def taken(self) -> bool:
        return self._driving or self._runner is not None

    def reading(self) -> None:
        self._driving = True

    def left(self, relay: Relay | None) -> None:
        """The starting response stopped reading; a `relay` still running (None: it
        ended) is handed on to the runner."""
        self._driving = False
        if relay is not None:
            runner = self._runner = gevent.spawn(self._run, relay)
            relay.move_to(runner)

    def _run(self, relay: Relay) -> None:
        """Read the relay on until it ends or is stopped (its cleanups end the job)."""
        self._runner_began = True
        if relay.closed:
            return  # ended before the runner began: nothing left to read
        for _ in relay.events():
            pass

    def stop(self, relay: Relay, outcome: str) -> None:
        relay.end_as(outcome)
        if relay.closed:
            return  # already ending: its cleanups (the job's end among them) are running
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
