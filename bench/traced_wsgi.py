"""`wsgi.py` with its CPU counted by kind of greenlet, for `bench.by_greenlet`.

gunicorn serves `bench.traced_wsgi:app` instead of `wsgi:app`. At every greenlet
switch the CPU since the last switch goes to the greenlet switched from: the hub
(libev, idle callbacks, values made ahead), each request's handler, the history
writer, the full collector, and so on, by the name of what the greenlet runs. The
collector's own time is counted apart as well (it is also inside the greenlet it
interrupted). SIGUSR2 writes the totals, and the process's CPU, to
`$BENCH_TRACE_DIR/<pid>.json`. The tracing costs ~1 µs a switch, in every greenlet.
"""

from __future__ import annotations

import collections
import gc
import json
import os
import signal
import time
from typing import Any

import gevent
import greenlet

from wsgi import app  # noqa: F401  (what gunicorn serves)

_hub = gevent.get_hub()
spent: collections.Counter[str] = collections.Counter()
_last = [time.process_time_ns()]
_gc_began = [0]


def _kind(g: Any) -> str:
    if g is _hub:
        return "hub (libev, callbacks, made ahead)"
    run = getattr(g, "_run", None)
    named = getattr(run, "__func__", run)
    return str(getattr(named, "__qualname__", None) or type(g).__name__)


def _switched(event: str, args: Any) -> None:
    if event in ("switch", "throw"):
        now = time.process_time_ns()
        spent[_kind(args[0])] += now - _last[0]
        _last[0] = now


def _collected(phase: str, info: dict[str, int]) -> None:
    if phase == "start":
        _gc_began[0] = time.process_time_ns()
    else:
        spent["(the collector, inside the above)"] += time.process_time_ns() - _gc_began[0]


def _dump(*_: Any) -> None:
    path = os.path.join(os.environ["BENCH_TRACE_DIR"], f"{os.getpid()}.json")
    with open(path, "w") as out:
        json.dump({"cpu_ns": time.process_time_ns(), "spent": spent}, out)


greenlet.settrace(_switched)
gc.callbacks.append(_collected)
signal.signal(signal.SIGUSR2, _dump)
