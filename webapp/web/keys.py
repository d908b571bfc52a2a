"""API keys: who is asking, by the key they present (webapp/web/guard.py)."""

from __future__ import annotations

import hashlib
import hmac
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from webapp.config import Config
from webapp.errors import TooManyRequests, Unauthorized
from webapp.web.limits import LimitStore, parse_limit


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


class ApiKeys:
    """API_KEYS and API_KEYS_FILE, kept as sha256 digests and compared in constant
    time; a key is named by a short id (the start of its digest), never by itself.

    Contract: `digests` is empty when the API needs no key; `authenticate` and
    `check_key` say whose key it is (401 without one, or with a wrong one);
    `knows(key_id)` says whether a signed-in key is still configured. Past
    AUTH_FAILURE_LIMIT wrong keys from one address, every attempt from it is
    refused (429, after `on_reject("auth")`) until the window passes, right key
    or not: that is what stops guessing.
    """

    __slots__ = ("_config", "_digests", "_failures", "_on_reject", "_store")

    def __init__(self, config: Config, store: LimitStore, on_reject: Callable[[str], None]) -> None:
        self._config = config
        self._digests = load_key_digests(config)
        self._store = store
        self._failures = parse_limit(config.auth_failure_limit)
        self._on_reject = on_reject

    @property
    def digests(self) -> list[bytes]:
        return self._digests

    def authenticate(self, headers: Any, address: str) -> str | None:
        """The key's short id if the API needs keys and one matches; raise if not."""
        if not self._digests:
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
        """The key's short id, or None if it is wrong (counted against `address`)."""
        self._check_failures(address)
        digest = _digest(presented)
        # Compare against every key, always, so timing says nothing about which matched.
        matched = False
        for known in self._digests:
            matched |= hmac.compare_digest(digest, known)
        if matched:
            return digest.hex()[:12]
        self._count_failure(address)
        return None

    def knows(self, key_id: str) -> bool:
        """`key_id` (from a signed session) still belongs to a configured key."""
        return any(hmac.compare_digest(d.hex()[:12], key_id) for d in self._digests)

    def _check_failures(self, address: str) -> None:
        if self._failures is None:
            return
        store = self._store
        try:
            allowed = store.test(self._failures, "auth-failures", address)
            if not allowed:
                reset = store.reset_time(self._failures, "auth-failures", address)
        except Exception as exc:  # noqa: BLE001 - any store failure is handled alike
            store.failed(exc)
            return
        if not allowed:
            self._on_reject("auth")
            raise TooManyRequests(
                "Too many wrong keys from this address; try again later "
                f"(the limit is {self._config.auth_failure_limit}).",
                code="too_many_failed_auth",
                retry_after=max(1.0, reset - time.time()),
            )

    def _count_failure(self, address: str) -> None:
        if self._failures is None:
            return
        try:
            self._store.hit(self._failures, "auth-failures", address)
        except Exception as exc:  # noqa: BLE001
            self._store.failed(exc)
