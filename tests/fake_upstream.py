"""A fault-injecting OpenAI-compatible server, over real sockets.

Each request's last user message may carry a directive that scripts it:

    [[fake tokens=20 delay=0.01 drop_after=5 id=abc]]

Tokens are `t0 `, `t1 `, ... unless `answer=` names a canned text. Options:
    tokens, delay, first_delay       shape of a normal stream
    fail=429,500 id=X                the first attempts of id X answer these statuses
    retry_after, retry_after_ms      headers on those failures
    status=N                         always answer status N (401, 400, ...)
    stall_after=N, drop_after=N      after N tokens: go silent / cut the connection
    malformed_after=N, error_after=N after N tokens: a bad `data:` line / an in-band error
    keepalive=S                      while stalled, send an SSE comment every S seconds
    forever=1, pad=N                 never finish (a token every `delay`, N bytes longer;
                                     after the canned text when `answer=` is given)
    no_usage=1, no_done=1            omit the usage chunk / the [DONE] line
    finish=length                    the finish reason sent at the end (default stop)
    obey_max=1                       stop at the request's max_tokens, with finish=length
    faults_once=1                    faults apply only to requests without a partial answer
    restate=all|N                    a continuation first repeats the whole partial answer,
                                     or its last N tokens, as chat models do

Hostile upstreams (sizes in MB, sent as fast as the socket takes them):
    flood=MB                         first, MB of answer text in small valid deltas
                                     (`abcdefg ` each, ~16x that on the wire), as fast as the
                                     socket takes them; then the tokens and a normal end
    longline_after=N line_mb=MB      after N tokens: `data: xxx...` with no newline, MB long
                                     (default 48), then silence
    noise_after=N noise_mb=MB        after N tokens: events without text, SSE comments
    noise=comment|empty              (default) or empty deltas, for ever (until the app
                                     closes the stream) or MB of them then silence
    bad_after=N bad=KIND             after N tokens: one event of the wrong shape (BAD_EVENTS:
                                     content_int, choices_dict, delta_list, finish_int, ...)
    usage=KIND                       the usage chunk's counts are BAD_USAGE[KIND] (negative,
                                     float, bool, huge, str) or usage is not an object (list)
    echo=json|text                   a failure (status=N, fail=) or error_after's in-band error
                                     quotes the request head, Authorization included, as some
                                     servers do; json puts it in error.message
    err_code=X                       the `code` of those errors (e.g. model_not_found)

A continuation request (the app's "Your previous answer was cut off..." after
an assistant message) resumes at the token after the ones that message holds.

The server counts streams that are open and records when each one closed,
so tests can assert that the app closed every upstream it opened.
"""

from __future__ import annotations

import json
import re
import select
import socket
import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

DIRECTIVE = re.compile(r"\[\[fake([^\]]*)\]\]")

ANSWERS = {
    "code": (
        "Here is a function that checks for palindromes:\n\n"
        "```python\ndef is_palindrome(text: str) -> bool:\n"
        "    cleaned = ''.join(c.lower() for c in text if c.isalnum())\n"
        "    return cleaned == cleaned[::-1]\n```\n\n"
        "It **normalises** the string, then compares it with `cleaned[::-1]`:\n\n"
        "- letters are lower-cased\n- punctuation is dropped\n"
    ),
    "markdown": (
        "## Overview\n\n"
        "| name | purpose |\n| --- | --- |\n| `slugify` | make a URL slug |\n\n"
        "> Keep slugs lower-case.\n\n"
        "See [the docs](https://example.com/slug) and [this](javascript:alert(1)).\n\n"
        "```python\ndef slugify(text: str) -> str:\n"
        "    return '-'.join(text.lower().split())\n```\n\n"
        "- *short*\n- **clear**\n"
    ),
    "runnable": "```python\nprint(sum(range(10)))\nprint('done')\n```\n",
    "two_blocks": (
        "A server and its client:\n\n```go\npackage main\n\nfunc main() {}\n```\n\n"
        "```weird-lang\nhello\n```\n"
    ),
    "raising": "```python\ndef parse(x):\n    return int(x)\n\nparse('nope')\n```\n",
    "looping": "```python\nwhile True:\n    pass\n```\n",
    # A new version of an attached `calc.py` (see tests/web/test_files.py), and a new file.
    "edit": (
        "Here is `calc.py` with type hints and a docstring:\n\n"
        "```python calc.py\ndef add(a: int, b: int) -> int:\n"
        '    """Return the sum of a and b."""\n    return a + b\n```\n\n'
        "And a test for it:\n\n```python test_calc.py\nfrom calc import add\n\n\n"
        "def test_add():\n    assert add(2, 3) == 5\n```\n"
    ),
    # A second refinement of "edit"'s `calc.py`: it adds `sub`.
    "edit2": (
        "```python calc.py\ndef add(a: int, b: int) -> int:\n"
        '    """Return the sum of a and b."""\n    return a + b\n\n\n'
        "def sub(a: int, b: int) -> int:\n    return a - b\n```\n"
    ),
    # One block that does not name its file: with one attachment, it is that file.
    "edit_unnamed": ("```python\ndef add(a, b):\n    # adds\n    return a + b\n```\nDone.\n"),
    "xss": (
        "Careful: <script>window.__pwned = 1</script> and "
        '<img src=x onerror="window.__pwned = 2"> are just text.\n\n'
        "```html\n<script>window.__pwned = 3</script>\n```\n"
    ),
}


# One event of the wrong shape each: what the decoder must refuse.
BAD_EVENTS: dict[str, Any] = {
    "content_int": {"choices": [{"index": 0, "delta": {"content": 5}}]},
    "content_list": {"choices": [{"index": 0, "delta": {"content": ["a"]}}]},
    "content_dict": {"choices": [{"index": 0, "delta": {"content": {"a": 1}}}]},
    "choices_dict": {"choices": {"0": {"delta": {"content": "x"}}}},
    "choices_str": {"choices": "abc"},
    "choice_str": {"choices": ["abc"]},
    "delta_list": {"choices": [{"index": 0, "delta": ["x"]}]},
    "delta_str": {"choices": [{"index": 0, "delta": "x"}]},
    "finish_int": {"choices": [{"index": 0, "delta": {}, "finish_reason": 1}]},
    "event_list": [1, 2],
}

BAD_USAGE: dict[str, Any] = {
    "negative": {"prompt_tokens": -5, "completion_tokens": -7, "total_tokens": -12},
    "float": {"prompt_tokens": 1.5, "completion_tokens": 2.0, "total_tokens": 3.5},
    "bool": {"prompt_tokens": True, "completion_tokens": True, "total_tokens": False},
    "huge": {"prompt_tokens": 2**60, "completion_tokens": 10**30, "total_tokens": 2**64},
    "str": {"prompt_tokens": "11", "completion_tokens": "8", "total_tokens": "19"},
    "list": [11, 8, 19],
}

MB = 1024 * 1024
FLOOD_TOKEN = "abcdefg "


def split_tokens(text: str) -> list[str]:
    return re.findall(r"\s*\S+|\s+", text)


@dataclass
class Closed:
    request_id: int
    at: float
    how: str  # completed | client_closed | dropped


@dataclass
class Record:
    number: int
    body: dict[str, Any]
    headers: dict[str, str]
    directive: dict[str, str]
    started: float
    path: str
    tokens_sent: list[str] = field(default_factory=list)
    flood_bytes: int = 0  # bytes of `flood` text sent (not in tokens_sent: too many)
    raw_head: bytes = b""  # the request line and headers, as received


class FakeUpstream:
    def __init__(self, tls: ssl.SSLContext | None = None) -> None:
        self.lock = threading.Lock()
        self.records: list[Record] = []
        self.closed: list[Closed] = []
        self.open_streams = 0
        self.attempts: dict[str, int] = {}
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.server.daemon_threads = True
        self.server.request_queue_size = 1024
        self.scheme = "http"
        if tls is not None:
            # The handshake happens in each handler thread, not in accept().
            self.server.socket = tls.wrap_socket(
                self.server.socket, server_side=True, do_handshake_on_connect=False
            )
            self.scheme = "https"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"{self.scheme}://127.0.0.1:{self.server.server_address[1]}/v1"

    def start(self) -> FakeUpstream:
        self.thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def reset(self) -> None:
        with self.lock:
            self.records.clear()
            self.closed.clear()
            self.attempts.clear()

    def wait_closed(self, count: int, timeout: float = 5.0) -> list[Closed]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self.lock:
                if len(self.closed) >= count and self.open_streams == 0:
                    return list(self.closed)
            time.sleep(0.01)
        with self.lock:
            return list(self.closed)

    def records_for(self, marker: str) -> list[Record]:
        with self.lock:
            return [r for r in self.records if marker in json.dumps(r.body)]

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", "0"))
                body = json.loads(self.rfile.read(length) or b"{}")
                fake.handle(self, body)

        return Handler

    # -- the scripted answer --------------------------------------------------

    def handle(self, h: BaseHTTPRequestHandler, body: dict[str, Any]) -> None:
        messages = body.get("messages", [])
        user = next(
            (
                m["content"]
                for m in reversed(messages)
                if m["role"] == "user" and DIRECTIVE.search(m["content"])
            ),
            "",
        )
        match = DIRECTIVE.search(user)
        opts = dict(p.split("=", 1) for p in match.group(1).split()) if match else {}
        # A continuation ends with the assistant's partial answer and the app's request
        # to go on; an earlier assistant turn of a follow-up is no partial answer.
        asks_to_go_on = bool(messages) and messages[-1]["content"].startswith(
            "Your previous answer was cut off"
        )
        partial = messages[-2]["content"] if asks_to_go_on and len(messages) > 1 else None
        with self.lock:
            headers = {k.lower(): v for k, v in h.headers.items()}
            record = Record(len(self.records) + 1, body, headers, opts, time.monotonic(), h.path)
            record.raw_head = (h.requestline + "\r\n" + str(h.headers)).encode()
            self.records.append(record)
            key = opts.get("id", "")
            attempt = self.attempts[key] = self.attempts.get(key, 0) + 1

        fails = [int(s) for s in opts.get("fail", "").split(",") if s]
        status = (
            int(opts["status"])
            if "status" in opts
            else (fails[attempt - 1] if attempt <= len(fails) else 200)
        )
        if status != 200:
            echo = opts.get("echo")
            message = f"scripted {status}"
            if echo:
                message = f"no route for this request: {record.raw_head.decode()}"
            error: dict[str, Any] = {"message": message, "type": "fake"}
            if "err_code" in opts:
                error["code"] = opts["err_code"]
            payload = message if echo == "text" else json.dumps({"error": error})
            h.send_response(status)
            h.send_header("Content-Type", "text/plain" if echo == "text" else "application/json")
            if "retry_after" in opts:
                h.send_header("Retry-After", opts["retry_after"])
            if "retry_after_ms" in opts:
                h.send_header("retry-after-ms", opts["retry_after_ms"])
            h.send_header("Content-Length", str(len(payload)))
            h.end_headers()
            h.wfile.write(payload.encode())
            return

        text = ANSWERS.get(opts.get("answer", ""), "")
        tokens = (
            split_tokens(text) if text else [f"t{i} " for i in range(int(opts.get("tokens", 8)))]
        )
        faults = not (partial is not None and opts.get("faults_once") == "1")
        start = 0
        if partial is not None:
            start = len(split_tokens(partial)) if text else len(partial.split())
            # A chat model asked to go on often restates first: all, or N tokens.
            restate = opts.get("restate")
            if restate:
                start = 0 if restate == "all" else max(0, start - int(restate))
        h.send_response(200)
        h.send_header("Content-Type", "text/event-stream")
        h.send_header("Transfer-Encoding", "chunked")
        h.end_headers()
        with self.lock:
            self.open_streams += 1
        how = "completed"
        try:
            how = self._stream(h, opts, tokens, start, faults, record)
        except (BrokenPipeError, ConnectionResetError, OSError):
            how = "client_closed"
        finally:
            with self.lock:
                self.open_streams -= 1
                self.closed.append(Closed(record.number, time.monotonic(), how))
            if how != "completed":
                h.close_connection = True

    def _stream(
        self,
        h: BaseHTTPRequestHandler,
        opts: dict[str, str],
        tokens: list[str],
        start: int,
        faults: bool,
        record: Record,
    ) -> str:
        sock = h.connection
        delay = float(opts.get("delay", 0))

        def chunk(data: bytes) -> None:
            h.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
            h.wfile.flush()

        def event(obj: dict[str, Any]) -> None:
            chunk(b"data: " + json.dumps(obj).encode() + b"\n\n")

        def delta(content: str | None, finish: str | None = None) -> dict[str, Any]:
            d = {} if content is None else {"content": content}
            return {
                "id": "fake",
                "object": "chat.completion.chunk",
                "model": "fake",
                "choices": [{"index": 0, "delta": d, "finish_reason": finish}],
            }

        def blast(
            piece: bytes,
            megabytes: float,
            framed: bool = True,
            sent: Callable[[int], None] | None = None,
        ) -> None:
            """Send whole copies of `piece`, ~64 KiB at a time, until `megabytes` went
            (for ever if 0): in HTTP chunks of their own, or (framed=False) inside one
            the caller opened. `sent` hears how many copies each write took."""
            per_batch = max(1, 65536 // len(piece))
            left = -(-int(megabytes * MB) // len(piece)) if megabytes else 2**62
            while left > 0:
                count = min(per_batch, left)
                data = piece * count
                if framed:
                    chunk(data)
                else:
                    h.wfile.write(data)
                left -= count
                if sent is not None:
                    sent(count)

        def wait(seconds: float, keepalive: float | None = None) -> bool:
            """Sleep, but notice the client going away; False if it did."""
            deadline = time.monotonic() + seconds
            next_ping = time.monotonic() + keepalive if keepalive else None
            while (now := time.monotonic()) < deadline:
                ready, _, _ = select.select([sock], [], [], min(0.02, deadline - now))
                # socket.socket.recv: a peek at the raw bytes, under TLS too.
                if ready and socket.socket.recv(sock, 1, socket.MSG_PEEK) == b"":
                    return False
                if next_ping is not None and now >= next_ping:
                    chunk(b": keep-alive\n\n")
                    next_ping = now + keepalive  # type: ignore[operator]
            return True

        event(
            {
                **delta(None),
                "choices": [{"index": 0, "delta": {"role": "assistant"}, "finish_reason": None}],
            }
        )
        if not wait(float(opts.get("first_delay", 0))):
            return "client_closed"
        keepalive = float(opts["keepalive"]) if "keepalive" in opts else None
        # obey_max=1: stop at the request's max_tokens, as a model does ("length").
        cap = record.body.get("max_tokens") if opts.get("obey_max") == "1" else None
        finish = opts.get("finish", "stop")
        i = start
        while True:
            sent = i - start
            if cap is not None and sent >= cap:
                finish = "length"
                break
            if faults and "stall_after" in opts and sent == int(opts["stall_after"]):
                wait(3600, keepalive)
                return "client_closed"
            if faults and "drop_after" in opts and sent == int(opts["drop_after"]):
                sock.shutdown(socket.SHUT_RDWR)
                return "dropped"
            if faults and "malformed_after" in opts and sent == int(opts["malformed_after"]):
                chunk(b"data: {this is not json\n\n")
                wait(3600)
                return "client_closed"
            if faults and "error_after" in opts and sent == int(opts["error_after"]):
                message = "scripted in-band failure"
                if opts.get("echo"):
                    message = f"cannot serve: {record.raw_head.decode()}"
                error = {"message": message, "type": "server_error"}
                if "err_code" in opts:
                    error["code"] = opts["err_code"]
                event({"error": error})
                wait(3600)
                return "client_closed"
            if faults and "bad_after" in opts and sent == int(opts["bad_after"]):
                chunk(b"data: " + json.dumps(BAD_EVENTS[opts["bad"]]).encode() + b"\n\n")
                wait(3600)
                return "client_closed"
            if faults and "longline_after" in opts and sent == int(opts["longline_after"]):
                size = int(float(opts.get("line_mb", 48)) * MB) // 65536 * 65536
                # One HTTP chunk holds the whole line: only the SSE layer can object.
                h.wfile.write(b"%x\r\ndata: " % (size + 6))
                blast(b"x" * 65536, size / MB, framed=False)
                h.wfile.write(b"\r\n")
                wait(3600)
                return "client_closed"
            if faults and "noise_after" in opts and sent == int(opts["noise_after"]):
                if opts.get("noise") == "empty":
                    noise = b"data: " + json.dumps(delta(None)).encode() + b"\n\n"
                else:
                    noise = b": keep-alive\n\n"
                blast(noise, float(opts.get("noise_mb", 0)))
                wait(3600)
                return "client_closed"
            if faults and "flood" in opts and sent == 0:
                piece = b"data: " + json.dumps(delta(FLOOD_TOKEN)).encode() + b"\n\n"
                # MB of text: ~16 times as many bytes of SSE on the wire.
                wire_mb = float(opts["flood"]) / len(FLOOD_TOKEN) * len(piece)

                def tally(count: int) -> None:
                    record.flood_bytes += count * len(FLOOD_TOKEN)

                blast(piece, wire_mb, sent=tally)
            if opts.get("forever") == "1":
                # With answer=, the canned text first, then tokens for ever.
                token = (
                    tokens[i]
                    if opts.get("answer") in ANSWERS and i < len(tokens)
                    else f"t{i} " + "x" * int(opts.get("pad", 0))
                )
            elif i >= len(tokens):
                break
            else:
                token = tokens[i]
            event(delta(token))
            record.tokens_sent.append(token)
            i += 1
            if delay and not wait(delay):
                return "client_closed"
        event(delta(None, finish))
        if opts.get("no_usage") != "1":
            event(
                {
                    "id": "fake",
                    "object": "chat.completion.chunk",
                    "choices": [],
                    "usage": BAD_USAGE[opts["usage"]]
                    if "usage" in opts
                    else {
                        "prompt_tokens": 11,
                        "completion_tokens": i - start,
                        "total_tokens": 11 + i - start,
                    },
                }
            )
        if opts.get("no_done") != "1":
            chunk(b"data: [DONE]\n\n")
        chunk(b"")
        return "completed"
