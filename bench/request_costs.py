"""What history adds to each request, piece by piece, in one process.

    python -m bench.request_costs [--requests 3000]

Answers of one token, one after another (Flask's test client, no cookie kept, as
`bench.ab`'s clients), against the fake upstream, with HISTORY off and then on.
Each piece of history's work on the way to the first token is timed where it
runs (a wrapper around it), so its figure is what it costs among a request's
other work: caches cold, as under load, which is several times what `timeit`
gives it alone. The whole request's CPU is printed too; the database writes
(the recorder's, batched) are in that figure but not in the pieces.
"""

from __future__ import annotations

from gevent import monkey

monkey.patch_all()

import argparse  # noqa: E402
import collections  # noqa: E402
import functools  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable  # noqa: E402
from typing import Any  # noqa: E402

from bench.inprocess import bench_app  # noqa: E402
from bench.relay import free_port, start, wait_port  # noqa: E402
from webapp import recording, service, sessions  # noqa: E402

SPENT: collections.Counter[str] = collections.Counter()


def timed(owner: Any, name: str, label: str) -> None:
    inner: Callable[..., Any] = getattr(owner, name)

    @functools.wraps(inner)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        began = time.perf_counter_ns()
        try:
            return inner(*args, **kwargs)
        finally:
            SPENT[label] += time.perf_counter_ns() - began

    setattr(owner, name, wrapper)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=3000)
    args = parser.parse_args()
    timed(service, "owner", "owner (the anonymous id, the session)")
    timed(recording.Recorder, "begin", "recorder.begin (ids, queueing the row)")
    timed(sessions.CookieSessions, "save_session", "save_session (Set-Cookie)")
    timed(service, "new_relay", "new_relay (all of the above but the cookie, and more)")
    port = free_port()
    upstream = start([sys.executable, "-m", "bench.upstream", str(port)])
    try:
        wait_port(port)
        for history in ("off", "on"):
            app = bench_app(port, HISTORY=history)
            client = app.test_client(use_cookies=False)
            body = {"prompt": "bench rate=0", "max_tokens": 1}
            for _ in range(300):  # warm up
                client.post("/generate-code/", json=body)
            SPENT.clear()
            cpu = time.process_time()
            for _ in range(args.requests):
                response = client.post("/generate-code/", json=body)
                if response.status_code != 200:
                    raise SystemExit(f"a request failed: {response.status_code}")
            cpu = (time.process_time() - cpu) / args.requests * 1e6
            print(f"HISTORY={history}: {cpu:.0f} µs CPU per request")
            for label, spent in SPENT.items():
                print(f"  {label:56} {spent / args.requests / 1e3:6.1f} µs")
    finally:
        upstream.terminate()
    return 0


if __name__ == "__main__":
    sys.exit(main())
