"""Who is asking, and may they: API keys, request rate, concurrent streams.

The rate limit uses the `limits` library (fixed windows; memory for one
process, Redis to share it across workers and machines). The concurrent
stream bound is a counter in the same store: INCR on start, DECR on end,
with an expiry as a safety net for a process that dies mid-stream. If Redis
goes away the app serves anyway (`RATE_LIMIT_FAIL_OPEN`, the default) and
says so in the log and in /healthz.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

from limits import parse
from limits.storage import MemoryStorage, Storage, storage_from_string
from limits.strategies import FixedWindowRateLimiter

from webapp.config import Config
from webapp.errors import TooManyRequests, Unauthorized, UpstreamUnavailable

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


def _digest(key: str) -> bytes:
    return hashlib.sha256(key.encode()).digest()


def bearer_token(headers: Any) -> str | None:
    """The token of `Authorization: Bearer <token>`, or None without that header."""
    auth = headers.get("Authorization", "")
    return auth[7:].strip() if auth[:7].lower() == "bearer " else None


def load_key_digests(config: Config) -> list[bytes]:
    entries = list(config.api_keys)
    if config.api_keys_file:
        lines = Path(config.api_keys_file).expanduser().read_text().splitlines()
        entries += [line.strip() for line in lines if line.strip() and not line.startswith("#")]
    return [bytes.fromhex(e[7:]) if e.startswith("sha256:") else _digest(e) for e in entries]


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


class Guard:
    """Keys, rates and stream slots for one process, in memory or shared through Redis.

    `authenticate`/`check_key` say who is asking (raising 401 or, past
    AUTH_FAILURE_LIMIT, 429); `check_rate` and `acquire_stream` raise
    TooManyRequests past their limits and call `on_reject(kind)` first. A store
    failure is logged and, unless RATE_LIMIT_FAIL_OPEN is off, let through.
    """

    def __init__(
        self, config: Config, on_reject: Callable[[str], None] = lambda kind: None
    ) -> None:
        self.config = config
        self.on_reject = on_reject
        self.key_digests = load_key_digests(config)
        self.storage: Storage = (
            storage_from_string(  # type: ignore[assignment]
                config.redis_url, socket_timeout=0.5, socket_connect_timeout=0.5
            )
            if config.redis_url
            else MemoryStorage()
        )
        self.limiter = FixedWindowRateLimiter(self.storage)
        self.rate = None if config.rate_limit.lower() == "off" else parse(config.rate_limit)
        self.history_rate = (
            None if config.history_rate_limit.lower() == "off" else parse(config.history_rate_limit)
        )
        self.stop_rate = (
            None if config.stop_rate_limit.lower() == "off" else parse(config.stop_rate_limit)
        )
        self.auth_rate = (
            None if config.auth_failure_limit.lower() == "off" else parse(config.auth_failure_limit)
        )
        redis = self.storage.get_connection() if config.redis_url else None  # type: ignore[attr-defined]
        self.streams = StreamCounter(redis, ttl=int(config.total_timeout) + 60)
        self.store_ok = True

    # -- identity ------------------------------------------------------------

    def authenticate(self, headers: Any, address: str) -> str | None:
        """The key's short id if the API needs keys and one matches; raise if not."""
        if not self.key_digests:
            return None
        presented = headers.get("X-API-Key", "") or bearer_token(headers) or ""
        if not presented:
            raise Unauthorized(
                "An API key is required: send Authorization: Bearer <key> or X-API-Key."
            )
        key_id = self.check_key(presented, address)
        if key_id is None:
            raise Unauthorized("The API key is not valid.")
        return key_id

    def check_key(self, presented: str, address: str) -> str | None:
        """The key's short id, or None if it is wrong (counted against `address`).

        Past AUTH_FAILURE_LIMIT wrong keys from one address, every attempt from
        it is refused with 429 until the window passes, right key or not: that
        is what stops guessing.
        """
        self._check_failures(address)
        digest = _digest(presented)
        # Compare against every key, always, so timing says nothing about which matched.
        matched = False
        for known in self.key_digests:
            matched |= hmac.compare_digest(digest, known)
        if matched:
            return digest.hex()[:12]
        self._count_failure(address)
        return None

    def knows(self, key_id: str) -> bool:
        """`key_id` (from a signed session) still belongs to a configured key."""
        return any(hmac.compare_digest(d.hex()[:12], key_id) for d in self.key_digests)

    def _check_failures(self, address: str) -> None:
        if self.auth_rate is None:
            return
        try:
            allowed = self.limiter.test(self.auth_rate, "auth-failures", address)
            if not allowed:
                reset = self.limiter.get_window_stats(
                    self.auth_rate, "auth-failures", address
                ).reset_time
        except Exception as exc:  # noqa: BLE001 - any store failure is handled alike
            self._store_failed(exc)
            return
        if not allowed:
            self.on_reject("auth")
            raise TooManyRequests(
                "Too many wrong keys from this address; try again later "
                f"(the limit is {self.config.auth_failure_limit}).",
                code="too_many_failed_auth",
                retry_after=max(1.0, reset - time.time()),
            )

    def _count_failure(self, address: str) -> None:
        if self.auth_rate is None:
            return
        try:
            self.limiter.hit(self.auth_rate, "auth-failures", address)
        except Exception as exc:  # noqa: BLE001
            self._store_failed(exc)

    # -- limits ------------------------------------------------------------------

    def _store_failed(self, exc: Exception) -> None:
        if self.store_ok:
            log.error("rate-limit store unreachable: %s", type(exc).__name__)
        self.store_ok = False
        if not self.config.rate_limit_fail_open:
            raise UpstreamUnavailable(
                "The rate limiter is unavailable; try again shortly.", code="limiter_unavailable"
            ) from None

    def check_rate(self, client: str) -> None:
        """Count an answer started by `client`: 429 past RATE_LIMIT."""
        if self.rate is not None:
            self._hit(self.rate, (client,), "rate", f"the limit is {self.config.rate_limit}")

    def check_history_rate(self, client: str) -> None:
        """Count a request of `client` to the history: 429 past HISTORY_RATE_LIMIT (a
        window of its own, so reading answers never uses up the right to start one)."""
        if self.history_rate is not None:
            self._hit(
                self.history_rate,
                ("history", client),
                "history",
                f"the history's limit is {self.config.history_rate_limit}",
            )

    def check_stop_rate(self, client: str) -> None:
        """Count a Stop of `client`: 429 past STOP_RATE_LIMIT (its own window)."""
        if self.stop_rate is not None:
            self._hit(
                self.stop_rate,
                ("stop", client),
                "stop",
                f"the limit on Stops is {self.config.stop_rate_limit}",
            )

    def _hit(self, item: Any, keys: tuple[str, ...], kind: str, limit: str) -> None:
        try:
            allowed = self.limiter.hit(item, *keys)
            if not allowed:
                reset = self.limiter.get_window_stats(item, *keys).reset_time
            self._recovered()
        except Exception as exc:  # noqa: BLE001 - any store failure is handled alike
            self._store_failed(exc)
            return
        if not allowed:
            self.on_reject(kind)
            raise TooManyRequests(
                f"Too many requests: {limit}.", retry_after=max(1.0, reset - time.time())
            )

    def acquire_stream(self, client: str) -> str | None:
        """Count one more answer in flight for `client`; the token to release it."""
        bound = self.config.max_concurrent_streams_per_client
        if not bound:
            return None
        key = f"codegen:streams:{client}"
        try:
            count = self.streams.add(key)
            self._recovered()
        except Exception as exc:  # noqa: BLE001
            self._store_failed(exc)
            return None
        if count > bound:
            self.release_stream(key)
            self.on_reject("streams")
            raise TooManyRequests(
                f"Too many answers in flight: at most {bound} at once per client.",
                code="too_many_streams",
                retry_after=1.0,
            )
        return key

    def release_stream(self, key: str | None) -> None:
        if key is None:
            return
        try:
            self.streams.remove(key)
        except Exception as exc:  # noqa: BLE001
            log.error("could not release a stream slot: %s", type(exc).__name__)

    def _recovered(self) -> None:
        if not self.store_ok:
            log.warning("rate-limit store reachable again")
            self.store_ok = True

    def health(self) -> dict[str, Any]:
        if not self.config.redis_url:
            return {"limits_store": "memory"}
        try:
            ok = self.storage.check()
        except Exception:  # noqa: BLE001
            ok = False
        self.store_ok = ok
        return {"limits_store": "redis", "redis": "up" if ok else "down"}
