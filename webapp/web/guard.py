"""Who is asking, and may they: API keys, request rate, concurrent streams.

The rate limit uses the `limits` library (fixed windows; memory for one
process, Redis to share it across workers and machines). The concurrent
stream bound is a counter in the same store: INCR on start, DECR on end,
with an expiry as a safety net for a process that dies mid-stream. If Redis
goes away the app serves anyway (`RATE_LIMIT_FAIL_OPEN`, the default) and
says so in the log and in /healthz.

The parts: the keys (`ApiKeys`, keys.py), the store and what counts in it
(`LimitStore`, `RateLimit`, `StreamCounter`: limits.py).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from webapp.config import Config
from webapp.errors import TooManyRequests
from webapp.web.keys import ApiKeys
from webapp.web.limits import LimitStore, RateLimit, StreamCounter

log = logging.getLogger("webapp.web.guard")


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
        self._config = config
        self._on_reject = on_reject
        self._store = LimitStore(config)
        self._keys = ApiKeys(config, self._store, on_reject)
        self._rate = RateLimit(
            self._store,
            config.rate_limit,
            kind="rate",
            described=f"the limit is {config.rate_limit}",
            on_reject=on_reject,
        )
        self._history_rate = RateLimit(
            self._store,
            config.history_rate_limit,
            kind="history",
            described=f"the history's limit is {config.history_rate_limit}",
            on_reject=on_reject,
            scope=("history",),
        )
        self._stop_rate = RateLimit(
            self._store,
            config.stop_rate_limit,
            kind="stop",
            described=f"the limit on Stops is {config.stop_rate_limit}",
            on_reject=on_reject,
            scope=("stop",),
        )
        self._streams = StreamCounter(self._store.redis, ttl=int(config.total_timeout) + 60)

    # -- identity ------------------------------------------------------------

    @property
    def key_digests(self) -> list[bytes]:
        """The configured keys' digests: empty when the API needs no key."""
        return self._keys.digests

    def authenticate(self, headers: Any, address: str) -> str | None:
        """The key's short id if the API needs keys and one matches; raise if not."""
        return self._keys.authenticate(headers, address)

    def check_key(self, presented: str, address: str) -> str | None:
        """The key's short id, or None if it is wrong (counted against `address`)."""
        return self._keys.check_key(presented, address)

    def knows(self, key_id: str) -> bool:
        """`key_id` (from a signed session) still belongs to a configured key."""
        return self._keys.knows(key_id)

    # -- limits ------------------------------------------------------------------

    def check_rate(self, client: str) -> None:
        """Count an answer started by `client`: 429 past RATE_LIMIT."""
        self._rate.hit(client)

    def check_history_rate(self, client: str) -> None:
        """Count a request of `client` to the history: 429 past HISTORY_RATE_LIMIT (a
        window of its own, so reading answers never uses up the right to start one)."""
        self._history_rate.hit(client)

    def check_stop_rate(self, client: str) -> None:
        """Count a Stop of `client`: 429 past STOP_RATE_LIMIT (its own window)."""
        self._stop_rate.hit(client)

    @property
    def streams(self) -> StreamCounter:
        """The answers in flight per client."""
        return self._streams

    def acquire_stream(self, client: str) -> str | None:
        """Count one more answer in flight for `client`; the token to release it."""
        bound = self._config.max_concurrent_streams_per_client
        if not bound:
            return None
        key = f"codegen:streams:{client}"
        try:
            count = self._streams.add(key)
            self._store.recovered()
        except Exception as exc:  # noqa: BLE001
            self._store.failed(exc)
            return None
        if count > bound:
            self.release_stream(key)
            self._on_reject("streams")
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
            self._streams.remove(key)
        except Exception as exc:  # noqa: BLE001
            log.error("could not release a stream slot: %s", type(exc).__name__)

    def health(self) -> dict[str, Any]:
        return self._store.health()
