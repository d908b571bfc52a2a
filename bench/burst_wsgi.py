"""`wsgi.py` with a timeline of a worker's events, for `bench.burst`.

gunicorn serves `bench.burst_wsgi:app` instead of `wsgi:app`. For each request it
notes when the app was called and when the first chunk of its body came out; it
also notes each garbage collection and each of the history writer's database
calls (start and end, monotonic ns). SIGUSR2 writes the events so far to
`$BENCH_TRACE_DIR/<pid>.json` and forgets them. Costs ~1 µs a request.
"""

from __future__ import annotations

import gc
import json
import os
import signal
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from webapp import recording
from wsgi import app as served

events: list[tuple[str, int, int]] = []
_now = time.monotonic_ns


def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    called = _now()
    body = served(environ, start_response)

    def timed() -> Iterator[bytes]:
        try:
            iterator = iter(body)
            first = next(iterator, None)
            events.append(("request", called, _now()))
            if first is not None:
                yield first
                yield from iterator
        finally:
            close = getattr(body, "close", None)
            if close is not None:
                close()

    return timed()


def _timed(owner: Any, name: str) -> None:
    inner = getattr(owner, name)

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        began = _now()
        try:
            return inner(*args, **kwargs)
        finally:
            events.append(("history write", began, _now()))

    setattr(owner, name, wrapper)


_timed(recording.Recorder, "flush")
_timed(recording.Recorder, "_save_progress")
_collecting = [0]


def _collected(phase: str, info: dict[str, int]) -> None:
    if phase == "start":
        _collecting[0] = _now()
    else:
        events.append(("collection", _collecting[0], _now()))


def _dump(*_: Any) -> None:
    path = os.path.join(os.environ["BENCH_TRACE_DIR"], f"{os.getpid()}.json")
    with open(path, "w") as out:
        json.dump(events, out)
    events.clear()


gc.callbacks.append(_collected)
signal.signal(signal.SIGUSR2, _dump)
