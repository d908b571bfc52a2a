"""Relay events -> bytes for each wire format.

One generator per format, doing as little per delta as possible: one orjson
call and one concatenation. A failure after the stream began is the last
event (SSE, NDJSON); text/plain has no room for one, so the connection is cut
before the final chunk and clients see a truncated transfer, not a clean end.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import asdict
from typing import Any

import orjson

from webapp.errors import TruncatedStream
from webapp.relay.events import Done, Failed, Ping, RelayEvent, close_source

TEXT = "text/plain"
SSE = "text/event-stream"
NDJSON = "application/x-ndjson"
JSON = "application/json"
MIMETYPES = (TEXT, SSE, NDJSON)


def done_payload(done: Done) -> dict[str, Any]:
    return asdict(done)


def text_plain(events: Iterator[RelayEvent]) -> Iterator[bytes]:
    try:
        for event in events:
            if type(event) is str:
                yield event.encode()
            elif isinstance(event, Failed):
                raise TruncatedStream(event.error.code)
    finally:
        close_source(events)


def sse(events: Iterator[RelayEvent]) -> Iterator[bytes]:
    dumps = orjson.dumps
    for event in events:
        if type(event) is str:
            yield b'event: delta\ndata: {"text":' + dumps(event) + b"}\n\n"
        elif isinstance(event, Ping):
            yield b": ping\n\n"
        elif isinstance(event, Done):
            yield b"event: done\ndata: " + dumps(done_payload(event)) + b"\n\n"
        elif isinstance(event, Failed):
            yield b"event: error\ndata: " + dumps(event.error.to_dict()) + b"\n\n"


def ndjson(events: Iterator[RelayEvent | dict[str, object]]) -> Iterator[bytes]:
    """NDJSON; plain dicts (the page's extra `block`/`html` events) pass through as lines."""
    dumps = orjson.dumps
    for event in events:
        if type(event) is str:
            yield b'{"type":"delta","text":' + dumps(event) + b"}\n"
        elif isinstance(event, Ping):
            yield b'{"type":"ping"}\n'
        elif isinstance(event, Done):
            yield dumps({"type": "done", **done_payload(event)}) + b"\n"
        elif isinstance(event, Failed):
            yield dumps({"type": "error", **event.error.to_dict()}) + b"\n"
        elif isinstance(event, dict):
            yield dumps(event) + b"\n"


# -- resumable answers: every event carries its id (the answer's length once applied) --


def _sse_end(end: int, event: Done | Failed) -> bytes:
    if isinstance(event, Done):
        return b"id: %d\nevent: done\ndata: %s\n\n" % (end, orjson.dumps(done_payload(event)))
    return b"id: %d\nevent: error\ndata: %s\n\n" % (end, orjson.dumps(event.error.to_dict()))


def _ndjson_end(end: int, event: Done | Failed) -> bytes:
    if isinstance(event, Done):
        return orjson.dumps({"type": "done", "seq": end, **done_payload(event)}) + b"\n"
    return orjson.dumps({"type": "error", "seq": end, **event.error.to_dict()}) + b"\n"


def sse_numbered(events: Iterator[tuple[int, RelayEvent]]) -> Iterator[bytes]:
    """SSE with `id:` lines, so EventSource's Last-Event-ID picks up where it broke."""
    dumps = orjson.dumps
    for end, event in events:
        if type(event) is str:
            yield b'id: %d\nevent: delta\ndata: {"text":%s}\n\n' % (end, dumps(event))
        elif isinstance(event, Ping):
            yield b": ping\n\n"
        elif isinstance(event, Done | Failed):
            yield _sse_end(end, event)


def ndjson_numbered(
    events: Iterator[tuple[int, RelayEvent | dict[str, object]]],
) -> Iterator[bytes]:
    """NDJSON with a `seq` on deltas and the end (the answer's length once applied)."""
    dumps = orjson.dumps
    for end, event in events:
        if type(event) is str:
            yield b'{"type":"delta","seq":%d,"text":%s}\n' % (end, dumps(event))
        elif isinstance(event, Ping):
            yield b'{"type":"ping"}\n'
        elif isinstance(event, Done | Failed):
            yield _ndjson_end(end, event)
        elif isinstance(event, dict):
            yield dumps(event) + b"\n"


def text_numbered(events: Iterator[tuple[int, RelayEvent]]) -> Iterator[bytes]:
    for _, event in events:
        if type(event) is str:
            yield event.encode()
        elif isinstance(event, Failed):
            raise TruncatedStream(event.error.code)


# The same for the response that starts a resumable answer: it reads the relay's own
# events (no layer between them, webapp/answers/jobs.py) and counts the ids itself, from
# `start` (a Continue's stored text).


def _counted(
    delta: bytes, ping: bytes, end_line: Callable[[int, Done | Failed], bytes]
) -> Callable[[Iterator[RelayEvent], int], Iterator[bytes]]:
    """A numbered format's writer for a relay's own events: `delta` takes the id and
    the JSON text, `end_line` writes the end."""

    def counted(events: Iterator[RelayEvent], start: int) -> Iterator[bytes]:
        dumps = orjson.dumps
        end = start
        try:
            for event in events:
                if type(event) is str:
                    end += len(event)
                    yield delta % (end, dumps(event))
                elif isinstance(event, Ping):
                    yield ping
                elif isinstance(event, Done | Failed):
                    yield end_line(end, event)
        finally:
            close_source(events)

    return counted


sse_counted = _counted(b'id: %d\nevent: delta\ndata: {"text":%s}\n\n', b": ping\n\n", _sse_end)
ndjson_counted = _counted(
    b'{"type":"delta","seq":%d,"text":%s}\n', b'{"type":"ping"}\n', _ndjson_end
)


def text_counted(events: Iterator[RelayEvent], start: int) -> Iterator[bytes]:
    return text_plain(events)  # no ids in text/plain


def numbered(events: Iterator[RelayEvent], start: int = 0) -> Iterator[tuple[int, RelayEvent]]:
    """A relay's events with their ids (the page's stream, which adds events of its own)."""
    end = start
    try:
        for event in events:
            if type(event) is str:
                end += len(event)
            yield (-1 if isinstance(event, Ping) else end), event
    finally:
        close_source(events)


NUMBERED: dict[str, Callable[[Iterator[tuple[int, RelayEvent]]], Iterator[bytes]]] = {
    TEXT: text_numbered,
    SSE: sse_numbered,
    NDJSON: ndjson_numbered,
}
COUNTED: dict[str, Callable[[Iterator[RelayEvent], int], Iterator[bytes]]] = {
    TEXT: text_counted,
    SSE: sse_counted,
    NDJSON: ndjson_counted,
}


FORMATTERS: dict[str, Callable[[Iterator[RelayEvent]], Iterator[bytes]]] = {
    TEXT: text_plain,
    SSE: sse,
    NDJSON: ndjson,
}
