"""What both blueprints need to turn a request into an answer: the shared route helpers.

The API and the page differ in how they render; reading the body, finding
the generation service and starting a relay that holds one of the client's
stream slots are the same, and live here once.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

import gevent
import orjson
from flask import Flask, current_app, g, request, session
from flask.sessions import SessionMixin

from webapp.answers.jobs import Job, Jobs
from webapp.answers.recording import COALESCE, QUIET_WAIT, SAVE_INTERVAL, Recorder
from webapp.answers.store import CANCELLING, MAX_TURNS, Store, StoredAnswer, may_be_new, now
from webapp.errors import BadRequest, Conflict, NotFound, Unauthorized, UnsupportedMediaType
from webapp.ids import random_id
from webapp.relay.generation import GenerationService, Relay, Turn
from webapp.relay.schema import GenerateCodeRequest
from webapp.sockets import peer_closed
from webapp.web.guard import Guard
from webapp.web.sessions import CookieSessions
from webapp.web.signins import session_key

# Streams are never cached, and proxies (nginx) must not buffer them.
STREAM_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
# The worker running an answer writes its row COALESCE after the start and its end
# COALESCE after the end, up to QUIET_WAIT later when busy (webapp/answers/recording.py), and
# its client can hear of both sooner. A request that another worker gets in that
# moment (a Stop, a re-attachment, a follow-up, a Continue) reads again every
# FRESH_POLL until it sees them, for FRESH_WAIT at most.
# The writer may be in its wait for a quiet moment when the write is queued, then
# wait again: FRESH_WAIT covers both.
FRESH_WAIT = COALESCE + 2 * QUIET_WAIT + 0.25
FRESH_POLL = 0.1
# Each waiting request holds a greenlet and reads every FRESH_POLL: a flood of
# made-up recent ids (the /answers routes have no rate limit) gets no more than this.
MOST_WAITING = 32
_waiting = 0

T = TypeVar("T")


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


def store() -> Store:
    """The history store; a 404 `history_off` when the server keeps no history."""
    found = recorder()
    if found is None:
        raise NotFound("This server keeps no history (HISTORY=off).", code="history_off")
    found.flush()  # this worker's answers that just started are in what is read
    return found.store


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
    """One of the owner's answers, or a 404 (another owner's is not found either).
    One that another worker just started (or, with `ended`, just ended) may not be
    written yet: read again for FRESH_WAIT. A made-up id is a 404 at once."""
    stored, who = store(), owner()

    def read() -> StoredAnswer | None:
        return stored.get(who, answer_id)

    def seen(answer: StoredAnswer | None) -> bool:
        return answer is not None and (not ended or settled(answer))

    found = read()
    found = fresh(read, seen, found, row_id=answer_id, missing=found is None)
    if found is None:
        raise NotFound("There is no answer of yours with that id.")
    return found


def fresh(
    read: Callable[[], T], seen: Callable[[T], bool], found: T, *, row_id: str, missing: bool
) -> T:
    """`found` (a first `read()`), or `read()` again every FRESH_POLL until `seen` says
    it holds what another worker may not have written yet, for FRESH_WAIT at most.
    When `found` holds nothing (`missing`), only if `row_id`'s time says its row may
    be new: a made-up id is not waited for. Past MOST_WAITING requests waiting in
    this worker, `found` at once."""
    global _waiting
    if seen(found) or _waiting >= MOST_WAITING:
        return found
    if missing and not may_be_new(row_id, within=FRESH_WAIT):
        return found
    _waiting += 1
    try:
        until = time.monotonic() + FRESH_WAIT
        while not seen(found) and time.monotonic() < until:
            gevent.sleep(FRESH_POLL)
            history = recorder()
            if history is not None:
                history.flush()  # what this worker just queued, as every read here
            found = read()
        return found
    finally:
        _waiting -= 1


def settled(answer: StoredAnswer) -> bool:
    """Whether an answer's stored state is whole: it ended; or it runs here, short
    of its end (this worker's reads flush its writes first); or nobody will end it
    (unchanged for longer than an answer can run without a save: its worker is
    gone). Not: it runs, or is being stopped, elsewhere, or ended there with its end
    on the way."""
    if answer.outcome not in ("pending", CANCELLING):
        return True
    history = recorder()
    if history is not None and history.running(answer.id):
        return True
    config = generation().config
    longest = config.total_timeout + config.resume_grace + 2 * SAVE_INTERVAL
    return (now() - answer.updated_at).total_seconds() > longest


def jobs() -> Jobs:
    found: Jobs = current_app.extensions["jobs"]
    return found


def detach(relay: Relay) -> bool:
    """Make a new answer resumable, before it starts: its end is the job's to decide
    (RESUME_GRACE), not this response's. False when it cannot be (history off)."""
    if not g.get("recorded"):
        return False
    relay.client_socket = None
    return True


def run_detached(relay: Relay) -> Job:
    """The started answer as a job: this response reads it (`job.driven()`), later
    ones follow it."""
    prefix = g.get("continued_text", "")
    return jobs().start(relay, g.recorded[0], owner(), prefix, client_socket())


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
    turns: list[Turn] | None = None
    continued: StoredAnswer | None = None
    parent_id = None
    if params.continue_answer is not None:
        continued = answer_of(params.continue_answer, ended=True)
        if not continued.continuable:
            raise Conflict(
                "continue_answer: only an answer that stopped at its max_tokens can be "
                "continued; this one ended on its own.",
            )
        versions = store().versions(owner(), continued.conversation_id)
        ids = [v.id for v in versions]
        earlier = versions[: ids.index(continued.id)][-MAX_TURNS:] if continued.id in ids else []
        turns = [(v.prompt, v.text) for v in earlier if v.text]
        prompt, language = continued.prompt, continued.language
        if model is None and continued.model in generation().provider.models:
            model = continued.model
    elif params.conversation_id is not None:
        stored, who, conversation_id = store(), owner(), params.conversation_id

        def read() -> list[StoredAnswer]:
            return stored.versions(who, conversation_id, newest=MAX_TURNS)

        versions = read()
        versions = fresh(
            read,
            lambda found: bool(found) and all(map(settled, found)),
            versions,
            row_id=conversation_id,
            missing=not versions,
        )
        if not versions:
            raise NotFound(
                "conversation_id: there is no conversation of yours with that id.",
                code="conversation_not_found",
            )
        turns = [(v.prompt, v.text) for v in versions if v.text]
        parent_id = versions[-1].id
    relay = generation().relay(
        g.request_id,
        prompt,
        language=language,
        model=model,
        temperature=params.temperature,
        max_tokens=params.max_tokens,
        client=g.client_id,
        turns=turns,
        partial=continued.text if continued else None,
    )
    relay.client_socket = client_socket()
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
            parent_id=parent_id,
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
