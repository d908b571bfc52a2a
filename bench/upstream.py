"""A fast fake OpenAI upstream for benchmarks: gevent, pre-encoded SSE chunks.

    python -m bench.upstream PORT

POST body may set `"max_tokens"` (the stream length); `rate=N` anywhere in the
messages (or an `X-Rate` header) sets tokens per second (0 = as fast as the
socket takes them). Each
token goes out in its own chunked write, as a real server sends them.
"""

from __future__ import annotations

from gevent import monkey

monkey.patch_all()

import json  # noqa: E402
import re  # noqa: E402
import socket  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402

import gevent  # noqa: E402
from gevent.server import StreamServer  # noqa: E402


def _chunk(payload: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(payload), payload)


ROLE = _chunk(
    b'data: {"id":"b","object":"chat.completion.chunk","choices":[{"index":0,'
    b'"delta":{"role":"assistant"},"finish_reason":null}]}\n\n'
)
TOKEN = _chunk(
    b'data: {"id":"b","object":"chat.completion.chunk","choices":[{"index":0,'
    b'"delta":{"content":"tok "},"finish_reason":null}]}\n\n'
)
END = (
    _chunk(
        b'data: {"id":"b","object":"chat.completion.chunk","choices":[{"index":0,'
        b'"delta":{},"finish_reason":"stop"}]}\n\n'
    )
    + _chunk(b"data: [DONE]\n\n")
    + b"0\r\n\r\n"
)
RATE = re.compile(r"rate=([0-9.]+)")
HEAD = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n"


def handle(sock, _addr) -> None:  # type: ignore[no-untyped-def]
    # As real API servers do: no Nagle delay on small SSE writes.
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    reader = sock.makefile("rb")
    try:
        while True:
            line = reader.readline()
            if not line:
                return
            length, rate, close = 0, 0.0, False
            while line not in (b"\r\n", b"\n", b""):
                name, _, value = line.partition(b":")
                if name.lower() == b"content-length":
                    length = int(value)
                elif name.lower() == b"x-rate":
                    rate = float(value)
                elif name.lower() == b"connection":
                    close = value.strip().lower() == b"close"
                line = reader.readline()
            body = json.loads(reader.read(length) or b"{}")
            tokens = int(body.get("max_tokens") or body.get("max_completion_tokens") or 200)
            # The rate rides in the prompt, so it passes through the relay unchanged.
            found = RATE.search(json.dumps(body.get("messages", [])))
            rate = float(found.group(1)) if found else rate
            sock.sendall(HEAD + ROLE)
            pause = 1.0 / rate if rate else 0.0
            started = time.monotonic()
            for i in range(tokens):
                if pause:
                    # Paced against the start, so slow scheduling does not stretch the stream.
                    wait = started + i * pause - time.monotonic()
                    if wait > 0:
                        gevent.sleep(wait)
                sock.sendall(TOKEN)
            sock.sendall(END)
            if close:
                return
    except OSError:
        pass
    finally:
        sock.close()


if __name__ == "__main__":
    server = StreamServer(("127.0.0.1", int(sys.argv[1])), handle, backlog=4096)
    server.serve_forever()
