"""Two kinds of answer relayed in one process: less noise than bench.ab.

    python -m bench.inprocess [--compare resumable|history] [--streams 300 --tokens 100
                              --rate 20 --rounds 4 --settle 3]

`--compare resumable` (the default): plain answers against resumable ones, one app.
`--compare history`: the same plain answers from an app with HISTORY=off against
one with history on, both in this process.

The apps run in this process (no gunicorn), driven by Flask's test client from
`--streams` greenlets at once against the fake upstream (`bench/upstream.py`, its
own process). CPU is this process's: the app's and the client's, which both kinds
share, so the difference between them is the app's. A round's CPU is read
`--settle` seconds after its last answer, so work an answer leaves for later (the
recorder's writes, a finished job's end) counts in its own round, and an idle
process costs next to nothing meanwhile. Rounds alternate which kind goes first;
medians and paired ratios are printed. Tokens are counted on every answer: a
round with a short answer fails loudly rather than counting.
"""

from __future__ import annotations

from gevent import monkey

monkey.patch_all()

import argparse  # noqa: E402
import gc  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402

import gevent  # noqa: E402
from flask import Flask  # noqa: E402
from gevent.pool import Pool  # noqa: E402

from bench.relay import app_settings, free_port, start, wait_port  # noqa: E402
from webapp import create_app  # noqa: E402


def one(app: Flask, tokens: int, rate: float, resumable: bool) -> None:
    body: dict[str, object] = {"prompt": f"bench rate={rate}", "max_tokens": tokens}
    if resumable:
        body["resumable"] = True
    response = app.test_client().post("/generate-code/", json=body, buffered=False)
    chunks: list[bytes] = list(response.response)  # type: ignore[arg-type]
    seen = sum(chunk.count(b"tok") for chunk in chunks)
    response.close()
    if seen != tokens:
        raise SystemExit(f"an answer had {seen} tokens of {tokens}")


def cpu_per_token(
    app: Flask, streams: int, tokens: int, rate: float, resumable: bool, settle: float = 0.0
) -> float:
    started = time.process_time()
    Pool(streams).map(lambda _: one(app, tokens, rate, resumable), range(streams))
    gevent.sleep(settle)
    return (time.process_time() - started) / (streams * tokens) * 1e6


def bench_app(upstream_port: int, **settings: str) -> Flask:
    """The app in this process, with the benchmarks' settings (`settings` override)."""
    return create_app({**app_settings(upstream_port), **settings})


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--streams", type=int, default=300)
    parser.add_argument("--tokens", type=int, default=100)
    parser.add_argument("--rate", type=float, default=20.0)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--settle", type=float, default=3.0)
    parser.add_argument("--compare", choices=("resumable", "history"), default="resumable")
    args = parser.parse_args()
    port = free_port()
    upstream = start([sys.executable, "-m", "bench.upstream", str(port)])
    names = ("plain", "resumable") if args.compare == "resumable" else ("history off", "on")
    try:
        wait_port(port)
        # Kind False and True: (app, resumable requests).
        if args.compare == "resumable":
            app = bench_app(port)
            kinds = {False: (app, False), True: (app, True)}
        else:
            kinds = {False: (bench_app(port, HISTORY="off"), False), True: (bench_app(port), False)}
        for app, resumable in kinds.values():  # warm up both paths
            cpu_per_token(app, 50, 20, 0.0, resumable, args.settle)
        # As wsgi.py does in each worker. Without it, full collections of start-up's
        # objects land in some rounds and not others: bursts of 300 answers run
        # this way alternated ~100 ms in TTFT, round after round.
        gc.collect()
        gc.freeze()
        results: dict[bool, list[float]] = {False: [], True: []}
        for i in range(args.rounds):
            for kind in (False, True) if i % 2 == 0 else (True, False):
                app, resumable = kinds[kind]
                results[kind].append(
                    cpu_per_token(app, args.streams, args.tokens, args.rate, resumable, args.settle)
                )
    finally:
        upstream.terminate()
    a, b = (statistics.median(results[k]) for k in (False, True))
    for name, kind in zip(names, (False, True), strict=True):
        rounds = ", ".join(f"{v:.1f}" for v in results[kind])
        median = statistics.median(results[kind])
        print(f"{name:11} CPU per token median {median:.1f} µs [{rounds}]")
    print(f"{names[1]} / {names[0]}: {b / a:.3f}")
    # Each round ran both kinds back to back: their ratio cancels the drift between rounds.
    paired = sorted(r / p for p, r in zip(results[False], results[True], strict=True))
    shown = [round(x, 3) for x in paired]
    print(f"paired by round: median {statistics.median(paired):.3f} {shown}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
