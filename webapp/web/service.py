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
from webapp.answers.store import Store, StoredAnswer
from webapp.errors import BadRequest, Unauthorized, UnsupportedMediaType
from webapp.ids import random_id
from webapp.relay.generation import GenerationService, Relay
from webapp.relay.schema import GenerateCodeRequest
from webapp.sockets import peer_closed
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
    if not g.get("recorded"):
        return False
    relay.watch_client(None)
    return True


def run_detached(relay: Relay) -> Job:
    """The started answer as a job: this response reads it (`job.driven()`), later
    ones follow it."""
    prefix = g.get("continued_text", "")
    return jobs().start(relay, g.recorded.answer_id, owner(), prefix, client_socket())


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
    """A Relay for validated parameters, holding one of the client's stream slots,
    recorded in the history (a follow-up or a Continue builds on what is stored).
    Sets g.answer_id and g.conversation_id for the response headers."""
    prompt, language, model = params.prompt, params.language, params.model
    earlier = None  # what it builds on (webapp/answers/life.py)
    if params.continue_answer is not None:
        earlier = answers().continuing(params.continue_answer, owner())
    elif params.conversation_id is not None:
        earlier = answers().following(params.conversation_id, owner())
    continued = earlier.continues if earlier is not None else None
    if continued is not None:  # a Continue carries on the stored prompt
        prompt, language = continued.prompt, continued.language
        if model is None and continued.model in generation().provider.models:
            model = continued.model
    relay = generation().relay(
        g.request_id,
        prompt,
        language=language,
        model=model,
        temperature=params.temperature,
        max_tokens=params.max_tokens,
        client=g.client_id,
        turns=earlier.turns if earlier is not None else None,
        partial=continued.text if continued else None,
    )
    relay.watch_client(client_socket())
    limits = guard()
    slot = limits.acquire_stream(g.client_id)
    relay.cleanups.append(lambda: limits.release_stream(slot))
    history = recorder()
    if history is not None:
        values = g._get_current_object()  # once: each use of the proxy looks it up
        values.recorded = history.begin(
            relay,
            owner(),
            prompt=prompt,
            language=language,
            conversation_id=continued.conversation_id if continued else params.conversation_id,
            parent_id=earlier.parent_id if earlier is not None else None,
            continues=continued,
        )
        values.history_trimmed = relay.trimmed_turns
    g.continued_text = continued.text if continued else ""
    return relay


def read_json_body() -> object:
    """The request body as JSON (orjson: deep nesting is an error, not a crash)."""
    # Only JSON: a cross-site form can post text/plain without a CORS preflight,
    # and that must not drive generation on the operator's key.
    if request.mimetype != "application/json":
        raise UnsupportedMediaType(
            "Send the body as JSON, with the header Content-Type: application/json."
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
