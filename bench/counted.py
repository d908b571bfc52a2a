"""Two kinds of answer counted, not timed: instructions and cache misses under valgrind.

    python -m bench.counted [--compare resumable|history] [--streams 60 --tokens 100
                            --rate 2 --no-stop-poll]

Timing on this machine moves ±5% a round (see `bench.ab`); valgrind's cachegrind
counts the instructions a run executes and simulates its caches, the same on any
load. Each kind runs in its own process under valgrind, in one process as
`bench.inprocess` does (the app and Flask's test client; the fake upstream runs
natively), and so does a run that only starts up: what a kind adds is its count
minus that one. Both kinds run at once, one per core.

Slow (~50 times native): keep the load small enough for the counted process to keep
up with `--rate`, or tokens bunch into fewer reads and the counts drift. Even so,
the same run twice differed by ~2% (~20 M instructions of ~900 M) here: the
moments a read, a collection or a quiet moment falls on still vary. A
resumable answer's look for a Stop sent to another worker runs every 0.4 s while
any runs, a cost per second, not per answer, that a small load inflates;
`--no-stop-poll` leaves it out of both kinds.

Needs valgrind (`apt-get install valgrind`).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
EVENTS = ("Ir", "Dr", "Dw", "D1mr", "D1mw", "DLmr", "DLmw")


def counted_run(
    kind: str, args: argparse.Namespace, out: Path, streams: int
) -> subprocess.Popen[bytes]:
    command = [
        "valgrind", "--tool=cachegrind", "--cache-sim=yes", f"--cachegrind-out-file={out}",
        sys.executable, "-m", "bench.counted", "--one", kind, "--streams", str(streams),
        "--tokens", str(args.tokens), "--rate", str(args.rate),
    ] + (["--no-stop-poll"] if args.no_stop_poll else [])  # fmt: skip
    return subprocess.Popen(
        command, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )  # fmt: skip


def totals(path: Path) -> dict[str, int]:
    """The `events:` and `summary:` lines of a cachegrind output file."""
    names: list[str] = []
    for line in path.read_text().splitlines():
        if line.startswith("events:"):
            names = line.split()[1:]
        elif line.startswith("summary:"):
            return dict(zip(names, map(int, line.split()[1:]), strict=True))
    raise SystemExit(f"{path}: no summary (did the run fail?)")


def one(kind: str, streams: int, tokens: int, rate: float, stop_poll: bool) -> None:
    """The counted process: start up, warm up, then `streams` answers of `kind`."""
    from gevent import monkey

    monkey.patch_all()
    import gc

    import gevent

    import webapp.recording
    from bench.inprocess import bench_app, cpu_per_token
    from bench.relay import free_port, start, wait_port

    if not stop_poll:
        webapp.recording.CANCEL_CHECK = 1e9  # the writer's own interval instead
    port = free_port()
    upstream = start([sys.executable, "-m", "bench.upstream", str(port)])
    # Generous bounds: under valgrind everything is ~50 times slower.
    settings = {"IDLE_TIMEOUT": "600", "TOTAL_TIMEOUT": "3000", "FIRST_TOKEN_TIMEOUT": "600"}
    if kind == "history-off":
        settings["HISTORY"] = "off"
    resumable = kind == "resumable"
    try:
        wait_port(port)
        app = bench_app(port, **settings)
        cpu_per_token(app, 20, 20, 0.0, resumable, settle=1.0)  # warm up
        gc.collect()
        gc.freeze()  # as wsgi.py does
        # Then the writes and the forgetting each answer leaves for later.
        if streams:
            cpu_per_token(app, streams, tokens, rate, resumable, settle=6.0)
        else:
            gevent.sleep(6.0)
    finally:
        upstream.terminate()


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--compare", choices=("resumable", "history"), default="resumable")
    parser.add_argument("--streams", type=int, default=60)
    parser.add_argument("--tokens", type=int, default=100)
    parser.add_argument("--rate", type=float, default=2.0)
    parser.add_argument("--no-stop-poll", action="store_true")
    parser.add_argument("--one", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        one(args.one, args.streams, args.tokens, args.rate, not args.no_stop_poll)
        return 0
    if shutil.which("valgrind") is None:
        raise SystemExit("valgrind is not installed: apt-get install valgrind")
    a, b = ("plain", "resumable") if args.compare == "resumable" else ("history-off", "plain")
    work = Path(tempfile.mkdtemp(prefix="counted-"))
    base = work / "start-up.out"
    runs = {a: work / f"{a}.out", b: work / f"{b}.out"}
    started = counted_run(a, args, base, 0)
    if started.wait() != 0:
        raise SystemExit("the start-up run failed")
    processes = [counted_run(kind, args, out, args.streams) for kind, out in runs.items()]
    if any(process.wait() != 0 for process in processes):
        raise SystemExit("a counted run failed")
    zero = totals(base)
    tokens = args.streams * args.tokens
    added = {kind: {e: totals(out)[e] - zero[e] for e in EVENTS} for kind, out in runs.items()}
    print(f"{args.streams} answers of {args.tokens} tokens at {args.rate}/s, per token:")
    for kind, counts in added.items():
        misses = counts["D1mr"] + counts["D1mw"]
        print(
            f"  {kind:12} {counts['Ir'] / tokens:9.0f} instructions, "
            f"{(counts['Dr'] + counts['Dw']) / tokens:8.0f} data refs, "
            f"{misses / tokens:6.0f} D1 misses"
        )
    ir = added[b]["Ir"] / added[a]["Ir"]
    d1 = (added[b]["D1mr"] + added[b]["D1mw"]) / (added[a]["D1mr"] + added[a]["D1mw"])
    print(f"{b} / {a}: instructions {ir:.3f}, D1 misses {d1:.3f}")
    print(f"per-function detail: cg_diff {runs[a]} {runs[b]} > d && cg_annotate d")
    return 0


if __name__ == "__main__":
    sys.exit(main())
