"""What both blueprints need to turn a request into an answer: the shared route helpers.

The API and the page differ in how they render; reading the body, finding
the generation service and starting a relay that holds one of the client's
stream slots are the same, and live here once.
"""

from __future__ import annotations

from collections.abc import Callable

import orjson
from flask import Flask, current_app, g, request, session
from flask.sessions import SessionMixin

from webapp.answers.jobs import Job, Jobs
from webapp.answers.life import Answers
from webapp.answers.recording import Recorder
from webapp.answers.starting import Started
from webapp.answers.store import Store, StoredAnswer
from webapp.errors import BadRequest, Unauthorized, UnsupportedMediaType
from webapp.ids import random_id
from webapp.relay.attachments import decoded
from webapp.relay.generation import GenerationService, Relay
from webapp.relay.schema import GenerateCodeRequest
from webapp.sockets import peer_closed
from webapp.web.access import require_same_origin
from webapp.web.guard import Guard
from webapp.web.sessions import CookieSessions
from webapp.web.signins import session_key

# Streams are never cached, and proxies (nginx) must not buffer them.
STREAM_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


def generation() -> GenerationService:
    service: GenerationService = current_app.extensions["generation"]
    return service


def guard() -> Guard:
    found: Guard = current_app.extensions["guard"]
    return found


def recorder() -> Recorder | None:
    """The history recorder, or None with HISTORY=off."""
    found: Recorder | None = current_app.extensions.get("history")
    return found


def answers() -> Answers:
    """The answers layer (webapp/answers/life.py): find, follow and stop answers."""
    found: Answers = current_app.extensions["answers"]
    return found


def store() -> Store:
    """The history store; a 404 `history_off` when the server keeps no history."""
    return answers().store()


def owner() -> str:
    """Whose answers these are: the API key's id when API_KEYS is set (from the
    header, or the page's sign-in), else an anonymous id in the signed session."""
    client: str = g.get("client_id", "")
    if client.startswith("key:"):
        return client
    app: Flask = current_app._get_current_object()  # type: ignore[attr-defined]
    # The objects behind Flask's proxies, once: each use of a proxy looks them up.
    current: SessionMixin = session._get_current_object()  # type: ignore[attr-defined]
    limits: Guard = app.extensions["guard"]
    if limits.key_digests:
        key_id = session_key(limits)
        if key_id is not None:
            return f"key:{key_id}"
        raise Unauthorized("Sign in with an API key first.", code="sign_in_required")
    anonymous = current.get("owner")
    if not isinstance(anonymous, str) or len(anonymous) != 22:
        sessions = app.session_interface
        if isinstance(sessions, CookieSessions):
            anonymous = sessions.new_owner(app, current)
        else:  # another session interface (an extension's): no cookies made ahead
            anonymous = random_id(16)
            current["owner"] = anonymous
    return f"anon:{anonymous}"


def answer_of(answer_id: str, *, ended: bool = False) -> StoredAnswer:
    """One of the asking owner's answers, or a 404 (webapp/answers/life.py)."""
    return answers().answer_of(answer_id, owner(), ended=ended)


def jobs() -> Jobs:
    found: Jobs = current_app.extensions["jobs"]
    return found


def detach(relay: Relay) -> bool:
    """Make a new answer resumable, before it starts: its end is the job's to decide
    (RESUME_GRACE), not this response's. False when it cannot be (history off)."""
    answer: Started | None = g.get("answer")
    if answer is None or answer.recorded is None:
        return False
    relay.watch_client(None)
    return True


def run_detached(relay: Relay) -> Job:
    """The started answer as a job: this response reads it (`job.driven()`), later
    ones follow it."""
    answer: Started = g.answer
    assert answer.recorded is not None  # detach() said so
    return jobs().start(
        relay, answer.recorded.answer_id, owner(), answer.continued_text, client_socket()
    )


def client_socket() -> object:
    """This response's client socket, where the server exposes it (gunicorn does)."""
    return request.environ.get("gunicorn.socket")


def client_gone() -> Callable[[], bool]:
    """Whether this response's client has left."""
    sock = client_socket()
    if sock is None:
        return lambda: False
    return lambda: peer_closed(sock)


def new_relay(params: GenerateCodeRequest) -> Relay:
    """Start an answer for validated parameters (webapp/answers/starting.py), holding one
    of the client's stream slots. `g.answer` keeps it for the response (its headers,
    a Continue's text); the relay is returned to be started and read."""
    limits, client = guard(), g.client_id

    def admit() -> Callable[[], None]:
        slot = limits.acquire_stream(client)
        return lambda: limits.release_stream(slot)

    started = answers().start(
        params,
        owner(),
        request_id=g.request_id,
        client=client,
        client_socket=client_socket(),
        admit=admit,
    )
    values = g._get_current_object()  # once: each use of the proxy looks it up
    values.answer = started
    return started.relay


# What a multipart form may carry besides its `files` parts, and how each is read.
FORM_FIELDS: dict[str, type] = {
    "prompt": str,
    "language": str,
    "model": str,
    "temperature": float,
    "max_tokens": int,
    "stream": bool,
    "resumable": bool,
    "conversation_id": str,
    "continue_answer": str,
}
_TRUE, _FALSE = ("true", "1", "on", "yes"), ("false", "0", "off", "no")


def read_body() -> object:
    """The request as the JSON body's object: JSON, or a multipart form with `files`."""
    if request.mimetype != "multipart/form-data":
        return read_json_body()
    # A cross-site page can post a multipart form without a CORS preflight; an API
    # key or the same origin proves it is not one (scripts send neither header).
    if not str(g.get("client_id", "")).startswith("key:"):
        require_same_origin("A form sent from another site cannot generate (cross-site request).")
    return form_body()


def form_body() -> dict[str, object]:
    """A multipart form as the JSON body it stands for: typed fields, and each `files`
    part as {name, content} (a part that is not UTF-8 text is a 400 naming it)."""
    body: dict[str, object] = {}
    unknown = [name for name in request.form if name not in FORM_FIELDS]
    unknown += [name for name in request.files if name != "files"]
    if unknown:
        raise BadRequest(f"Unknown fields: {', '.join(unknown)}.", code="unknown_fields")
    for name, kind in FORM_FIELDS.items():
        value = request.form.get(name)
        if value is None or (value == "" and name != "prompt"):
            continue
        try:
            if kind is bool:
                if value.lower() not in _TRUE + _FALSE:
                    raise ValueError(value)
                body[name] = value.lower() in _TRUE
            else:
                body[name] = kind(value)
        except ValueError:
            wanted = {bool: "true or false", int: "a whole number", float: "a number"}[kind]
            raise BadRequest(f"{name}: must be {wanted}.") from None
    body["files"] = uploaded_files()
    return body


def uploaded_files() -> list[dict[str, str]]:
    """A multipart request's `files` parts as the JSON body's `files`; one that is not
    UTF-8 text is a 400 that names it. A form's empty file input sends one part with no
    name and no bytes: nothing attached."""
    parts = [(part.filename or "", part.read()) for part in request.files.getlist("files")]
    uploads = [(name, raw) for name, raw in parts if name or raw]
    return [
        {"name": name, "content": decoded(name, raw, number)}
        for number, (name, raw) in enumerate(uploads)
    ]


def read_json_body() -> object:
    """The request body as JSON (orjson: deep nesting is an error, not a crash)."""
    # Only JSON: a cross-site form can post text/plain without a CORS preflight,
    # and that must not drive generation on the operator's key.
    if request.mimetype != "application/json":
        raise UnsupportedMediaType(
            "Send the body as JSON (Content-Type: application/json), or as a form with files "
            "(multipart/form-data)."
        )
    raw = request.get_data(cache=False)  # bounded by MAX_BODY_BYTES when it was read
    if not raw.strip():
        raise BadRequest(
            "The body is empty; send a JSON object with a prompt.", code="invalid_json"
        )
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise BadRequest(f"The body is not valid JSON: {exc}.", code="invalid_json") from None
