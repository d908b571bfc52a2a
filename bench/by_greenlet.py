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
from pathlib import Path  # noqa: E402

import gevent  # noqa: E402

from bench.relay import Target, app_env, free_port, run, start, tree, wait_port  # noqa: E402

APP = [sys.executable, "-m", "gunicorn", "--config", "gunicorn.conf.py", "bench.traced_wsgi:app"]


def snapshot(worker: int, folder: str) -> dict[str, object]:
    path = Path(folder, f"{worker}.json")
    path.unlink(missing_ok=True)
    os.kill(worker, signal.SIGUSR2)
    for _ in range(100):
        gevent.sleep(0.05)
        if path.exists() and path.stat().st_size:
            return dict(json.loads(path.read_text()))
    raise SystemExit("the worker wrote no figures")


def the_worker(master: int) -> int:
    """The master binds its port before it forks the worker: wait for the worker."""
    for _ in range(200):
        workers = [pid for pid in tree(master) if pid != master]
        if workers:
            return workers[0]
        gevent.sleep(0.05)
    raise SystemExit("gunicorn started no worker")


def measure(upstream: int, history: str, args: argparse.Namespace) -> dict[str, float]:
    folder = tempfile.mkdtemp(prefix="codegen-by-greenlet-")
    port = free_port()
    env = app_env(upstream, port, 1, {"HISTORY": history, "BENCH_TRACE_DIR": folder})
    server = start(APP, env)
    try:
        wait_port(port, 60)
        worker = the_worker(server.pid)
        target = Target(history, port, "/generate-code/", None)
        run(target, "warm-up", args.streams, args.tokens, args.rate, args.streams)
        gevent.sleep(3)
        before = snapshot(worker, folder)
        for _ in range(args.rounds):
            result = run(target, "round", args.streams, args.tokens, args.rate, args.streams)
            if result.errors:
                raise SystemExit(f"{result.errors} answers failed or lost tokens")
            gevent.sleep(3)  # the writer's last saves and ends land in the round
        after = snapshot(worker, folder)
    finally:
        for pid in tree(server.pid):  # its figures are read: no graceful stop to wait for
            os.kill(pid, signal.SIGKILL)
        server.wait(10)
    answers = args.rounds * args.streams
    spent_before: dict[str, int] = before["spent"]  # type: ignore[assignment]
    figures = {
        kind: (ns - spent_before.get(kind, 0)) / answers / 1e3
        for kind, ns in after["spent"].items()  # type: ignore[attr-defined]
    }
    figures["the worker, all of it"] = (
        (
            int(after["cpu_ns"]) - int(before["cpu_ns"])  # type: ignore[call-overload]
        )
        / answers
        / 1e3
    )
    return figures


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--pairs", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--streams", type=int, default=300)
    parser.add_argument("--tokens", type=int, default=300)
    parser.add_argument("--rate", type=float, default=20.0)
    args = parser.parse_args()
    upstream = free_port()
    fake = start([sys.executable, "-m", "bench.upstream", str(upstream)])
    try:
        wait_port(upstream)
        runs = [
            (history, measure(upstream, history, args))
            for _ in range(args.pairs)
            for history in ("off", "on")
        ]
    finally:
        fake.terminate()
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
