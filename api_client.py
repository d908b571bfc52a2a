#!/usr/bin/env python3
"""A small client for POST /generate-code/.

Interactive (no arguments): a menu with
  1 stream a valid prompt to the console,
  2 a timeout test (a client read timeout far below the answer's length),
  3 an invalid payload (shows the server's 400 error).

Non-interactive:
  python api_client.py "Write a Python palindrome check" --format sse
  python api_client.py "..." --no-stream --url http://localhost:8000

Exit codes: 0 success, 2 client error (4xx or bad usage), 3 server error
(5xx or unreachable), 4 a stream that ended early (truncated or an error event).
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

import requests

DEFAULT_URL = "http://localhost:8000"
DEFAULT_PROMPT = "Write a Python function that checks whether a string is a palindrome."
ACCEPT = {"text": "text/plain", "sse": "text/event-stream", "ndjson": "application/x-ndjson"}

OK, CLIENT_ERROR, SERVER_ERROR, TRUNCATED = 0, 2, 3, 4


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


def _stream_events(response: requests.Response, fmt: str) -> int:
    """Print deltas as they come; report the end or the error event."""
    final: dict[str, Any] | None = None
    if fmt == "ndjson":
        for line in response.iter_lines():
            if not line:
                continue
            event = json.loads(line)
            if event["type"] == "delta":
                print(event["text"], end="", flush=True)
            elif event["type"] in ("done", "error"):
                final = event
    else:
        name = ""
        for line in response.iter_lines(decode_unicode=True):
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
    return OK


def generate(
    url: str, body: Any, fmt: str = "text", stream: bool = True, timeout: float = 300.0
) -> int:
    endpoint = url.rstrip("/") + "/generate-code/"
    headers = {"Accept": ACCEPT[fmt]}
    if not stream and isinstance(body, dict):
        body = {**body, "stream": False}
    try:
        data = body if isinstance(body, str) else json.dumps(body)
        with requests.post(
            endpoint,
            data=data,
            headers={**headers, "Content-Type": "application/json"},
            stream=stream,
            timeout=(5, timeout),
        ) as response:
            if response.status_code != 200:
                return _error_exit(response)
            if not stream:
                answer = response.json()
                print(answer["text"])
                print(f"[done] {answer['usage']}", file=sys.stderr)
                return OK
            if fmt != "text":
                return _stream_events(response, fmt)
            for chunk in response.iter_content(chunk_size=None, decode_unicode=True):
                print(chunk, end="", flush=True)
            print()
            return OK
    except requests.exceptions.ChunkedEncodingError:
        print(
            "\n[stream truncated: the server ended it before the answer was complete]",
            file=sys.stderr,
        )
        return TRUNCATED
    except requests.exceptions.Timeout:
        print(f"\n[timed out after {timeout:g} s waiting for the server]", file=sys.stderr)
        return SERVER_ERROR
    except requests.exceptions.ConnectionError as exc:
        print(f"\n[cannot reach {endpoint}: {exc.__class__.__name__}]", file=sys.stderr)
        return SERVER_ERROR


def menu(url: str) -> int:
    prompt = input(f"Prompt (Enter for the default: {DEFAULT_PROMPT!r}): ").strip()
    prompt = prompt or DEFAULT_PROMPT
    print(
        "1) stream a valid prompt\n2) timeout test (client gives up after 0.5 s)\n"
        "3) invalid payload"
    )
    choice = input("Choose 1, 2 or 3: ").strip()
    if choice == "1":
        return generate(url, {"prompt": prompt})
    if choice == "2":
        return generate(url, {"prompt": prompt}, timeout=0.5)
    if choice == "3":
        return generate(url, {"prompt": "", "temperature": "hot", "colour": "blue"})
    print("Please choose 1, 2 or 3.", file=sys.stderr)
    return CLIENT_ERROR


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
    args = parser.parse_args(argv)
    if args.prompt is None:
        return menu(args.url)
    body: dict[str, Any] = {"prompt": args.prompt}
    if args.language:
        body["language"] = args.language
    if args.model:
        body["model"] = args.model
    return generate(args.url, body, args.format, not args.no_stream, args.timeout)


if __name__ == "__main__":
    sys.exit(main())
