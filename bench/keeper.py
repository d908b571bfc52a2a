"""What a resumable answer's job adds to its relay, in one process, nothing else:
no server, no sockets, no history.

    python -m bench.keeper [--answers 2000] [--tokens 100] [--repeats 7]
    python -m bench.keeper --only job --answers 400   # under valgrind, see below

Each answer is a relay over a scripted upstream of `--tokens` texts, read to its end
through the text/plain formatter, as three kinds:
- `plain`: the relay's events, as a non-resumable answer;
- `job`: the same through its job (`Job.driven()`), with nobody else reading: what
  every never-dropped resumable answer pays;
- `watched`: the same with one follower (`Job.follow(0)`) attached all along: what
  buffering each event for a reader costs (the follower's own reading included).

It prints CPU µs per answer (the fastest of `--repeats` batches, with the collector
off while timing) and, for the two others, their difference from plain per answer
and per event. Wall-clock CPU moves by a few percent from run to run on a shared
machine; for exact counts run one kind at two sizes under cachegrind and take the
difference (`valgrind --tool=cachegrind --cache-sim=no --cachegrind-out-file=/dev/null
python -m bench.keeper --only job --answers 100`, then 400: instructions per answer =
the difference / 300).
"""

from __future__ import annotations

from gevent import monkey

monkey.patch_all()

import argparse  # noqa: E402
import gc  # noqa: E402
import time  # noqa: E402
from collections.abc import Iterator  # noqa: E402

import gevent  # noqa: E402

from webapp import formats  # noqa: E402
from webapp.config import Config  # noqa: E402
from webapp.generation import Relay  # noqa: E402
from webapp.jobs import Job  # noqa: E402
from webapp.providers.base import (  # noqa: E402
    Final,
    GenerationRequest,
    IteratorStream,
    UpstreamStream,
)

KINDS = ("plain", "job", "watched")


class Scripted:
    """An upstream that answers at once with the same `tokens` texts."""

    models = ("m",)
    continues_partial = False

    def __init__(self, tokens: int) -> None:
        self.texts = [f"t{i} " for i in range(tokens)]

    def open(self, request: GenerationRequest) -> UpstreamStream:
        return IteratorStream(self._items())

    def _items(self) -> Iterator[str | Final]:
        yield from self.texts
        yield Final("stop")

    def count_tokens(self, text: str) -> int:
        return len(text)


def answer(kind: str, provider: Scripted, config: Config, request: GenerationRequest) -> None:
    relay = Relay(provider, request, config, "bench", len, 1)  # type: ignore[arg-type]
    relay.start(commit_after=None)
    if kind == "plain":
        body = formats.text_plain(relay.events())
        follower = None
    else:
        job = Job(relay, "bench", grace=5, heartbeat=10)
        body = formats.COUNTED[formats.TEXT](job.driven(), job.start)
        follower = gevent.spawn(lambda: list(job.follow(0))) if kind == "watched" else None
        gevent.sleep(0)  # the follower attaches before the first text
    for _ in body:
        pass
    if follower is not None:
        follower.join()


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--answers", type=int, default=2000)
    parser.add_argument("--tokens", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--only", choices=KINDS)
    args = parser.parse_args()
    config = Config.from_env({"OPENAI_API_KEY": "bench", "HEARTBEAT_INTERVAL": "10"})
    provider = Scripted(args.tokens)
    request = GenerationRequest([{"role": "user", "content": "x"}], "m", args.tokens)
    kinds = (args.only,) if args.only else KINDS
    for kind in kinds:  # warm up every path before any timing
        for _ in range(50):
            answer(kind, provider, config, request)
    if args.only:
        gc.collect()
        gc.disable()
        for _ in range(args.answers):
            answer(args.only, provider, config, request)
        return 0
    best = dict.fromkeys(kinds, float("inf"))
    for _ in range(args.repeats):
        for kind in kinds:  # interleaved, so that drift hits all three alike
            gc.collect()
            gc.disable()
            began = time.process_time()
            for _ in range(args.answers):
                answer(kind, provider, config, request)
            spent = (time.process_time() - began) / args.answers * 1e6
            gc.enable()
            best[kind] = min(best[kind], spent)
    for kind in kinds:
        extra = best[kind] - best["plain"]
        more = "" if kind == "plain" else f" ({extra:+.1f} µs, {extra / args.tokens:+.2f} a token)"
        print(f"{kind:8} {best[kind]:7.1f} µs an answer of {args.tokens} tokens{more}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
