"""The app factory: config, extensions, blueprints, error handlers, per-request hooks."""

from __future__ import annotations

import io
import logging
import posixpath
import re
import secrets
import sys
import time
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import orjson
from flask import Flask, Response, current_app, g, request
from flask_wtf.csrf import CSRFProtect
from werkzeug.middleware.proxy_fix import ProxyFix

from webapp.answers.eventlog import EventLog, RedisUnavailable
from webapp.answers.jobs import FOLLOWED_WITHIN, Jobs
from webapp.answers.life import Answers
from webapp.answers.recording import Recorder
from webapp.answers.store import Store
from webapp.config import Config
from webapp.errors import (
    ClientReadTimeout,
    HistoryUnavailable,
    PayloadTooLarge,
    RequestTimeout,
)
from webapp.providers import build_provider
from webapp.relay.generation import GenerationService
from webapp.relay.tokens import count_tokens
from webapp.web import access
from webapp.web.guard import Guard
from webapp.web.observability import Observer, record_history_failure, record_rejection
from webapp.web.responses import register_error_handlers
from webapp.web.sessions import CookieSessions
from webapp.web.signins import SignIns

ROOT = Path(__file__).resolve().parent.parent
csrf = CSRFProtect()
log = logging.getLogger("webapp")
_REQUEST_ID = re.compile(r"[A-Za-z0-9._-]{1,64}")

# No inline script or style, nothing from another origin. No worker either: Run's
# lives in the runner frame (below).
SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "connect-src 'self'; frame-src 'self'; worker-src 'none'; object-src 'none'; "
        "base-uri 'none'; frame-ancestors 'none'; form-action 'self'"
    ),
    "X-Content-Type-Options": "nosniff",
    # Not no-referrer: over HTTPS, Flask-WTF refuses a POST without a same-origin
    # Referer (WTF_CSRF_SSL_STRICT), so the page broke exactly behind TLS proxies.
    "Referrer-Policy": "same-origin",
    "X-Frame-Options": "DENY",
}
_SECURITY_ITEMS = list(SECURITY_HEADERS.items())
# The Run button's code runs in the runner document (a static file), which its policy
# gives an opaque origin (`sandbox allow-scripts`): no cookies, no storage, no way to
# the page or top. It may load its scripts and Pyodide's files, fetch only the latter
# (not the app's routes), and compile WebAssembly, which the page may not. Only the
# page may frame it. Named by static file, so `/static/pyodide/../x` is x.
RUNNER_DOCUMENT = "runner.html"
RUNNER_POLICY = (
    "sandbox allow-scripts; default-src 'none'; "
    "script-src {static}runner.js {static}run-worker.js {static}pyodide/ 'wasm-unsafe-eval'; "
    "worker-src blob:; connect-src {static}pyodide/; base-uri 'none'; form-action 'none'; "
    "frame-ancestors 'self'"
)
# Preview and Run for web code (HTML, SVG, CSS, JavaScript) happen in the preview
# document, at an opaque origin as the runner's: the code may run inline scripts and
# styles and its own workers (blob:), and load nothing at all: no network, no app route,
# no other origin. Only the page may frame it.
PREVIEW_DOCUMENT = "preview.html"
PREVIEW_POLICY = (
    "sandbox allow-scripts; default-src 'none'; "
    "script-src 'unsafe-inline' blob: {static}preview-frame.js; style-src 'unsafe-inline'; "
    "img-src data: blob:; font-src data:; media-src data: blob:; connect-src 'none'; "
    "worker-src blob:; base-uri 'none'; form-action 'none'; frame-ancestors 'self'"
)
SANDBOXED_DOCUMENTS = {RUNNER_DOCUMENT: RUNNER_POLICY, PREVIEW_DOCUMENT: PREVIEW_POLICY}
# From that opaque origin every load is cross-origin: the files it loads (public
# static files) allow any origin to read them. The app's routes never do.
RUNNER_FILES = ("run-worker.js", "pyodide/")
# Pyodide's files are served from a folder named by its version (`make` copies them to
# static/pyodide/<version>/): what one URL holds never changes, so browsers keep it for
# good instead of asking again for 13 MB on each visit.
PYODIDE_CACHE = "public, max-age=31536000, immutable"


class JsonFormatter(logging.Formatter):
    """One JSON object per line; `extra={"fields": {...}}` adds structured fields."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": round(record.created, 3),
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        entry.update(getattr(record, "fields", {}))
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return orjson.dumps(entry, default=str).decode()


def configure_logging(level: str) -> None:
    root = logging.getLogger("webapp")
    if not any(getattr(h, "_webapp", False) for h in root.handlers):
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(JsonFormatter())
        handler._webapp = True  # type: ignore[attr-defined]
        root.addHandler(handler)
        root.propagate = False
    root.setLevel(level.upper())


def assign_request_id() -> None:
    incoming = request.headers.get("X-Request-ID", "")
    g.request_id = incoming if _REQUEST_ID.fullmatch(incoming) else uuid.uuid4().hex
    g.started = time.monotonic()


def _body_too_large(limit: int) -> PayloadTooLarge:
    return PayloadTooLarge(f"The request body is over the limit of {limit} bytes.")


def read_body_within_limit() -> None:
    """Read any body now, bounded, so a chunked one over MAX_BODY_BYTES is a 413
    (Werkzeug cuts it at the limit without a word), and views get it whole."""
    if request.method in ("GET", "HEAD", "OPTIONS"):
        return
    config: Config = current_app.config["APP_CONFIG"]
    environ = request.environ
    limit = config.max_body_bytes
    if request.content_length is not None and request.content_length > limit:
        raise _body_too_large(limit)
    try:
        body = environ["wsgi.input"].read(limit + 1)
    except ClientReadTimeout:
        raise RequestTimeout(
            f"The request body did not arrive within {config.client_read_timeout:g} s."
        ) from None
    if len(body) > limit:
        raise _body_too_large(limit)
    environ["wsgi.input"] = io.BytesIO(body)
    environ["CONTENT_LENGTH"] = str(len(body))
    environ["wsgi.input_terminated"] = True  # a chunked body has no length to go by


def create_app(config: Config | Mapping[str, str] | None = None) -> Flask:
    """Build the app from a Config, a mapping of settings (tests), or the environment."""
    if config is None:
        config = Config.from_env()
    elif not isinstance(config, Config):
        config = Config.from_env(config)
    configure_logging(config.log_level)

    app = Flask(
        __name__,
        template_folder=str(ROOT / "templates"),
        static_folder=str(ROOT / "static"),
    )
    app.session_interface = CookieSessions()
    app.config.update(
        APP_CONFIG=config,
        SECRET_KEY=config.secret_key or secrets.token_hex(32),
        MAX_CONTENT_LENGTH=config.max_body_bytes,
        WTF_CSRF_TIME_LIMIT=None,
        SESSION_COOKIE_SAMESITE="Lax",
        SESSION_COOKIE_HTTPONLY=True,
        JSON_SORT_KEYS=False,
    )
    provider = build_provider(config)
    guard = Guard(config, on_reject=record_rejection)
    app.extensions["guard"] = guard
    app.extensions["generation"] = GenerationService(
        config, provider, count_tokens, hooks=Observer(config.log_prompts)
    )
    build_answers(app, config)
    if guard.key_digests:  # the page signs in: kept where every instance sees a sign-out
        history: Recorder | None = app.extensions.get("history")
        app.extensions["sign_ins"] = SignIns(
            lifetime=app.permanent_session_lifetime.total_seconds(),
            redis_url=config.redis_url,
            store=None
            if config.redis_url
            else (history.store if history else Store.open(config.database)),
        )
    if config.trust_forwarded_for:
        app.wsgi_app = ProxyFix(  # type: ignore[method-assign]
            app.wsgi_app, x_for=config.trust_forwarded_for, x_proto=config.trust_forwarded_for
        )

    # In this order: the request id first, so every later error carries one.
    for hook in (assign_request_id, read_body_within_limit, access.identify_and_limit):
        app.before_request(hook)
    csrf.init_app(app)  # after the request id, so CSRF errors carry one
    register_routes(app)
    register_error_handlers(app)
    app.after_request(add_headers)

    info = provider.info()
    log.info("started", extra={"fields": {"provider": info.name, "model": info.model}})
    return app


def build_answers(app: Flask, config: Config) -> None:
    """The answers layer and what sits behind it: this worker's jobs, the event log
    (Redis, when set) and the recorder over the store (unless HISTORY=off)."""
    # With Redis, resumable answers can be followed from any worker on any machine.
    eventlog = EventLog(config.redis_url) if config.redis_url and config.history else None

    def followed_elsewhere(answer_id: str) -> bool:
        """Whether a reader follows the answer from another worker, through Redis or
        its row: then its grace does not run out. Unknown (an outage) is no."""
        try:
            if eventlog is not None and eventlog.followed(answer_id):
                return True
        except RedisUnavailable:
            pass
        try:
            return recorder is not None and recorder.store.followed_within(
                answer_id, FOLLOWED_WITHIN
            )
        except HistoryUnavailable:
            return False

    jobs = Jobs(
        grace=config.resume_grace,
        heartbeat=config.heartbeat_interval,
        eventlog=eventlog,
        followed_elsewhere=followed_elsewhere,
    )
    recorder: Recorder | None = None
    if config.history:
        recorder = Recorder(
            Store.open(config.database, lease=config.answer_lease),
            history_days=config.history_days,
            max_answers=config.history_max_answers,
            on_failure=record_history_failure,
            on_cancel=jobs.cancel,
            cancellable=jobs.running,
        )
        recorder.upkeep.purge_now()
        app.extensions["history"] = recorder
    app.extensions["jobs"] = jobs
    app.extensions["answers"] = Answers(
        jobs=jobs, recorder=recorder, config=config, generation=app.extensions["generation"]
    )


def register_routes(app: Flask) -> None:
    """Each blueprint, and metrics; the API's are key-authenticated, not CSRF's."""
    from webapp.web import (
        api,
        history_api,
        history_pages,
        observability,
        openapi,
        ui,
    )

    app.register_blueprint(api.bp)
    csrf.exempt(api.bp)
    app.register_blueprint(history_api.bp)
    csrf.exempt(history_api.bp)
    app.register_blueprint(ui.bp)
    app.register_blueprint(history_pages.bp)
    app.register_blueprint(openapi.bp)
    observability.init_app(app)


def add_headers(response: Response) -> Response:
    """Every response's ids and security headers (the runner's own, by the file served)."""
    headers = response.headers
    values = g._get_current_object()  # once: each use of the proxy looks it up
    headers["X-Request-ID"] = values.get("request_id", "")
    answer = values.get("answer")  # an answer this request started (webapp/web/service.py)
    if answer is not None and answer.recorded:
        # `add`, not `[...] =`: nothing set them before, so no scan to replace.
        headers.add("X-Answer-ID", answer.recorded.answer_id)
        headers.add("X-Conversation-ID", answer.recorded.conversation_id)
        if answer.trimmed:
            headers["X-History-Trimmed"] = str(answer.trimmed)
    # No view sets its own, so one look decides for all.
    if "Content-Security-Policy" not in headers:
        headers.extend(_SECURITY_ITEMS)
        if request.endpoint == "static":
            # As the static view resolves it: a raw prefix would match `pyodide/../x`.
            file = posixpath.normpath((request.view_args or {}).get("filename", ""))
            policy = SANDBOXED_DOCUMENTS.get(file)
            if policy is not None:
                static = request.host_url + "static/"
                headers["Content-Security-Policy"] = policy.format(static=static)
                headers["X-Frame-Options"] = "SAMEORIGIN"
            elif file.startswith(RUNNER_FILES):
                headers["Access-Control-Allow-Origin"] = "*"
                versioned = file.startswith("pyodide/") and file.count("/") >= 2
                if versioned and response.status_code in (200, 304):
                    headers["Cache-Control"] = PYODIDE_CACHE
        if request.is_secure:
            headers["Strict-Transport-Security"] = "max-age=31536000"
    return response
