"""A resumable answer's log in memory: its events, each numbered by the answer's
length once it is applied, and the readers' places in it (webapp/answers/jobs.py)."""

from __future__ import annotations

import bisect
from collections.abc import Iterator

from webapp.answers.eventlog import encode_end
from webapp.relay.events import Done, Failed, Ping, RelayEvent

Numbered = tuple[int, RelayEvent | Ping]
"""An event with its id: the answer's length once it is applied (pings: -1)."""


class JobLog:
    """One answer's events and their ends (the answer's length after each), from
    `start` (a Continue numbers from the stored text it carries on).

    Contract: `sync(parts)` appends the relay's texts it does not hold yet, in
    order, one event each, so it may lag the relay and catch up at any time;
    `end(event, text)` appends the last event once, and from then on the log is
    its text in one delta and its end (a worker holds hundreds of finished answers:
    a list per token would be thousands of objects for the collector). A `Cursor`
    keeps the lists it began on, so a reader across the end misses nothing.
    """

    __slots__ = ("_ended", "_ends", "_events", "_logged", "start")

    def __init__(self, start: int) -> None:
        self.start = start
        self._events: list[RelayEvent] = []
        self._ends: list[int] = []  # the answer's length after each event
        self._logged = 0  # how many of the relay's texts (`parts`) the log holds
        self._ended = False

    @property
    def events(self) -> list[RelayEvent]:
        return self._events

    @property
    def ended(self) -> bool:
        """The last event (Done or Failed) is logged."""
        return self._ended

    def sync(self, parts: list[str]) -> None:
        """Bring the log up to the relay's texts. Each text the relay passes on is in
        its `parts` by then, in order, one per event, and nothing switches
        greenlets between the two, so the log never misses or repeats one."""
        if self._logged < len(parts):
            events, ends = self._events, self._ends
            length = ends[-1] if ends else self.start
            for text in parts[self._logged :]:
                length += len(text)
                events.append(text)
                ends.append(length)
            self._logged = len(parts)

    def end(self, event: Done | Failed, text: str) -> None:
        """Log the last event of the answer whose whole text is `text`, then fold the
        log into that text as one delta and the end. Whoever reads the old lists (a
        follower, the publisher) keeps them, end included."""
        length = len(text)
        self._events.append(event)
        self._ends.append(length)
        self._ended = True
        delta = text[self.start :]
        self._events = [delta, event] if delta else [event]
        self._ends = [length] * len(self._events)

    def cursor(self, after: int | None = None) -> Cursor:
        """A reader's place just past `after` characters (the start at least), or
        before the first event (None: the publisher's)."""
        if after is None:
            return Cursor(self._events, self._ends, self.start, 0)
        after = max(after, self.start)
        index = bisect.bisect_right(self._ends, after)
        if index and type(self._events[index - 1]) is not str:
            index -= 1  # the end event has the final length as its id too: resend it
        return Cursor(self._events, self._ends, after, index)


class Cursor:
    """One reader's place in a `JobLog`, on the lists the log had when it began.

    Contract: a follower calls `catch_up()` once, then `logged()` whenever
    `pending()`: each event logged past its place, as logged, the end last; the
    place moves with what it yields. `entries()` is the same read, batched for
    Redis (the publisher's).
    """

    __slots__ = ("_after", "_ends", "_events", "_index")

    def __init__(self, events: list[RelayEvent], ends: list[int], after: int, index: int) -> None:
        self._events, self._ends = events, ends
        self._after = after  # the characters the reader has
        self._index = index  # the next event to read

    def pending(self) -> bool:
        return self._index < len(self._events)

    def catch_up(self) -> Numbered | None:
        """A reader's first read: the text it does not have, in one delta (its id the
        length it reaches), if any is logged; `logged()` goes on from there."""
        events, index = self._events, self._index
        backlog = index
        while backlog < len(events) and type(events[backlog]) is str:
            backlog += 1
        if backlog == index:
            return None
        text = "".join(events[index:backlog])  # type: ignore[arg-type]
        end = self._ends[backlog - 1]
        self._index = backlog
        return end, text[len(text) - (end - self._after) :]

    def logged(self) -> Iterator[Numbered]:
        events, ends, after, index = self._events, self._ends, self._after, self._index
        while index < len(events):
            event, end = events[index], ends[index]
            index += 1
            self._index = index
            if type(event) is not str:
                yield end, event
                return  # Done or Failed: the end
            if end - len(event) < after:
                # Only a client claiming text it cannot have yet gets here: from
                # the point it claims, as the stored row's follower does.
                if end <= after:
                    continue
                event = event[len(event) - (end - after) :]
            yield end, event

    def entries(self) -> list[tuple[int, str, bytes]]:
        """What is logged past the place, for Redis: consecutive deltas as one entry."""
        events, ends, published = self._events, self._ends, self._index
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
        self._index = published
        return entries
