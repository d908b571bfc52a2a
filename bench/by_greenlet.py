"""Where a worker's CPU goes, by kind of greenlet, with history off and on.

    python -m bench.by_greenlet [--pairs 2 --rounds 2 --streams 300 --tokens 300 --rate 20]

For each setting in turn (off, on, off, on, ...) one gunicorn worker serves
`bench.traced_wsgi:app` against the fake upstream; after a warm-up, `--rounds`
bursts of `--streams` answers are relayed, and the worker's CPU (from its own
clock, read before and after) is printed per answer, split by the greenlet it ran
in. What history adds shows where it runs: the request handlers (owner, ids,
cookie), the hub (owners and ids made ahead), and the recorder's writer.

Two pairs on 2026-11-27 at 300 tokens: the writer took 102 and 122 µs an answer. The
handlers took 8,831 and 9,247 off, 8,662 and 11,183 on; the hub 2,184 and 2,440 off,
2,221 and 2,786 on. Those move by up to 20% between runs of the same setting, so they
cannot show history's ~20 µs in the request, or its ~5 in the hub.
"""

from __future__ import annotations

from gevent import monkey

monkey.patch_all()

import argparse  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import signal  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
from collections.abc import Iterator  # noqa: E402
from contextlib import contextmanager  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import gevent  # noqa: E402

from bench.relay import Target, app_env, free_port, run, start, tree, wait_port  # noqa: E402

APP = [sys.executable, "-m", "gunicorn", "--config", "gunicorn.conf.py", "bench.traced_wsgi:app"]


def snapshot(worker: int, folder: str) -> Any:
    """What the traced worker writes on SIGUSR2 (its JSON)."""
    path = Path(folder, f"{worker}.json")
    path.unlink(missing_ok=True)
    os.kill(worker, signal.SIGUSR2)
    for _ in range(100):
        gevent.sleep(0.05)
        if path.exists() and path.stat().st_size:
            return json.loads(path.read_text())
    raise SystemExit("the worker wrote no figures")


def the_worker(master: int) -> int:
    """The master binds its port before it forks the worker: wait for the worker."""
    for _ in range(200):
        workers = [pid for pid in tree(master) if pid != master]
        if workers:
            return workers[0]
        gevent.sleep(0.05)
    raise SystemExit("gunicorn started no worker")


@contextmanager
def traced_worker(
    app: list[str], upstream: int, history: str, args: argparse.Namespace
) -> Iterator[tuple[Target, int, str]]:
    """One gunicorn worker serving `app` (a traced copy of wsgi.py) with HISTORY set,
    warmed up by one burst: its target, its pid and the folder it writes its figures
    to. Killed after: its figures are read, no graceful stop to wait for."""
    folder = tempfile.mkdtemp(prefix="codegen-trace-")
    port = free_port()
    server = start(app, app_env(upstream, port, 1, {"HISTORY": history, "BENCH_TRACE_DIR": folder}))
    try:
        wait_port(port, 60)
        worker = the_worker(server.pid)
        target = Target(history, port, "/generate-code/", None)
        burst(target, args)
        gevent.sleep(3)
        yield target, worker, folder
    finally:
        for pid in tree(server.pid):
            os.kill(pid, signal.SIGKILL)
        server.wait(10)


def burst(target: Target, args: argparse.Namespace) -> None:
    """`--streams` answers at once; every one must arrive whole."""
    result = run(target, "burst", args.streams, args.tokens, args.rate, args.streams)
    if result.errors:
        raise SystemExit(f"{result.errors} answers failed or lost tokens")


def arguments(*, pairs: int, rounds: int, tokens: int) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    parser.add_argument("--pairs", type=int, default=pairs)
    parser.add_argument("--rounds", type=int, default=rounds)
    parser.add_argument("--streams", type=int, default=300)
    parser.add_argument("--tokens", type=int, default=tokens)
    parser.add_argument("--rate", type=float, default=20.0)
    return parser.parse_args()


@contextmanager
def fake_upstream() -> Iterator[int]:
    """The fake model server (bench/upstream.py) for the run: its port."""
    port = free_port()
    fake = start([sys.executable, "-m", "bench.upstream", str(port)])
    try:
        wait_port(port)
        yield port
    finally:
        fake.terminate()


def measure(upstream: int, history: str, args: argparse.Namespace) -> dict[str, float]:
    with traced_worker(APP, upstream, history, args) as (target, worker, folder):
        before = snapshot(worker, folder)
        for _ in range(args.rounds):
            burst(target, args)
            gevent.sleep(3)  # the writer's last saves and ends land in the round
        after = snapshot(worker, folder)
    answers = args.rounds * args.streams
    spent_before: dict[str, int] = before["spent"]
    figures = {
        kind: (ns - spent_before.get(kind, 0)) / answers / 1e3
        for kind, ns in after["spent"].items()
    }
    figures["the worker, all of it"] = (
        (int(after["cpu_ns"]) - int(before["cpu_ns"])) / answers / 1e3
    )
    return figures


def main() -> int:
    args = arguments(pairs=2, rounds=2, tokens=300)
    with fake_upstream() as upstream:
        runs = [
            (history, measure(upstream, history, args))
            for _ in range(args.pairs)
            for history in ("off", "on")
        ]
    kinds = sorted({kind for _, figures in runs for kind in figures})
    print(f"CPU µs an answer ({args.streams} streams of {args.tokens} tokens at {args.rate}/s):")
    print("| greenlet | " + " | ".join(f"HISTORY={h}" for h, _ in runs) + " |")
    print("| --- |" + " --- |" * len(runs))
    for kind in kinds:
        cells = " | ".join(f"{figures.get(kind, 0.0):,.1f}" for _, figures in runs)
        print(f"| {kind} | {cells} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
