"""The JSON API: POST /generate-code/ for scripts and programmatic clients."""

from __future__ import annotations

from collections.abc import Iterator

import orjson
from flask import Blueprint, Response, current_app, g, request

from webapp import formats
from webapp.errors import BadRequest, UnsupportedMediaType
from webapp.generation import CodeGen, Relay, explanation_of
from webapp.guard import Guard
from webapp.schema import GenerateCodeRequest

bp = Blueprint("api", __name__)

STREAM_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


def codegen() -> CodeGen:
    service: CodeGen = current_app.extensions["codegen"]
    return service


def new_relay(params: GenerateCodeRequest) -> Relay:
    """A Relay for validated parameters, holding one of the client's stream slots."""
    relay = codegen().relay(
        g.request_id,
        params.prompt,
        language=params.language,
        model=params.model,
        temperature=params.temperature,
        max_tokens=params.max_tokens,
        client=g.client_id,
    )
    relay.client_socket = request.environ.get("gunicorn.socket")
    guard: Guard = current_app.extensions["guard"]
    slot = guard.acquire_stream(g.client_id)
    relay.cleanups.append(lambda: guard.release_stream(slot))
    return relay


def read_json_body() -> object:
    # Only JSON: a cross-site form can post text/plain without a CORS preflight,
    # and that must not drive generation on the operator's key.
    if request.mimetype != "application/json":
        raise UnsupportedMediaType(
            "Send the body as JSON, with the header Content-Type: application/json."
        )
    raw = request.get_data(cache=False)  # 413 past MAX_CONTENT_LENGTH
    if not raw.strip():
        raise BadRequest(
            "The body is empty; send a JSON object with a prompt.", code="invalid_json"
        )
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise BadRequest(f"The body is not valid JSON: {exc}.", code="invalid_json") from None


def negotiate_stream_format() -> str:
    accept = request.accept_mimetypes
    if not accept or accept.best == "*/*":
        return formats.TEXT
    return accept.best_match(formats.MIMETYPES, default=formats.TEXT) or formats.TEXT


def stream_response(body: Iterator[bytes], mimetype: str) -> Response:
    response = Response(body, mimetype=mimetype, headers=STREAM_HEADERS, direct_passthrough=True)
    if mimetype == formats.TEXT:
        response.headers["Content-Type"] = "text/plain; charset=utf-8"
    return response


@bp.post("/generate-code/")
@bp.post("/generate-code", endpoint="generate_code_no_slash")
def generate_code() -> Response:
    params = codegen().validate(read_json_body())
    relay = new_relay(params)
    if not params.stream:
        relay.start(commit_after=None)
        text, done = relay.collect()
        body = {
            "text": text,
            "code_blocks": done.code_blocks,
            "explanation": explanation_of(text),
            "model": relay.request.model,
            "usage": done.usage,
            "finish_reason": done.finish_reason,
            "request_id": done.request_id,
            "timing": done.timing,
        }
        return Response(orjson.dumps(body), mimetype="application/json")
    mimetype = negotiate_stream_format()
    # text/plain has no keep-alive to send, so it waits for the first token
    # and can still answer 504 or 429 with a proper status.
    commit_after = None if mimetype == formats.TEXT else relay.config.heartbeat_interval
    relay.start(commit_after=commit_after)
    return stream_response(formats.FORMATTERS[mimetype](relay.events()), mimetype)


@bp.get("/healthz")
def healthz() -> Response:
    info = codegen().provider.info()
    guard: Guard = current_app.extensions["guard"]
    body = {
        "status": "ok",
        "provider": info.name,
        "model": info.model,
        **info.detail,
        **guard.health(),
    }
    return Response(orjson.dumps(body), mimetype="application/json")
