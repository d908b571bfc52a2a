"""Page sign-ins that a sign-out ends: on every copy of the cookie, everywhere.

The signed session cookie names a sign-in (`sign_in`, a random id) beside its
key's id; the sign-in itself is kept server-side, in Redis (REDIS_URL) or else
in the app's database (the history's, opened for this even with HISTORY=off),
so every worker and instance sees a sign-out at once. A cookie copied before
`/signout` then names a sign-in that no longer exists; a key removed from
API_KEYS ends its sign-ins too (its id is no longer known). Only the page signs
in this way: the API sends its key with each request.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import redis
from flask import current_app, g, session
from sqlalchemy import delete, insert, select

from webapp.answers.store import SignInRow, Store, now, translated
from webapp.errors import HistoryUnavailable
from webapp.ids import random_id
from webapp.web.guard import Guard


class SignIns:
    """`open(key_id) -> id`, `holds(id, key_id)`, `close(id)`; each sign-in lasts
    `lifetime` seconds at most (the cookie's own). A store failure is a 503
    HistoryUnavailable: nobody is let in on a guess."""

    def __init__(self, *, lifetime: float, redis_url: str = "", store: Store | None = None) -> None:
        self.lifetime = int(lifetime)
        self._redis: Any = (
            redis.Redis.from_url(redis_url, socket_timeout=2.0, socket_connect_timeout=1.0)
            if redis_url
            else None
        )
        self._store = store

    def _call(self, in_redis: Any, in_store: Any) -> Any:
        try:
            if self._redis is not None:
                return in_redis(self._redis)
            assert self._store is not None
            return in_store(self._store)
        except redis.RedisError as exc:
            raise HistoryUnavailable(
                "Sign-ins are unavailable right now; try again shortly.",
                code="sign_ins_unavailable",
            ) from exc

    def open(self, key_id: str) -> str:
        sign_in = random_id(16)
        self._call(
            lambda r: r.set(f"codegen:signin:{sign_in}", key_id, ex=self.lifetime),
            lambda s: _added(s, sign_in, key_id),
        )
        return sign_in

    def holds(self, sign_in: str, key_id: str) -> bool:
        found = self._call(
            lambda r: (r.get(f"codegen:signin:{sign_in}") or b"").decode(),
            lambda s: _key_of(s, sign_in, self.lifetime) or "",
        )
        return bool(found) and found == key_id

    def close(self, sign_in: str) -> None:
        self._call(
            lambda r: r.delete(f"codegen:signin:{sign_in}"),
            lambda s: _dropped(s, sign_in),
        )


# In the database (the sign_ins table, migration 0005), through the store's engine.


@translated
def _added(store: Store, sign_in: str, key_id: str) -> None:
    with store.engine.begin() as connection:
        connection.execute(insert(SignInRow).values(id=sign_in, key_id=key_id, created_at=now()))
        # The expired go as new ones come: the table holds the live ones.
        expired = SignInRow.created_at < now() - timedelta(days=31)
        connection.execute(delete(SignInRow).where(expired))


@translated
def _key_of(store: Store, sign_in: str, lifetime: float) -> str | None:
    with store.engine.connect() as connection:
        return connection.scalar(
            select(SignInRow.key_id).where(
                SignInRow.id == sign_in,
                SignInRow.created_at >= now() - timedelta(seconds=lifetime),
            )
        )


@translated
def _dropped(store: Store, sign_in: str) -> None:
    with store.engine.begin() as connection:
        connection.execute(delete(SignInRow).where(SignInRow.id == sign_in))


def session_key(guard: Guard) -> str | None:
    """The key id this request's page session signed in with, if that sign-in still
    holds (looked up once per request); None when signed out."""
    cached = g.get("session_key", False)
    if cached is not False:
        return cached  # type: ignore[no-any-return]
    key_id, sign_in = session.get("key_id"), session.get("sign_in")
    found = None
    if (
        isinstance(key_id, str)
        and isinstance(sign_in, str)
        and guard.knows(key_id)
        and current_app.extensions["sign_ins"].holds(sign_in, key_id)
    ):
        found = key_id
    g.session_key = found
    return found
