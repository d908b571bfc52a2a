"""Inside one worker, where a burst's time to first token goes, history off and on.

    python -m bench.burst [--pairs 3 --rounds 3 --streams 300 --tokens 100 --rate 20]

`bench.ab`'s TTFT is the median of a burst: `--streams` answers asked for at the same
instant. One gunicorn worker serves `bench.burst_wsgi:app` (history off, on, off,
on, ...), and each burst is read from the worker's own timeline:
- started: from the first request's call into the app to the last one's;
- p50 first chunk: from that first call to the median request's first chunk;
- collections and history writes: the time they took before that median.

On 2026-11-27 (2 cores, 300 streams of 100 tokens, 9 bursts a setting) the median
first chunk came out ~20 ms after the last request had started, with either setting:
the worker's loop takes a burst's requests in turn, so each one's work before its
first token is paid 300 times over at the median, not 150. History's writes ran after
it. The burst-to-burst scatter (±10 ms) hides a difference of a few ms: for history's
µs a request, time its pieces (`bench.request_costs`), and for its effect on TTFT,
use `bench.ab`'s paired rounds.
"""

from __future__ import annotations

from gevent import monkey

monkey.patch_all()

import argparse  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402

import gevent  # noqa: E402

from bench.by_greenlet import (  # noqa: E402
    arguments,
    burst,
    fake_upstream,
    snapshot,
    traced_worker,
)

APP = [sys.executable, "-m", "gunicorn", "--config", "gunicorn.conf.py", "bench.burst_wsgi:app"]
FIGURES = ("started", "p50 first chunk", "after the last start", "collections", "history writes")


def timeline(worker: int, folder: str) -> list[tuple[str, int, int]]:
    return [(kind, began, ended) for kind, began, ended in snapshot(worker, folder)]


def figures(events: list[tuple[str, int, int]]) -> dict[str, float]:
    """The burst's figures in ms, from its worker's events."""
    requests = [(called, first) for kind, called, first in events if kind == "request"]
    began = min(called for called, _ in requests)
    median = sorted(first for _, first in requests)[len(requests) // 2]

    def before_median(kind: str) -> float:
        spans = [(a, b) for k, a, b in events if k == kind and a < median and b > began]
        return sum(min(b, median) - max(a, began) for a, b in spans) / 1e6

    return {
        "started": (max(called for called, _ in requests) - began) / 1e6,
        "p50 first chunk": (median - began) / 1e6,
        "after the last start": (median - max(called for called, _ in requests)) / 1e6,
        "collections": before_median("collection"),
        "history writes": before_median("history write"),
    }


def measure(upstream: int, history: str, args: argparse.Namespace) -> list[dict[str, float]]:
    bursts = []
    with traced_worker(APP, upstream, history, args) as (target, worker, folder):
        timeline(worker, folder)  # the warm-up's events are dropped
        for _ in range(args.rounds):
            burst(target, args)
            bursts.append(figures(timeline(worker, folder)))
            gevent.sleep(3)  # the writer's saves and ends, before the next burst
    return bursts


def main() -> int:
    args = arguments(pairs=3, rounds=3, tokens=100)
    by_setting: dict[str, list[dict[str, float]]] = {"off": [], "on": []}
    with fake_upstream() as upstream:
        for _ in range(args.pairs):
            for history in ("off", "on"):
                by_setting[history] += measure(upstream, history, args)
    print(
        f"ms, median of {args.pairs * args.rounds} bursts of {args.streams} answers "
        f"({args.tokens} tokens at {args.rate}/s), inside the worker:"
    )
    print("| | HISTORY=off | HISTORY=on | on - off |")
    print("| --- | --- | --- | --- |")
    for figure in FIGURES:
        off, on = (statistics.median(b[figure] for b in by_setting[h]) for h in ("off", "on"))
        print(f"| {figure} | {off:.1f} | {on:.1f} | {on - off:+.1f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
