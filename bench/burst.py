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
import json  # noqa: E402
import os  # noqa: E402
import signal  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
from pathlib import Path  # noqa: E402

import gevent  # noqa: E402

from bench.by_greenlet import the_worker  # noqa: E402
from bench.relay import Target, app_env, free_port, run, start, tree, wait_port  # noqa: E402

APP = [sys.executable, "-m", "gunicorn", "--config", "gunicorn.conf.py", "bench.burst_wsgi:app"]
FIGURES = ("started", "p50 first chunk", "after the last start", "collections", "history writes")


def timeline(worker: int, folder: str) -> list[tuple[str, int, int]]:
    path = Path(folder, f"{worker}.json")
    path.unlink(missing_ok=True)
    os.kill(worker, signal.SIGUSR2)
    for _ in range(100):
        gevent.sleep(0.05)
        if path.exists() and path.stat().st_size:
            return [tuple(e) for e in json.loads(path.read_text())]  # type: ignore[misc]
    raise SystemExit("the worker wrote no timeline")


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
    folder = tempfile.mkdtemp(prefix="codegen-burst-")
    port = free_port()
    server = start(APP, app_env(upstream, port, 1, {"HISTORY": history, "BENCH_TRACE_DIR": folder}))
    bursts = []
    try:
        wait_port(port, 60)
        worker = the_worker(server.pid)
        target = Target(history, port, "/generate-code/", None)
        run(target, "warm-up", args.streams, args.tokens, args.rate, args.streams)
        gevent.sleep(3)
        timeline(worker, folder)
        for _ in range(args.rounds):
            result = run(target, "burst", args.streams, args.tokens, args.rate, args.streams)
            if result.errors:
                raise SystemExit(f"{result.errors} answers failed or lost tokens")
            bursts.append(figures(timeline(worker, folder)))
            gevent.sleep(3)  # the writer's saves and ends, before the next burst
    finally:
        for pid in tree(server.pid):
            os.kill(pid, signal.SIGKILL)
        server.wait(10)
    return bursts


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--pairs", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--streams", type=int, default=300)
    parser.add_argument("--tokens", type=int, default=100)
    parser.add_argument("--rate", type=float, default=20.0)
    args = parser.parse_args()
    upstream = free_port()
    fake = start([sys.executable, "-m", "bench.upstream", str(upstream)])
    by_setting: dict[str, list[dict[str, float]]] = {"off": [], "on": []}
    try:
        wait_port(upstream)
        for _ in range(args.pairs):
            for history in ("off", "on"):
                by_setting[history] += measure(upstream, history, args)
    finally:
        fake.terminate()
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
