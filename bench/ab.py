"""A/B: the app from two source trees, side by side, scenarios alternated.

    python -m bench.ab OTHER_TREE [--rounds 6] [--streams 300 --tokens 100 --rate 20]
    git worktree add /tmp/before HEAD~1 && python -m bench.ab /tmp/before
    python -m bench.ab . --env-a HISTORY=off     # one tree, two settings
    python -m bench.ab . --body-b '{"resumable": true}'   # or two kinds of request
    python -m bench.ab . --save run1.json ...; python -m bench.ab --pool run1.json run2.json

On a noisy machine one run of `make bench` moves ±20%; a change worth 5-10%
only shows when both builds run in the same minutes. Both trees are served
from this checkout's virtualenv (one process each, as in `make bench`), the
rounds alternate which goes first, and the medians are compared. Run it once
against this same tree (`python -m bench.ab .`) to see the noise floor: with
the default scenario, A/A medians differed by 1-5% here; with small ones
(50 streams of 20 tokens) by up to 25%, so keep the default for decisions.
"""

from __future__ import annotations

from gevent import monkey

monkey.patch_all()

import argparse  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

import gevent  # noqa: E402

from bench.relay import (  # noqa: E402
    APP,
    COUNTERS,
    ROOT,
    Target,
    app_env,
    free_port,
    run,
    start,
    tree_counters,
    tree_cpu,
    wait_port,
)


def serve(
    tree: Path, upstream: int, workers: int, extra: dict[str, str]
) -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    process = start(APP, app_env(upstream, port, workers, extra), cwd=tree)
    wait_port(port)
    return process, port


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument(
        "other", type=Path, nargs="?", help="the other source tree (A); this one is B"
    )
    parser.add_argument("--save", help="write the paired rounds to this JSON file")
    parser.add_argument(
        "--pool", nargs="+", metavar="SAVED",
        help="run nothing: pool the rounds of runs saved with --save, and print their pairs",
    )  # fmt: skip
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--streams", type=int, default=300)
    parser.add_argument("--tokens", type=int, default=100)
    parser.add_argument("--rate", type=float, default=20.0)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--settle", type=float, default=3.0, help="seconds of rest before each run")
    parser.add_argument(
        "--linger", type=float, default=8.0,
        help="seconds to wait after the last round, so the whole-run CPU includes work an "
        "answer leaves for later (a finished job is forgotten 5 s after its end)",
    )  # fmt: skip
    for side in ("a", "b"):
        parser.add_argument(
            f"--env-{side}", action="append", default=[], metavar="KEY=VALUE",
            help=f"a setting for {side.upper()} only (repeatable)",
        )  # fmt: skip
    for side in ("a", "b"):
        parser.add_argument(
            f"--body-{side}", default="{}", help="JSON fields added to its requests"
        )
    args = parser.parse_args()
    if args.pool:
        return pool(args.pool)
    if args.other is None:
        parser.error("the other source tree is required (or --pool)")
    extra = {
        "A": dict(item.split("=", 1) for item in args.env_a),
        "B": dict(item.split("=", 1) for item in args.env_b),
    }
    bodies = {"A": json.loads(args.body_a), "B": json.loads(args.body_b)}

    up = free_port()
    processes = [start([sys.executable, "-m", "bench.upstream", str(up)])]
    wait_port(up)
    targets = []
    whole: dict[str, float] = {}
    counted: dict[str, dict[str, float]] = {}
    try:
        for name, tree in (("A", args.other.resolve()), ("B", ROOT)):
            process, port = serve(tree, up, args.workers, extra[name])
            processes.append(process)
            targets.append(Target(name, port, "/generate-code/", process.pid, bodies[name]))
        for target in targets:
            run(target, "warmup", 50, 20, 0, 10)
        # A round's CPU is read when its streams end; work an answer leaves for later
        # (freeing what it kept) lands in whichever round runs then, or in none. The
        # whole run's CPU, read after a linger, counts all of it once.
        gevent.sleep(args.linger)
        whole_from = {t.name: tree_cpu(t.pid) for t in targets if t.pid}
        counted_from = {t.name: tree_counters(t.pid) for t in targets if t.pid}
        relayed = {"A": 0, "B": 0}
        errored = 0
        cpu: dict[str, list[float]] = {"A": [], "B": []}
        ttft: dict[str, list[float]] = {"A": [], "B": []}
        # Each round's A and B ran in the same minute: their ratio cancels the
        # machine's drift between rounds, which medians of each side do not.
        pairs: list[tuple[float, float]] = []
        for i in range(args.rounds):
            this_round: dict[str, tuple[float, float]] = {}
            for target in targets if i % 2 == 0 else targets[::-1]:
                # Let the last run's streams finish closing on both sides first: a
                # target run straight after its own previous run measured 50-150 ms
                # more TTFT than one that had rested, whichever build it was.
                gevent.sleep(args.settle)
                result = run(target, "ab", args.streams, args.tokens, args.rate, args.streams)
                if result.errors or result.cpu_us_per_token is None:
                    print(f"{target.name}: {result.errors} errors; round not counted")
                    errored += 1
                    continue
                cpu[target.name].append(result.cpu_us_per_token)
                ttft[target.name].append(result.ttft_p50_ms)
                relayed[target.name] += args.streams * args.tokens
                this_round[target.name] = (result.cpu_us_per_token, result.ttft_p50_ms)
            if len(this_round) == 2:
                (cpu_a, ttft_a), (cpu_b, ttft_b) = this_round["A"], this_round["B"]
                pairs.append((cpu_b / cpu_a, ttft_b - ttft_a))
        gevent.sleep(args.linger)
        whole = {
            t.name: (tree_cpu(t.pid) - whole_from[t.name]) / relayed[t.name] * 1e6
            for t in targets
            if t.pid and relayed[t.name]
        }
        counted = {
            t.name: {
                key: (value - counted_from[t.name][key]) / relayed[t.name] * 1000
                for key, value in tree_counters(t.pid).items()
            }
            for t in targets
            if t.pid and relayed[t.name]
        }
    finally:
        for process in processes:
            process.terminate()
    for name, tree in (("A", args.other), ("B", ROOT)):
        if cpu[name]:
            settings = " ".join(f"{k}={v}" for k, v in extra[name].items()) + (
                f" {json.dumps(bodies[name])}" if bodies[name] else ""
            )
            print(
                f"{name} {tree} {settings}: "
                f"CPU per token median {statistics.median(cpu[name]):.1f} µs "
                f"{cpu[name]}, TTFT p50 median {statistics.median(ttft[name]):.2f} ms "
                f"{[round(t) for t in ttft[name]]}"
            )
    if cpu["A"] and cpu["B"]:
        print(
            f"B / A: CPU {statistics.median(cpu['B']) / statistics.median(cpu['A']):.2f}, "
            f"TTFT p50 {statistics.median(ttft['B']) - statistics.median(ttft['A']):+.1f} ms"
        )
    if len(whole) == 2 and errored:
        # Their CPU is in the whole run, their tokens are not: the figure would lie.
        print(f"whole run: not shown, {errored} runs had errors")
    elif len(whole) == 2:
        print(
            f"whole run, rests included (work left for later counted once): CPU per token "
            f"A {whole['A']:.1f} µs, B {whole['B']:.1f} µs, B/A {whole['B'] / whole['A']:.3f}"
        )
    if len(counted) == 2 and not errored:
        print("whole run, per 1000 tokens (kernel's part, faults, switches):")
        for key in COUNTERS:
            a, b = counted["A"][key], counted["B"][key]
            print(f"  {key:<18} A {a:10.4f}  B {b:10.4f}  B/A {b / a if a else math.nan:.3f}")
    print_pairs(pairs)
    if args.save:
        record = {"argv": sys.argv[1:], "pairs": pairs, "whole": whole, "counted": counted}
        Path(args.save).write_text(json.dumps(record, indent=1))
    return 0


def print_pairs(pairs: list[tuple[float, float]]) -> None:
    if pairs:
        ratios, gaps = [p[0] for p in pairs], [p[1] for p in pairs]
        print(
            f"paired by round ({len(pairs)}): CPU B/A median {statistics.median(ratios):.3f}"
            f"{interval(ratios, '{:.3f}')}, TTFT p50 B-A median "
            f"{statistics.median(gaps):+.1f} ms{interval(gaps, '{:+.1f}')}"
        )


def pool(paths: list[str]) -> int:
    """The rounds of several saved runs (`--save`) as one sample: a tighter interval
    when one run's cannot tell a small difference from noise."""
    pairs: list[tuple[float, float]] = []
    for path in paths:
        try:
            record = json.loads(Path(path).read_text())
        except (OSError, ValueError) as exc:
            raise SystemExit(f"{path}: not a run saved with --save ({exc})") from None
        print(f"{path}: {len(record['pairs'])} rounds of {' '.join(record['argv'])}")
        pairs += [(ratio, gap) for ratio, gap in record["pairs"]]
    print_pairs(pairs)
    return 0


def median_interval(values: list[float], confidence: float = 0.95) -> tuple[float, float] | None:
    """A distribution-free interval for the median: the k-th smallest and k-th
    largest values, k the largest with P(Binomial(n, 1/2) < k) <= (1 - confidence)/2.
    None when n is too small for one (below 6 at 95%)."""
    n = len(values)
    tail, k, below = (1 - confidence) / 2, 0, 0.0
    while True:
        below += math.comb(n, k) / 2**n  # P(fewer than k + 1 of n below the median)
        if below > tail:
            break
        k += 1
    if k == 0:
        return None
    ordered = sorted(values)
    return ordered[k - 1], ordered[n - k]


def interval(values: list[float], form: str) -> str:
    found = median_interval(values)
    if found is None:
        return " (too few rounds for a 95% interval)"
    return f" (95% interval {form.format(found[0])} to {form.format(found[1])})"


if __name__ == "__main__":
    sys.exit(main())
