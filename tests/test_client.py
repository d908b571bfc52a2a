"""api_client.py, run as a person would: its output and exit codes."""

from __future__ import annotations

import os
import re
import select
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from tests.conftest import ROOT, Server
from tests.fake_upstream import FakeUpstream
from tests.helpers import prompt

NOWHERE = "http://127.0.0.1:9"  # nothing listens: the menu must not need a server
# The client keeps its cookie under ~/.cache: a home of the run's, never the user's.
HOME = tempfile.mkdtemp(prefix="codegen-client-home-")


def client(
    *args: str, stdin: str | None = None, home: str = HOME
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(ROOT / "api_client.py"), *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "HOME": home},
    )


def test_history_and_follow_up_across_runs(
    server: Server, fake: FakeUpstream, tmp_path: Path
) -> None:
    home = str(tmp_path)
    first = client(prompt(text="Write the first one"), "--url", server.url, home=home)
    assert first.returncode == 0, first.stderr
    answer_id = re.search(r"\[answer (\S+) in conversation (\S+)\]", first.stderr)
    assert answer_id
    follow = client(
        prompt(text="Now the second"), "--url", server.url, "--follow-up", answer_id[1], home=home
    )
    assert follow.returncode == 0, follow.stderr
    assert f"in conversation {answer_id[2]}]" in follow.stderr  # the same conversation
    listed = client("--history", "--url", server.url, home=home)
    assert listed.returncode == 0
    lines = listed.stdout.splitlines()
    assert len(lines) == 2 and "Now the second" in lines[0] and "Write the first" in lines[1]
    # Another client (another cookie) has a history of its own: empty.
    other = client("--history", "--url", server.url, home=str(tmp_path / "other"))
    assert other.returncode == 0 and other.stdout == ""
    unknown = client("more", "--url", server.url, "--follow-up", "nope", home=home)
    assert unknown.returncode == 2 and "answer_not_found" in unknown.stderr
    # An id that begins with "-" (as ids made before 2026-11-26 could) is still an id.
    dashed = client("more", "--url", server.url, "--follow-up", "-nope", home=home)
    assert dashed.returncode == 2 and "answer_not_found" in dashed.stderr


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
    assert client("x", "--url", NOWHERE).returncode == 3  # nothing listens


def test_total_timeout_stops_a_long_fast_answer(server: Server, fake: FakeUpstream) -> None:
    run = client(
        prompt("forever=1 delay=0.01 id=tt"), "--url", server.url, "--total-timeout", "0.3"
    )
    assert run.returncode == 3, run.stderr
    assert "timed out after 0.3 s" in run.stderr and "Traceback" not in run.stderr
    assert "t0" in run.stdout  # it did stream before giving up


def test_the_menu_comes_first_then_the_prompt(server: Server, fake: FakeUpstream) -> None:
    run = client("--url", server.url, stdin=f"1\n{prompt()}\n")
    assert run.returncode == 0, run.stderr
    assert "t0 t1" in run.stdout
    out = run.stdout
    positions = [out.index(s) for s in ("1) stream", "2) timeout", "3) invalid", "q) quit")]
    assert positions == sorted(positions)
    assert out.index("q) quit") < out.index("Choose") < out.index("Prompt")


def test_an_unknown_choice_asks_again(server: Server, fake: FakeUpstream) -> None:
    run = client("--url", server.url, stdin=f"7\n\n1\n{prompt()}\n")
    assert run.returncode == 0, run.stderr
    assert run.stderr.count("Please choose") == 2 and "t0 t1" in run.stdout


def test_option_2_times_out_on_a_slow_first_token(server: Server, fake: FakeUpstream) -> None:
    run = client("--url", server.url, stdin=f"2\n{prompt('first_delay=1.5 id=menu-slow')}\n")
    assert run.returncode == 3, run.stderr
    assert "timed out after 0.05 s" in run.stderr and "Traceback" not in run.stderr


def test_option_2_times_out_on_a_fast_model_too(server: Server, fake: FakeUpstream) -> None:
    # The first token comes at once and the rest quickly: the answer is just long.
    run = client("--url", server.url, stdin=f"2\n{prompt('forever=1 delay=0.005 id=menu-fast')}\n")
    assert run.returncode == 3, run.stderr
    assert "timed out after 0.05 s" in run.stderr and "Traceback" not in run.stderr
    # The client hung up: the app closed its upstream stream as well.
    closed = fake.wait_closed(1, timeout=10)
    assert closed and closed[0].how == "client_closed"


def test_option_3_shows_the_api_error(server: Server, fake: FakeUpstream) -> None:
    run = client("--url", server.url, stdin="3\n")
    assert run.returncode == 2, run.stderr
    # The API's status and error code, e.g. "[400] unknown_fields: Unknown fields: colour."
    assert re.search(r"^\[400\] [a-z_]+: ", run.stderr, re.M), run.stderr
    assert "Prompt" not in run.stdout  # a fixed bad payload: nothing to ask


def test_eof_or_quit_at_any_prompt_ends_cleanly() -> None:
    for stdin in ("", "1\n", "2\n", "9\n", "q\n"):
        run = client("--url", NOWHERE, stdin=stdin)
        assert run.returncode == 0, (stdin, run.stderr)
        assert "bye" in run.stderr and "Traceback" not in run.stderr, (stdin, run.stderr)
        assert "cannot reach" not in run.stderr  # no request was sent


def _read_until(proc: subprocess.Popen[bytes], marker: bytes, timeout: float = 20) -> bytes:
    assert proc.stdout is not None
    seen = b""
    deadline = time.monotonic() + timeout
    while marker not in seen:
        remaining = deadline - time.monotonic()
        assert remaining > 0, f"{marker!r} never came: {seen!r}"
        ready, _, _ = select.select([proc.stdout], [], [], remaining)
        if ready:
            data = os.read(proc.stdout.fileno(), 4096)
            assert data, f"the client exited before {marker!r}: {seen!r}"
            seen += data
    return seen


def _interactive(*args: str) -> subprocess.Popen[bytes]:
    # Ctrl-C as from a terminal. A run started in the background by a shell without job
    # control (`make test &` in a script) has SIGINT ignored, and a child keeps an
    # ignored signal: the client would ignore Ctrl-C, rightly, and these tests fail. A
    # signal this process handles is reset to the default in the child instead.
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        return subprocess.Popen(
            [sys.executable, "-u", str(ROOT / "api_client.py"), *args],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
    finally:
        signal.signal(signal.SIGINT, previous)


def test_ctrl_c_at_a_prompt_ends_cleanly() -> None:
    for answers in (b"", b"1\n"):
        proc = _interactive("--url", NOWHERE)
        assert proc.stdin is not None
        proc.stdin.write(answers)
        proc.stdin.flush()
        _read_until(proc, b"Prompt" if answers else b"Choose")
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=20)
        assert proc.returncode == 0, err
        assert b"bye" in err and b"Traceback" not in err


def test_ctrl_c_during_an_answer_ends_cleanly(server: Server, fake: FakeUpstream) -> None:
    proc = _interactive("--url", server.url)
    assert proc.stdin is not None
    proc.stdin.write(f"1\n{prompt('forever=1 delay=0.02 id=sigint')}\n".encode())
    proc.stdin.flush()
    _read_until(proc, b"t2 ")
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=20)
    assert proc.returncode == 130, err
    assert b"interrupted" in err and b"Traceback" not in err


def test_attach_a_file_and_get_the_patch(
    server: Server, fake: FakeUpstream, tmp_path: Path
) -> None:
    calc = tmp_path / "calc.py"
    calc.write_text("def add(a, b):\n    return a + b\n")
    patch = tmp_path / "changes.patch"
    done = client(
        prompt("answer=edit", "Add type hints"),
        "--url", server.url, "--format", "sse", "--file", str(calc), "--patch", str(patch),
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "[files] changed calc.py, new test_calc.py: patch in" in done.stderr
    subprocess.run(["git", "init", "-q"], cwd=tmp_path, check=True)
    subprocess.run(["git", "apply", "changes.patch"], cwd=tmp_path, check=True)
    assert "-> int:" in calc.read_text() and (tmp_path / "test_calc.py").exists()
    binary = tmp_path / "blob.bin"
    binary.write_bytes(b"\xff\xfe")
    refused = client("x", "--url", server.url, "--file", str(binary))
    assert refused.returncode == 2 and "cannot attach" in refused.stderr
