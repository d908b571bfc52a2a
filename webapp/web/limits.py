"""The limits' store and what they count in it: request rates in fixed windows
(the `limits` library), and answers in flight per client (webapp/web/guard.py)."""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

from limits import parse
from limits.storage import MemoryStorage, Storage, storage_from_string
from limits.strategies import FixedWindowRateLimiter

from webapp.config import Config
from webapp.errors import TooManyRequests, UpstreamUnavailable

log = logging.getLogger("webapp.web.guard")

_ACQUIRE = """
local n = redis.call('INCR', KEYS[1])
redis.call('EXPIRE', KEYS[1], ARGV[1])
return n
"""
_RELEASE = """
local n = tonumber(redis.call('GET', KEYS[1]) or '0')
if n > 0 then
  n = redis.call('DECR', KEYS[1])
  redis.call('EXPIRE', KEYS[1], ARGV[1])
end
return n
"""


def parse_limit(setting: str) -> Any:
    """A limit setting ("30/minute"), or None for "off"."""
    return None if setting.lower() == "off" else parse(setting)


class LimitStore:
    """The store every limit counts in: memory for one process, or Redis
    (REDIS_URL) shared by every worker and machine.

    Contract: `hit` counts a request in a window and says whether it is within
    the limit, `test` only looks; `reset_time` is when a window ends; `redis` is
    the connection (None in memory). Store errors
    reach the caller, which hands them to `failed(exc)`: the outage is logged once
    and let through, or refused (`limiter_unavailable`) when RATE_LIMIT_FAIL_OPEN
    is off; `recovered()` after a success logs its end.
    """

    __slots__ = ("_config", "_limiter", "_ok", "_redis", "_storage")

    def __init__(self, config: Config) -> None:
        self._config = config
        self._storage: Storage = (
            storage_from_string(  # type: ignore[assignment]
                config.redis_url, socket_timeout=0.5, socket_connect_timeout=0.5
            )
            if config.redis_url
            else MemoryStorage()
        )
        self._limiter = FixedWindowRateLimiter(self._storage)
        self._ok = True
        self._redis = self._storage.get_connection() if config.redis_url else None  # type: ignore[attr-defined]

    @property
    def redis(self) -> Any:
        """The Redis connection (None in memory), for counts the limits library has no
        name for (`StreamCounter`)."""
        return self._redis

    def hit(self, limit: Any, *keys: str) -> bool:
        allowed: bool = self._limiter.hit(limit, *keys)
        return allowed

    def test(self, limit: Any, *keys: str) -> bool:
        allowed: bool = self._limiter.test(limit, *keys)
        return allowed

    def reset_time(self, limit: Any, *keys: str) -> float:
        reset: float = self._limiter.get_window_stats(limit, *keys).reset_time
        return reset

    def failed(self, exc: Exception) -> None:
        if self._ok:
            log.error("rate-limit store unreachable: %s", type(exc).__name__)
        self._ok = False
        if not self._config.rate_limit_fail_open:
            raise UpstreamUnavailable(
                "The rate limiter is unavailable; try again shortly.", code="limiter_unavailable"
            ) from None

    def recovered(self) -> None:
        if not self._ok:
            log.warning("rate-limit store reachable again")
            self._ok = True

    def health(self) -> dict[str, Any]:
        if not self._config.redis_url:
            return {"limits_store": "memory"}
        try:
            ok = self._storage.check()
        except Exception:  # noqa: BLE001
            ok = False
        self._ok = ok
        return {"limits_store": "redis", "redis": "up" if ok else "down"}


class RateLimit:
    """One fixed-window limit on one kind of request, per client, in a window of
    its own (reading the history never uses up the right to start an answer).

    Contract: `hit(client)` counts a request of `client`; past the limit it calls
    `on_reject(kind)` and raises TooManyRequests with the seconds until the
    window resets. Off ("off"), it counts nothing. A store failure goes to the
    store's policy (`LimitStore.failed`).
    """

    __slots__ = ("_described", "_kind", "_limit", "_on_reject", "_scope", "_store")

    def __init__(
        self,
        store: LimitStore,
        setting: str,
        *,
        kind: str,
        described: str,
        on_reject: Callable[[str], None],
        scope: tuple[str, ...] = (),
    ) -> None:
        self._store = store
        self._limit = parse_limit(setting)
        self._kind = kind
        self._described = described  # "the limit is 30/minute", in the refusal
        self._on_reject = on_reject
        self._scope = scope  # the window's name before the client's

    def hit(self, client: str) -> None:
        if self._limit is None:
            return
        store, keys = self._store, (*self._scope, client)
        try:
            allowed = store.hit(self._limit, *keys)
            if not allowed:
                reset = store.reset_time(self._limit, *keys)
            store.recovered()
        except Exception as exc:  # noqa: BLE001 - any store failure is handled alike
            store.failed(exc)
            return
        if not allowed:
            self._on_reject(self._kind)
            raise TooManyRequests(
                f"Too many requests: {self._described}.",
                retry_after=max(1.0, reset - time.time()),
            )


class StreamCounter:
    """Answers in flight per client: `add(key)` and `remove(key)` return the count.

    In Redis its expiry is refreshed on every change, so it only lapses for a client
    idle that long (a process that died mid-stream cannot hold slots for ever), and a
    removal never takes it below zero. In memory it dies with the process anyway, and
    a client at zero is forgotten (an entry per client ever seen would grow for ever).
    Errors are the store's own: the Guard decides what an outage means."""

    def __init__(self, redis: Any, ttl: int) -> None:
        self._ttl = ttl
        self._counts: Counter[str] = Counter()
        self._redis = redis
        if redis is not None:
            self._acquire = redis.register_script(_ACQUIRE)
            self._release = redis.register_script(_RELEASE)

    def add(self, key: str) -> int:
        if self._redis is not None:
            return int(self._acquire(keys=[key], args=[self._ttl]))
        self._counts[key] += 1
        return self._counts[key]

    def remove(self, key: str) -> int:
        if self._redis is not None:
            return int(self._release(keys=[key], args=[self._ttl]))
        left = self._counts[key] - 1
        if left > 0:
            self._counts[key] = left
        else:
            self._counts.pop(key, None)
        return max(left, 0)

    def __len__(self) -> int:
        """Clients with answers in flight here (memory only)."""
        return len(self._counts)
