#!/usr/bin/env python3
"""A small client for POST /generate-code/.

Interactive (no arguments): a menu first, then the prompt for the choice:
  1 stream a valid prompt to the console,
  2 a timeout test: a long answer with a client timeout of 0.05 s, shorter than
    any model's time to first token and than the whole answer, so it always
    ends with "timed out after 0.05 s",
  3 an invalid payload (shows the server's 400 error),
  q quit. Ctrl-D or Ctrl-C at a prompt says "bye" and exits with 0.

Non-interactive:
  python api_client.py "Write a Python palindrome check" --format sse
  python api_client.py "..." --no-stream --url http://localhost:8000
  python api_client.py --history                      your stored answers, newest first
  python api_client.py "Now add type hints" --follow-up ANSWER_ID
  python api_client.py "Add type hints" --file calc.py --format sse --patch changes.patch
                       (then `git apply changes.patch`; the plain-text format has no
                       end event, so it cannot say which files changed)

Each answer's id is printed after it ("[answer ... in conversation ...]").
Without API keys the server knows you by its session cookie, which is kept in
~/.cache/streaming-codegen/api-client-cookies.txt between runs; with keys,
pass --key (or set CODEGEN_API_KEY).

Exit codes: 0 success, 2 client error (4xx or bad usage), 3 server error
(5xx, unreachable or timed out), 4 a stream that ended early (truncated or an
error event), 130 interrupted by Ctrl-C while a request was running.
"""

from __future__ import annotations

import argparse
import contextlib
import http.cookiejar
import json
import os
import sys
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import requests
from urllib3.exceptions import ReadTimeoutError

DEFAULT_URL = "http://localhost:8000"
DEFAULT_PROMPT = "Write a Python function that checks whether a string is a palindrome."
LONG_PROMPT = (
    "Write a complete, thoroughly commented Python implementation of a red-black tree "
    "with insert, delete, search and in-order traversal, followed by a full pytest suite."
)
ACCEPT = {"text": "text/plain", "sse": "text/event-stream", "ndjson": "application/x-ndjson"}
# Option 2: far below any model's time to first token, and below the time a
# long answer takes to stream even from a fast one.
TIMEOUT_TEST_SECONDS = 0.05
CONNECT_TIMEOUT = 5.0
MENU = (
    "1) stream a valid prompt\n"
    f"2) timeout test (a long answer; the client gives up after {TIMEOUT_TEST_SECONDS:g} s)\n"
    "3) invalid payload (the server answers 400)\n"
    "q) quit"
)

OK, CLIENT_ERROR, SERVER_ERROR, TRUNCATED, INTERRUPTED = 0, 2, 3, 4, 130
COOKIES = Path("~/.cache/streaming-codegen/api-client-cookies.txt").expanduser()


def session(key: str | None = None) -> requests.Session:
    """Requests with the server's session cookie kept between runs (your history's
    owner when the server has no API keys), and the key when given."""
    client = requests.Session()
    jar = http.cookiejar.LWPCookieJar(str(COOKIES))
    if COOKIES.exists():
        with contextlib.suppress(OSError, http.cookiejar.LoadError):  # unreadable: a new one
            jar.load(ignore_discard=True)
    client.cookies = jar  # type: ignore[assignment]
    if key:
        client.headers["Authorization"] = f"Bearer {key}"
    return client


def save_cookies(client: requests.Session) -> None:
    jar = client.cookies
    if isinstance(jar, http.cookiejar.LWPCookieJar):
        COOKIES.parent.mkdir(parents=True, exist_ok=True)
        jar.save(ignore_discard=True)
        COOKIES.chmod(0o600)


T = TypeVar("T")


class _DeadlinePassed(Exception):
    """The whole answer took longer than the client's total timeout."""


def _until(items: Iterable[T], deadline: float | None) -> Iterator[T]:
    """The items, until the monotonic clock passes `deadline` (None: no limit)."""
    for item in items:
        if deadline is not None and time.monotonic() > deadline:
            raise _DeadlinePassed
        yield item


def _error_exit(response: requests.Response) -> int:
    try:
        error = response.json()["error"]
        print(f"\n[{response.status_code}] {error['code']}: {error['message']}", file=sys.stderr)
    except (ValueError, KeyError, TypeError):
        print(f"\n[{response.status_code}] {response.text[:500]}", file=sys.stderr)
    retry = response.headers.get("Retry-After")
    if retry:
        print(f"retry after {retry} s", file=sys.stderr)
    return CLIENT_ERROR if response.status_code < 500 else SERVER_ERROR


def _report_files(final: dict[str, Any], patch: str | None) -> None:
    """Which attached files the answer changed (or made), and their patch in `patch`."""
    changes = final.get("files") or []
    if not changes:
        return
    listed = ", ".join(f"{entry['status']} {entry['name']}" for entry in changes)
    if patch:
        with open(patch, "w", encoding="utf-8") as out:
            out.write("".join(entry.get("diff") or "" for entry in changes))
        listed += f": patch in {patch} (git apply {patch})"
    print(f"[files] {listed}", file=sys.stderr)


def _stream_events(
    response: requests.Response, fmt: str, deadline: float | None, patch: str | None = None
) -> int:
    """Print deltas as they come; report the end or the error event."""
    final: dict[str, Any] | None = None
    if fmt == "ndjson":
        for line in _until(response.iter_lines(), deadline):
            if not line:
                continue
            event = json.loads(line)
            if event["type"] == "delta":
                print(event["text"], end="", flush=True)
            elif event["type"] in ("done", "error"):
                final = event
    else:
        name = ""
        for line in _until(response.iter_lines(decode_unicode=True), deadline):
            if line.startswith("event: "):
                name = line[7:]
            elif line.startswith("data: "):
                data = json.loads(line[6:])
                if name == "delta":
                    print(data["text"], end="", flush=True)
                else:
                    final = {"type": name, **data}
    print()
    if final is None:
        print("[stream ended without a final event]", file=sys.stderr)
        return TRUNCATED
    if final["type"] == "error":
        print(f"[error] {final['code']}: {final['message']}", file=sys.stderr)
        return TRUNCATED
    usage = final.get("usage", {})
    print(
        f"[done] {final.get('finish_reason')}, {usage.get('completion_tokens')} tokens, "
        f"request {final.get('request_id')}",
        file=sys.stderr,
    )
    _report_files(final, patch)
    return OK


def generate(
    url: str,
    body: Any,
    fmt: str = "text",
    stream: bool = True,
    timeout: float = 300.0,
    total_timeout: float | None = None,
    client: requests.Session | None = None,
    patch: str | None = None,
) -> int:
    """POST the body and print the answer; `timeout` bounds each wait for the
    server (the first byte included), `total_timeout` the whole answer; `patch`
    receives the diffs of the attached files the answer changed."""
    endpoint = url.rstrip("/") + "/generate-code/"
    headers = {"Accept": ACCEPT[fmt]}
    if not stream and isinstance(body, dict):
        body = {**body, "stream": False}
    deadline = None if total_timeout is None else time.monotonic() + total_timeout
    try:
        data = body if isinstance(body, str) else json.dumps(body)
        with (client or requests).post(
            endpoint,
            data=data,
            headers={**headers, "Content-Type": "application/json"},
            stream=stream,
            timeout=(CONNECT_TIMEOUT, timeout),
        ) as response:
            if response.status_code != 200:
                return _error_exit(response)
            if response.headers.get("X-Answer-ID"):
                print(
                    f"[answer {response.headers['X-Answer-ID']} in conversation "
                    f"{response.headers.get('X-Conversation-ID', '?')}]",
                    file=sys.stderr,
                )
            if not stream:
                answer = response.json()
                print(answer["text"])
                print(f"[done] {answer['usage']}", file=sys.stderr)
                _report_files(answer, patch)
                return OK
            if fmt != "text":
                return _stream_events(response, fmt, deadline, patch)
            chunks = response.iter_content(chunk_size=None, decode_unicode=True)
            for chunk in _until(chunks, deadline):
                print(chunk, end="", flush=True)
            print()
            return OK
    except _DeadlinePassed:
        print(
            f"\n[timed out after {total_timeout:g} s: the answer was still streaming]",
            file=sys.stderr,
        )
        return SERVER_ERROR
    except requests.exceptions.ChunkedEncodingError:
        print(
            "\n[stream truncated: the server ended it before the answer was complete]",
            file=sys.stderr,
        )
        return TRUNCATED
    except requests.exceptions.ConnectTimeout:
        print(
            f"\n[timed out after {CONNECT_TIMEOUT:g} s connecting to {endpoint}]", file=sys.stderr
        )
        return SERVER_ERROR
    except requests.exceptions.Timeout:
        print(f"\n[timed out after {timeout:g} s waiting for the server]", file=sys.stderr)
        return SERVER_ERROR
    except requests.exceptions.ConnectionError as exc:
        if exc.args and isinstance(exc.args[0], ReadTimeoutError):
            # requests reports a read timeout in the middle of a body this way.
            print(
                f"\n[timed out after {timeout:g} s waiting for more of the answer]", file=sys.stderr
            )
            return SERVER_ERROR
        print(f"\n[cannot reach {endpoint}: {exc.__class__.__name__}]", file=sys.stderr)
        return SERVER_ERROR


class _Quit(Exception):
    """The person ended the session at a prompt (q, Ctrl-D or Ctrl-C)."""


def _ask(question: str) -> str:
    try:
        return input(question).strip()
    except (EOFError, KeyboardInterrupt):
        print()  # the cursor is still on the question's line
        raise _Quit from None


def menu(url: str) -> int:
    """The menu first, then (for 1 and 2) the prompt. One request, then exit with its code."""
    try:
        print(MENU)
        choice = _ask("Choose 1, 2, 3 or q: ").lower()
        while choice not in ("1", "2", "3", "q", "quit", "exit"):
            print("Please choose 1, 2, 3 or q.", file=sys.stderr)
            choice = _ask("Choose 1, 2, 3 or q: ").lower()
        if choice == "1":
            prompt = _ask(f"Prompt (Enter for the default: {DEFAULT_PROMPT!r}): ")
            return generate(url, {"prompt": prompt or DEFAULT_PROMPT})
        if choice == "2":
            prompt = _ask(f"Prompt for a long answer (Enter for the default: {LONG_PROMPT!r}): ")
            seconds = TIMEOUT_TEST_SECONDS
            return generate(
                url, {"prompt": prompt or LONG_PROMPT}, timeout=seconds, total_timeout=seconds
            )
        if choice == "3":
            return generate(url, {"prompt": "", "temperature": "hot", "colour": "blue"})
        raise _Quit
    except _Quit:
        print("bye", file=sys.stderr)
        return OK


def history(url: str, client: requests.Session, limit: int = 20) -> int:
    """Print your stored answers, newest first: id, when, prompt."""
    try:
        response = client.get(
            url.rstrip("/") + "/answers", params={"limit": limit}, timeout=CONNECT_TIMEOUT
        )
    except requests.RequestException as exc:
        print(f"[cannot reach {url}: {exc.__class__.__name__}]", file=sys.stderr)
        return SERVER_ERROR
    if response.status_code != 200:
        return _error_exit(response)
    answers = response.json()["answers"]
    if not answers:
        print("No stored answers yet (for this key, or this client's cookie).", file=sys.stderr)
    for answer in answers:
        prompt = " ".join(answer["prompt"].split())[:70]
        print(f"{answer['id']}  {answer['created_at'][:16].replace('T', ' ')}  {prompt}")
    return OK


def conversation_of(url: str, client: requests.Session, answer_id: str) -> str | None:
    response = client.get(f"{url.rstrip('/')}/answers/{answer_id}", timeout=CONNECT_TIMEOUT)
    if response.status_code != 200:
        _error_exit(response)
        return None
    conversation: str = response.json()["conversation_id"]
    return conversation


def _glue_follow_up(argv: list[str]) -> list[str]:
    """`--follow-up ID` as `--follow-up=ID`: an id may begin with "-" (ids made before
    2026-11-26 could), which argparse would otherwise take for an option."""
    glued: list[str] = []
    rest = iter(argv)
    for arg in rest:
        value = next(rest, None) if arg == "--follow-up" else None
        glued.append(arg if value is None else f"--follow-up={value}")
    return glued


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("prompt", nargs="?", help="omit for the interactive menu")
    parser.add_argument("--url", default=DEFAULT_URL)
    parser.add_argument("--format", choices=sorted(ACCEPT), default="text")
    parser.add_argument("--no-stream", action="store_true", help="one JSON answer at the end")
    parser.add_argument("--language")
    parser.add_argument("--model")
    parser.add_argument("--timeout", type=float, default=300.0, help="client read timeout, s")
    parser.add_argument(
        "--total-timeout", type=float, help="give up when the whole answer takes longer, s"
    )
    parser.add_argument("--history", action="store_true", help="list your stored answers")
    parser.add_argument(
        "--follow-up", metavar="ID", help="refine the answer ID (its conversation comes along)"
    )
    parser.add_argument(
        "--file", action="append", default=[], help="attach a text file (repeat for more)"
    )
    parser.add_argument("--patch", metavar="PATH", help="write the changed files' diffs here")
    parser.add_argument("--key", default=os.environ.get("CODEGEN_API_KEY"), help="API key")
    args = parser.parse_args(_glue_follow_up(sys.argv[1:] if argv is None else argv))
    client = session(args.key)
    try:
        if args.history:
            return history(args.url, client)
        if args.prompt is None:
            return menu(args.url)
        body: dict[str, Any] = {"prompt": args.prompt}
        if args.language:
            body["language"] = args.language
        if args.model:
            body["model"] = args.model
        if args.file:
            try:
                body["files"] = [
                    {"name": os.path.basename(path), "content": Path(path).read_text("utf-8")}
                    for path in args.file
                ]
            except (OSError, UnicodeDecodeError) as exc:
                print(f"[cannot attach: {exc}]", file=sys.stderr)
                return CLIENT_ERROR
        if args.follow_up:
            conversation = conversation_of(args.url, client, args.follow_up)
            if conversation is None:
                return CLIENT_ERROR
            body["conversation_id"] = conversation
        return generate(
            args.url,
            body,
            args.format,
            not args.no_stream,
            args.timeout,
            args.total_timeout,
            client,
            args.patch,
        )
    except KeyboardInterrupt:
        print("\n[interrupted] bye", file=sys.stderr)
        return INTERRUPTED
    finally:
        save_cookies(client)


if __name__ == "__main__":
    sys.exit(main())
