"""The floor for any gevent relay: one process, bytes in, bytes out, nothing else.

    python -m bench.floor PORT UPSTREAM_PORT

Accepts the app's request, asks the upstream for the same stream, and copies
each upstream read to the client as one chunk: no parsing, no framework, no
bounds. Every Python relay on gevent pays at least this per token, so the
benchmark shows it beside nginx to separate what gevent costs from what the
app adds.
"""

from __future__ import annotations

from gevent import monkey

monkey.patch_all()

import json  # noqa: E402
import socket  # noqa: E402
import sys  # noqa: E402

from gevent.server import StreamServer  # noqa: E402

UPSTREAM = ("127.0.0.1", 0)


def handle(client: socket.socket, _address: object) -> None:
    reader = client.makefile("rb")
    try:
        reader.readline()
        length = 0
        while (line := reader.readline()) not in (b"\r\n", b""):
            if line.lower().startswith(b"content-length:"):
                length = int(line.split(b":")[1])
        asked = json.loads(reader.read(length))
        body = json.dumps(
            {
                "model": "bench",
                "stream": True,
                "max_tokens": asked["max_tokens"],
                "messages": [{"role": "user", "content": asked["prompt"]}],
            }
        ).encode()
        with socket.create_connection(UPSTREAM) as upstream:
            upstream.sendall(
                b"POST /v1/chat/completions HTTP/1.1\r\nHost: up\r\nConnection: close\r\n"
                b"Content-Length: %d\r\n\r\n%s" % (len(body), body)
            )
            head = True
            while data := upstream.recv(65536):
                if head:  # the upstream's head is replaced by ours
                    data = data[data.find(b"\r\n\r\n") + 4 :]
                    client.sendall(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
                    head = False
                if data:
                    client.sendall(b"%x\r\n%s\r\n" % (len(data), data))
            client.sendall(b"0\r\n\r\n")
    except OSError:
        pass
    finally:
        reader.close()
        client.close()


if __name__ == "__main__":
    UPSTREAM = ("127.0.0.1", int(sys.argv[2]))
    StreamServer(("127.0.0.1", int(sys.argv[1])), handle, backlog=4096).serve_forever()
