"""The signed session cookie, cheaply: one HMAC-SHA256 and orjson per request.

Every answer with history on reads or writes the session (its owner), so the
cookie is on the way to the first token. Flask's itsdangerous serializer
spends ~40 µs to read a cookie and ~60 µs to make one (key derivation per
call, tagged JSON, a zlib attempt): ×150 requests ahead in a burst, that is
visible in TTFT. This one does the same job in a few µs:

    s1.<base64url orjson payload>.<issued, unix seconds>.<base64url HMAC-SHA256>

- the MAC covers the prefix, payload and time, under a key derived once from
  SECRET_KEY (so it is not the key Flask-WTF or anything else signs with);
- a cookie older than PERMANENT_SESSION_LIFETIME is refused, as Flask does;
- only JSON values are kept (the app stores strings: owner, key id, CSRF token);
- a cookie in Flask's own format (from a version before this one) is still
  read, through Flask's serializer, so nobody's anonymous history is orphaned;
  it is rewritten in this format the next time the session changes.
"""

from __future__ import annotations

import hashlib
import hmac
import time
from typing import Any

import orjson
from flask import Flask, Request, Response, request
from flask.sessions import SecureCookieSession, SecureCookieSessionInterface, SessionMixin
from itsdangerous import BadData, BadSignature, URLSafeTimedSerializer
from itsdangerous.encoding import base64_decode

from webapp.ids import b64url, random_id
from webapp.quiet import Stock

PREFIX = "s1."
_MAC_LENGTH = 43  # base64url of 32 bytes, unpadded


class FastSerializer:
    """`dumps(dict) -> str` and `loads(str, max_age) -> dict`, the two calls Flask's
    session interface makes; a bad or expired cookie raises BadSignature (Flask
    then starts an empty session). `legacy` reads cookies in Flask's format."""

    def __init__(self, secret_key: str | bytes, legacy: URLSafeTimedSerializer | None) -> None:
        secret = secret_key.encode() if isinstance(secret_key, str) else secret_key
        key = hmac.digest(secret, b"streaming-codegen session cookie", hashlib.sha256)
        # Keyed once: copying it skips OpenSSL 3's digest lookup, which a one-shot
        # `hmac.digest` repeats per call (~10 us a cookie under load, not 2 as alone).
        self._keyed = hmac.new(key, digestmod=hashlib.sha256)
        self._legacy = legacy

    def _mac(self, signed: str) -> str:
        mac = self._keyed.copy()
        mac.update(signed.encode("ascii"))
        return b64url(mac.digest())

    def dumps(self, value: dict[str, Any]) -> str:
        payload = b64url(orjson.dumps(value))
        signed = f"{PREFIX}{payload}.{int(time.time())}"
        return f"{signed}.{self._mac(signed)}"

    def loads(self, value: str, max_age: int | None = None) -> dict[str, Any]:
        if not value.startswith(PREFIX):
            if self._legacy is None:
                raise BadSignature("not a session cookie")
            legacy: dict[str, Any] = self._legacy.loads(value, max_age=max_age)
            return legacy
        if not value.isascii():  # a planted cookie: refused, not a 500
            raise BadSignature("session cookie is not ASCII")
        signed, _, mac = value.rpartition(".")
        if len(mac) != _MAC_LENGTH or not hmac.compare_digest(mac, self._mac(signed)):
            raise BadSignature("session cookie signature does not match")
        payload, _, issued = signed[len(PREFIX) :].rpartition(".")
        try:
            age = time.time() - int(issued)
            decoded = orjson.loads(base64_decode(payload))
        except (ValueError, BadData) as exc:  # orjson.JSONDecodeError is a ValueError
            raise BadSignature("session cookie is malformed") from exc
        if max_age is not None and age > max_age:
            raise BadSignature("session cookie expired")
        if not isinstance(decoded, dict):
            raise BadSignature("session cookie is not an object")
        return decoded


class Session(SecureCookieSession):
    """Flask's session, and the cookie made ahead for it (`CookieSessions.new_owner`),
    which is its cookie while the session holds only that new anonymous owner."""

    premade: tuple[str, str] | None = None

    def adopt(self, made: tuple[str, str]) -> None:
        """Hold a new anonymous owner and its cookie made ahead: `self["owner"] = ...`
        without the update callback's wrapper (the way to every first token)."""
        dict.__setitem__(self, "owner", made[0])
        self.premade = made
        self.modified = self.accessed = True


class CookieSessions(SecureCookieSessionInterface):
    """Flask's cookie sessions (same cookie flags, same `session` object), signed by
    FastSerializer, built once per app rather than per request.

    The common cases skip werkzeug's general machinery, measured at ~75 µs a
    request under load (`python -m bench.ab`, 1000 streams): a request with no
    session cookie is not parsed for one, nor written back when it stays untouched;
    a changed, non-permanent session with the default cookie scope gets its
    `Set-Cookie` and `Vary` written directly, and a new anonymous owner (most API
    calls with history on) the cookie signed ahead for it. Anything else
    (deletion, `permanent`, a cookie domain) is Flask's.
    """

    session_class = Session

    def new_owner(self, app: Flask, session: SessionMixin) -> str:
        """A new anonymous owner, put in `session`.

        A request with no session cookie (most API calls) needs a new owner and a
        cookie to carry it before its first token: ~25 us in a busy worker, on the
        way to every first token of a burst. So owners come with their cookies,
        signed ahead in the worker's idle time (a Stock). A cookie states when it
        was signed: one made ahead is at most 10 minutes older than its session."""
        newcomers: Stock[tuple[str, str]] | None = app.extensions.get("newcomers")
        if newcomers is None:
            serializer = self.get_signing_serializer(app)
            assert serializer is not None  # a session exists only with a secret key

            def newcomer() -> tuple[str, str]:
                owner = random_id(16)
                return owner, serializer.dumps({"owner": owner})

            newcomers = Stock(newcomer, size=512, batch=32, fresh=600.0)
            app.extensions["newcomers"] = newcomers
        made = newcomers.take()
        if made is not None and isinstance(session, Session):
            session.adopt(made)
            return made[0]
        owner = random_id(16) if made is None else made[0]
        session["owner"] = owner
        return owner

    def open_session(self, app: Flask, request: Request) -> SecureCookieSession | None:
        if self.get_cookie_name(app) + "=" not in request.environ.get("HTTP_COOKIE", ""):
            return self.session_class()  # most API calls send no cookie at all
        return super().open_session(app, request)

    def save_session(self, app: Flask, session: SessionMixin, response: Response) -> None:
        if not (session or session.modified or session.accessed):
            return  # untouched and empty (most requests without history): nothing to write
        name, over_http, over_https, plain = self._cookie_parts(app)
        premade = getattr(session, "premade", None)
        if (
            premade is not None
            and plain
            and len(session) == 1
            and dict.get(session, "owner") == premade[0]  # type: ignore[call-overload]
        ):
            # A new anonymous owner and nothing else (an API call with history on):
            # its cookie was signed ahead, and it is neither permanent nor empty.
            self._vary_on_cookie(response)
            value = premade[1]
        else:
            if not session or session.permanent or not plain:
                super().save_session(app, session, response)
                return
            if session.accessed:
                self._vary_on_cookie(response)
            if not self.should_set_cookie(app, session):
                return
            serializer = self.get_signing_serializer(app)
            assert serializer is not None  # a session exists only with a secret key
            value = serializer.dumps(dict(session))
        # The value is base64url, digits and dots: nothing to quote.
        attributes = over_https if self.get_cookie_secure(app) else over_http
        response.headers.add("Set-Cookie", f"{name}={value}{attributes}")

    @staticmethod
    def _vary_on_cookie(response: Response) -> None:
        # getlist, not get: werkzeug's get makes (and drops) an exception when the
        # header is missing, as it is on nearly every response here.
        vary = ", ".join(response.headers.getlist("Vary"))
        if not vary:
            response.headers.add("Vary", "Cookie")  # none to replace: no second scan
        elif "cookie" not in {v.strip().lower() for v in vary.split(",")}:
            response.headers["Vary"] = f"{vary}, Cookie"

    def _cookie_parts(self, app: Flask) -> tuple[str, str, str, bool]:
        """The cookie's name, its attributes over HTTP and over HTTPS (Secure), and
        whether this class writes it (no cookie domain, not partitioned; else
        Flask's own code does): the app's settings, read once (they do not change
        while it serves)."""
        cached: tuple[str, str, str, bool] | None = app.extensions.get("session_cookie_parts")
        if cached is None:
            path = f"; Path={self.get_cookie_path(app)}"
            tail = "; HttpOnly" if self.get_cookie_httponly(app) else ""
            samesite = self.get_cookie_samesite(app)
            if samesite:
                tail += f"; SameSite={samesite}"
            plain = not self.get_cookie_domain(app) and not self.get_cookie_partitioned(app)
            cached = (self.get_cookie_name(app), path + tail, path + "; Secure" + tail, plain)
            app.extensions["session_cookie_parts"] = cached
        return cached

    def get_cookie_secure(self, app: Flask) -> bool:
        # Secure whenever the request came over HTTPS (directly or, with
        # TRUST_FORWARDED_FOR, through a TLS proxy): plain HTTP keeps working.
        return request.is_secure

    def get_signing_serializer(self, app: Flask) -> FastSerializer | None:  # type: ignore[override]
        cached: FastSerializer | None = app.extensions.get("session_serializer")
        if cached is None and app.secret_key:
            cached = FastSerializer(app.secret_key, super().get_signing_serializer(app))
            app.extensions["session_serializer"] = cached
        return cached
