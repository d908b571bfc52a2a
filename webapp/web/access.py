"""Who is asking, and what each route needs of them: said at the route, checked once
per request before any work is done.

    @needs(GENERATE)    an answer starts: the API's key, or the page's sign-in when
                        API_KEYS is set; then RATE_LIMIT
    @needs(HISTORY)     the history's API: a key, or the page's cookie (a change made
                        with the cookie must come from this origin); HISTORY_RATE_LIMIT
    @needs(STOP)        a Stop: as HISTORY, under STOP_RATE_LIMIT instead
    @needs(HISTORY_PAGE) a page route reading or changing the history: counted by
                        address under HISTORY_RATE_LIMIT (a share link needs no
                        sign-in; the others find their owner in the session)
    @public             a page route a signed-out visitor may open (sign-in, share links)

A route with no mark needs nothing here (the page itself, /healthz). A blueprint's
routes may share one mark (`needs_for_blueprint`); a route's own mark wins.

Who is asking ends up in `g.client_id` (`key:<id>` or `ip:<address>`), what the
limits count and the stream slots are held by.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar
from urllib.parse import urlsplit

from flask import Flask, current_app, g, request

from webapp.errors import Forbidden, Unauthorized
from webapp.web.guard import Guard
from webapp.web.keys import bearer_token
from webapp.web.signins import session_key

GENERATE = "generate"
HISTORY = "history"
STOP = "stop"
HISTORY_PAGE = "history_page"
_SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
_BLUEPRINT_NEEDS: dict[str, str] = {}

View = TypeVar("View", bound=Callable[..., Any])


def needs(kind: str, *, only_if: Callable[[], object] | None = None) -> Callable[[View], View]:
    """Mark a view with what it needs (one of the kinds above); `only_if`, when given,
    says whether this request needs it at all (the page's filter, not the page)."""

    def mark(view: View) -> View:
        view.needs = (kind, only_if)  # type: ignore[attr-defined]
        return view

    return mark


def public(view: View) -> View:
    """A page route that a signed-out visitor may open."""
    view.public = True  # type: ignore[attr-defined]
    return view


def needs_for_blueprint(blueprint: str, kind: str) -> None:
    """Every route of `blueprint` needs `kind`, unless it says otherwise."""
    _BLUEPRINT_NEEDS[blueprint] = kind


def _view() -> Any:
    return current_app.view_functions.get(request.endpoint or "")


def need_of_request() -> str | None:
    """What this request's route needs, or None."""
    mark = getattr(_view(), "needs", None)
    if mark is not None:
        kind, only_if = mark
        return kind if only_if is None or only_if() else None
    return _BLUEPRINT_NEEDS.get(request.blueprint or "")


def is_public() -> bool:
    return bool(getattr(_view(), "public", False))


def presents_key(headers: Any) -> bool:
    """Whether the request carries an API key (X-API-Key or a bearer token)."""
    return bool(headers.get("X-API-Key")) or bearer_token(headers) is not None


def page_key(guard: Guard) -> str | None:
    """With API keys set, the page needs a sign-in (webapp/web/signins.py): the key's id.
    A sign-out, or a key removed from the config, ends it."""
    if not guard.key_digests:
        return None
    key_id = session_key(guard)
    if key_id is not None:
        return key_id
    raise Unauthorized("Sign in with an API key first.", code="sign_in_required")


def require_same_origin(
    refused: str = "A change to the history from another site is refused (cross-site request).",
) -> None:
    """Refuse a cookie-authenticated change sent from another site (CSRF): browsers say
    where a request comes from (Sec-Fetch-Site, Origin); scripts send neither and
    hold their own cookie, so they are let through."""
    site = request.headers.get("Sec-Fetch-Site")
    origin = request.headers.get("Origin")
    if site is not None:
        allowed = site in ("same-origin", "none")
    elif origin is not None:
        allowed = origin != "null" and urlsplit(origin).netloc == request.host
    else:
        return
    if not allowed:
        raise Forbidden(refused, code="cross_site_request")


def identify_and_limit() -> None:
    """Who is asking and may they, for what the route needs, before any work is done."""
    g.client_id = f"ip:{request.remote_addr}"
    kind = need_of_request()
    if kind is None:
        return
    guard: Guard = current_app.extensions["guard"]
    if kind == HISTORY_PAGE:
        guard.check_history_rate(g.client_id)
        return
    if kind == GENERATE and request.method != "POST":
        return  # a GET of a generating route (the page's form) starts nothing
    if request.blueprint == "api" or (kind != GENERATE and presents_key(request.headers)):
        key_id = guard.authenticate(request.headers, request.remote_addr or "")
    else:
        # The page's cookie: a change to the history needs a request from this origin,
        # as the page's own fetches are; under API_KEYS, its sign-in.
        if kind != GENERATE and request.method not in _SAFE_METHODS:
            require_same_origin()
        key_id = page_key(guard)
    if key_id is not None:
        g.client_id = f"key:{key_id}"
    if kind == GENERATE:
        guard.check_rate(g.client_id)
    elif kind == STOP:
        guard.check_stop_rate(g.client_id)
    else:
        guard.check_history_rate(g.client_id)


def init_app(app: Flask) -> None:
    app.before_request(identify_and_limit)
