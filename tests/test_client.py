"""api_client.py, run as a person would: its output and exit codes."""

from __future__ import annotations

import subprocess
import sys

from tests.conftest import ROOT, Server
from tests.fake_upstream import FakeUpstream
from tests.test_api import prompt


def client(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(ROOT / "api_client.py"), *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_streams_a_prompt_in_each_format(server: Server, fake: FakeUpstream) -> None:
    for fmt in ("text", "sse", "ndjson"):
        run = client(prompt(), "--url", server.url, "--format", fmt)
        assert run.returncode == 0, run.stderr
        assert run.stdout.strip() == "t0 t1 t2 t3 t4 t5 t6 t7"
    run = client(prompt(), "--url", server.url, "--no-stream")
    assert run.returncode == 0 and "t7" in run.stdout


def test_exit_codes_tell_failures_apart(server: Server, fake: FakeUpstream) -> None:
    assert client("", "--url", server.url).returncode == 2  # 400: empty prompt
    assert client(prompt("status=401 id=c1"), "--url", server.url).returncode == 3  # 502
    truncated = client(prompt("drop_after=3 id=c2"), "--url", server.url)
    assert truncated.returncode == 4 and "truncated" in truncated.stderr
    errored = client(prompt("drop_after=3 id=c3"), "--url", server.url, "--format", "sse")
    assert errored.returncode == 4 and "upstream_disconnected" in errored.stderr
    assert client("x", "--url", "http://127.0.0.1:9").returncode == 3  # nothing listens


def test_the_interactive_menu(server: Server, fake: FakeUpstream) -> None:
    valid = client("--url", server.url, stdin=f"{prompt()}\n1\n")
    assert valid.returncode == 0 and "t0 t1" in valid.stdout
    slow = client("--url", server.url, stdin=f"{prompt('first_delay=1.5 id=menu')}\n2\n")
    assert slow.returncode == 3 and "timed out" in slow.stderr
    invalid = client("--url", server.url, stdin="\n3\n")
    assert invalid.returncode == 2 and "400" in invalid.stderr
