"""What both blueprints need to turn a request into an answer: the shared route helpers.

The API and the page differ in how they render; reading the body, finding
the generation service and starting a relay that holds one of the client's
stream slots are the same, and live here once.
"""

from __future__ import annotations

import orjson
from flask import current_app, g, request

from webapp.errors import BadRequest, UnsupportedMediaType
from webapp.generation import GenerationService, Relay
from webapp.guard import Guard
from webapp.schema import GenerateCodeRequest

# Streams are never cached, and proxies (nginx) must not buffer them.
STREAM_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


def generation() -> GenerationService:
    service: GenerationService = current_app.extensions["generation"]
    return service


def guard() -> Guard:
    found: Guard = current_app.extensions["guard"]
    return found


def new_relay(params: GenerateCodeRequest) -> Relay:
    """A Relay for validated parameters, holding one of the client's stream slots."""
    relay = generation().relay(
        g.request_id,
        params.prompt,
        language=params.language,
        model=params.model,
        temperature=params.temperature,
        max_tokens=params.max_tokens,
        client=g.client_id,
    )
    relay.client_socket = request.environ.get("gunicorn.socket")
    limits = guard()
    slot = limits.acquire_stream(g.client_id)
    relay.cleanups.append(lambda: limits.release_stream(slot))
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
