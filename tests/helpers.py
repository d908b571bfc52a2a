"""Helpers shared by the test modules: prompts for the fake upstream, reading
streamed answers, driving the page. (Fixtures live in conftest.py.)"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import requests
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import Server


def csrf_token_of(html: str) -> str:
    return html.split('name="csrf_token" type="hidden" value="')[1].split('"')[0]


MARGIN = 1.0


def sse(server: Server, directive: str, **body: Any) -> tuple[int, list[tuple[str, Any]], float]:
    started = time.monotonic()
    response = requests.post(
        server.url + "/generate-code/",
        json={"prompt": prompt(directive), **body},
        headers={"Accept": "text/event-stream"},
        timeout=30,
    )
    elapsed = time.monotonic() - started
    if response.status_code != 200:
        return response.status_code, [("status", response.json())], elapsed
    return 200, sse_events(response.text), elapsed


def text_of(events: list[tuple[str, Any]]) -> str:
    return "".join(data["text"] for name, data in events if name == "delta")


def leave_mid_stream(server: Server, marker: str, reads: int) -> float:
    """Take `reads` chunks of an endless answer, then go away; returns when."""
    with requests.post(
        server.url + "/generate-code/",
        json={"prompt": prompt(f"forever=1 delay=0.05 id={marker}")},
        stream=True,
        timeout=30,
    ) as response:
        chunks = response.iter_content(chunk_size=None)
        for _ in range(reads):
            assert next(chunks)
        response.raw._fp.fp.raw._sock.shutdown(2)  # the client goes away mid-stream
        return time.monotonic()


CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def submit(page: Any, text: str) -> None:
    page.fill("#prompt", text)
    page.press("#prompt", "Control+Enter")


def wait_idle(page: Any, timeout: float = 15_000) -> None:
    page.wait_for_selector("#generate:not([disabled])", timeout=timeout)


TOKENS = [f"t{i} " for i in range(8)]


def prompt(directive: str = "", text: str = "Write hello world") -> str:
    return f"{text} [[fake {directive}]]"


def sse_events(body: str) -> list[tuple[str, Any]]:
    events = []
    for block in body.split("\n\n"):
        lines = [line for line in block.split("\n") if line and not line.startswith(":")]
        if not lines:
            continue
        name = next(line[7:] for line in lines if line.startswith("event: "))
        data = json.loads(next(line[6:] for line in lines if line.startswith("data: ")))
        events.append((name, data))
    return events


def post(server: Server, directive: str = "", **kwargs: Any) -> requests.Response:
    return requests.post(
        server.url + "/generate-code/", json={"prompt": prompt(directive)}, timeout=30, **kwargs
    )


def metrics(server: Server) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = requests.get(server.url + "/metrics", timeout=5).text
    samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def value(samples: dict[Any, float], name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def master_children(pid: int) -> list[int]:
    try:
        return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        found = []
        for status in Path("/proc").glob("[0-9]*/status"):
            try:
                fields = dict(
                    line.split(":", 1) for line in status.read_text().splitlines() if ":" in line
                )
            except OSError:
                continue
            if int(fields["PPid"]) == pid:
                found.append(int(status.parent.name))
        return found


def worker_pid(server: Server) -> int:
    children = master_children(server.proc.pid)
    assert len(children) == 1, children  # WEB_CONCURRENCY=1
    return children[0]


def memory(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no {field} for {pid}")
