"""A few hundred concurrent streams with a mix of faults, through gunicorn + gevent."""

from __future__ import annotations

import json
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
import requests

from tests.fake_upstream import FakeUpstream
from tests.helpers import prompt

STREAMS = 250
FAULTS = {
    "ok": ("tokens=20 delay=0.02", "done"),  # outcome: the last line's code or type
    "drop": ("drop_after=5 delay=0.02", "upstream_disconnected"),
    "stall": ("stall_after=5 delay=0.02", "idle_timeout"),
    "malformed": ("malformed_after=5 delay=0.02", "upstream_malformed"),
    "retried": ("fail=500 tokens=10 delay=0.02", "done"),
}


@pytest.mark.soak
def test_hundreds_of_streams_with_faults_all_end(serve: Any, fake: FakeUpstream) -> None:
    # This process runs the clients and the fake upstream too, so under this load
    # the upstream can be slow to start: a generous first-token bound.
    server = serve(
        WEB_CONCURRENCY="2", FIRST_TOKEN_TIMEOUT="15", IDLE_TIMEOUT="2", TOTAL_TIMEOUT="30"
    )
    kinds = list(FAULTS)

    def one(i: int) -> tuple[str, str, str]:
        kind = kinds[i % len(kinds)]
        directive = f"{FAULTS[kind][0]} id=soak{i}"
        with requests.post(
            server.url + "/generate-code/",
            json={"prompt": prompt(directive)},
            headers={"Accept": "application/x-ndjson"},
            timeout=60,
        ) as response:
            if response.status_code != 200:
                return kind, f"status {response.status_code}: {response.text}", ""
            lines = [json.loads(line) for line in response.text.splitlines()]
        last = lines[-1] if lines else {"type": "nothing"}
        outcome = last.get("code", last["type"])
        text = "".join(x["text"] for x in lines if x["type"] == "delta")
        return kind, outcome, text

    started = time.monotonic()
    with ThreadPoolExecutor(STREAMS) as pool:
        results = list(pool.map(one, range(STREAMS)))

    outcomes = Counter((kind, outcome) for kind, outcome, _ in results)
    expected = Counter({(k, FAULTS[k][1]): STREAMS // len(FAULTS) for k in FAULTS})
    assert outcomes == expected, (outcomes, server.logs()[-3000:])
    for i, (_, _, text) in enumerate(results):  # nothing lost, nothing repeated
        sent = "".join(t for r in fake.records_for(f"id=soak{i}]]") for t in r.tokens_sent)
        assert text == sent
    # One upstream stream per answer, each closed once (a refused attempt opens none).
    # Only this test's streams: a close from an earlier test may land after the reset,
    # under a request number the reset hands out again.
    mine = {r.number for i in range(STREAMS) for r in fake.records_for(f"id=soak{i}]]")}
    closed = [
        c for c in fake.wait_closed(STREAMS, timeout=10) if c.request_id in mine and c.at >= started
    ]
    assert len(closed) == STREAMS and len({c.request_id for c in closed}) == STREAMS
    assert fake.open_streams == 0
    logs = server.logs()
    assert "WORKER TIMEOUT" not in logs and "Traceback" not in logs
    assert logs.count("Booting worker") == 2
