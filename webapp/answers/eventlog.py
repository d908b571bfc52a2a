"""Resumable answers' events in Redis Streams, so that any worker on any machine
can serve a re-attachment (REDIS_URL).

One stream per answer, `codegen:events:<id>`: entries `end` (the answer's length
once applied, the event id clients see), `kind` (delta, done, error) and
`data`. A job publishes in batches, at most every PUBLISH_INTERVAL (consecutive
deltas as one entry), never per token. Every key expires TTL seconds after the
last write, and streams are capped at MAXLEN entries. A follower replays the
stream from the start (skipping what the client has) and then blocks on
XREAD for new entries.

The answer's owner is stored beside it, so an instance whose database never
saw the answer can still check who may follow it; a Stop sent to any instance
sets `codegen:cancel:<id>`, which the job's publisher looks at.

Redis failures are one translation here: RedisUnavailable. The job stops
publishing (re-attachment then works within its instance, through its job or
the database), the outage is logged once, and /healthz shows it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from typing import Any

import orjson
import redis

from webapp.errors import AppError
from webapp.relay.events import PING, Done, Failed, Ping, RelayEvent

log = logging.getLogger("webapp.answers.eventlog")

PUBLISH_INTERVAL = 0.05
MAXLEN = 20_000
TTL = 900
# How much longer than its longest wait a Redis reader counts as following.
FOLLOWED_SLACK = 3
# A follower's longest wait for new entries, in seconds: under the socket's timeout.
IDLE_WAIT = 1.0

Numbered = tuple[int, RelayEvent | Ping]


class RedisUnavailable(Exception):
    """Redis could not be reached or refused a command (the cause is chained)."""


class EventLog:
    """The Redis side of resumable answers: publish, follow, owner, cancel."""

    def __init__(self, url: str) -> None:
        self.client = redis.Redis.from_url(url, socket_timeout=2.0, socket_connect_timeout=1.0)
        self.healthy = True

    def _call(self, action: Callable[[], Any]) -> Any:
        try:
            result = action()
        except redis.RedisError as exc:
            if self.healthy:
                log.warning("redis unavailable for resumable answers: %s", type(exc).__name__)
            self.healthy = False
            raise RedisUnavailable(str(exc)) from exc
        if not self.healthy:
            log.warning("redis reachable again for resumable answers")
            self.healthy = True
        return result

    def publish(self, answer_id: str, owner: str, entries: list[tuple[int, str, bytes]]) -> bool:
        """Append (end, kind, data) entries in one round trip; True if a Stop was asked."""
        key, cancel = f"codegen:events:{answer_id}", f"codegen:cancel:{answer_id}"

        def send() -> Any:
            pipe = self.client.pipeline(transaction=False)
            for end, kind, data in entries:
                pipe.xadd(key, {"end": end, "kind": kind, "data": data}, maxlen=MAXLEN)
            pipe.expire(key, TTL)
            pipe.set(f"codegen:owner:{answer_id}", owner, ex=TTL)
            pipe.exists(cancel)
            return pipe.execute()

        return bool(self._call(send)[-1])

    def cancel_requested(self, answer_id: str) -> bool:
        return bool(self._call(lambda: self.client.exists(f"codegen:cancel:{answer_id}")))

    def request_cancel(self, answer_id: str) -> None:
        self._call(lambda: self.client.set(f"codegen:cancel:{answer_id}", 1, ex=TTL))

    def mark_followed(self, answer_id: str, seconds: int) -> None:
        """A reader follows the answer through Redis, for the next `seconds` at least."""
        self._call(lambda: self.client.set(f"codegen:followed:{answer_id}", 1, ex=seconds))

    def followed(self, answer_id: str) -> bool:
        """Whether a reader follows the answer through Redis (on any machine)."""
        return bool(self._call(lambda: self.client.exists(f"codegen:followed:{answer_id}")))

    def text(self, answer_id: str) -> str:
        """The answer's text as published so far (all its delta entries)."""
        entries = self._call(lambda: self.client.xrange(f"codegen:events:{answer_id}"))
        parts, length = [], 0
        for _, fields in entries:
            if fields[b"kind"] != b"delta":
                break
            end, data = int(fields[b"end"]), fields[b"data"].decode()
            if end > length:  # each entry's text ends at its `end`
                parts.append(data[len(data) - (end - length) :])
                length = end
        return "".join(parts)

    def owner_of(self, answer_id: str) -> str | None:
        found = self._call(lambda: self.client.get(f"codegen:owner:{answer_id}"))
        return found.decode() if found else None

    def follow(
        self,
        answer_id: str,
        after: int,
        *,
        heartbeat: float,
        until: float,
        abandoned: Callable[[], bool] = lambda: False,
    ) -> Iterator[Numbered]:
        """The answer's events after `after` characters, then live ones, to its end;
        or, while none come, until `abandoned()` says no instance runs it any more
        (then it returns with no end: the caller has the rest from the row)."""
        key = f"codegen:events:{answer_id}"
        last, sent = "0-0", after
        # Each wait ends well inside the socket's timeout: a wait the socket cut was
        # taken for an outage (an idle answer then read as "redis down").
        block = min(heartbeat, IDLE_WAIT)
        silent_since = time.monotonic()
        while time.monotonic() < until:
            try:
                # Keeps the answer going past its grace (webapp/answers/jobs.py): outlives the
                # longest wait below, and ends soon after this reader leaves.
                self.mark_followed(answer_id, int(heartbeat) + FOLLOWED_SLACK)
                found = self._call(
                    lambda last=last: self.client.xread(  # type: ignore[misc]
                        {key: last}, count=500, block=int(block * 1000)
                    )
                )
            except RedisUnavailable:
                lost = AppError("The answer's events are unavailable right now.", code="redis_down")
                yield sent, Failed(lost)
                return
            if not found:
                if abandoned():
                    return
                if time.monotonic() - silent_since >= heartbeat:
                    yield -1, PING
                    silent_since = time.monotonic()
                continue
            silent_since = time.monotonic()
            for entry_id, fields in found[0][1]:
                last = entry_id.decode()
                end, kind, data = int(fields[b"end"]), fields[b"kind"].decode(), fields[b"data"]
                if kind == "delta":
                    if end <= sent:
                        continue
                    text = data.decode()
                    yield end, text[len(text) - (end - sent) :]
                    sent = end
                else:
                    yield end, decode_end(kind, data)
                    return
        yield sent, Failed(AppError("The answer did not end in time.", code="deadline_exceeded"))


def encode_end(event: Done | Failed) -> tuple[str, bytes]:
    if isinstance(event, Done):
        return "done", orjson.dumps(
            {
                "finish_reason": event.finish_reason,
                "usage": event.usage,
                "code_blocks": event.code_blocks,
                "request_id": event.request_id,
                "timing": event.timing,
                "cost_usd": event.cost_usd,
                "files": event.files,
            }
        )
    return "error", orjson.dumps(event.error.to_dict())


def decode_end(kind: str, data: bytes) -> Done | Failed:
    body = orjson.loads(data)
    if kind == "done":
        return Done(**body)
    return Failed(AppError(body.get("message", ""), code=body.get("code", "upstream_error")))
