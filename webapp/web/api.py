"""The JSON API: POST /generate-code/ for scripts and programmatic clients."""

from __future__ import annotations

from collections.abc import Iterator

import orjson
from flask import Blueprint, Response, current_app, request

from webapp.relay import formats
from webapp.relay.codeblocks import explanation_of
from webapp.web.access import GENERATE, needs
from webapp.web.service import (
    STREAM_HEADERS,
    detach,
    generation,
    guard,
    new_relay,
    read_body,
    run_detached,
)

bp = Blueprint("api", __name__)


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
@needs(GENERATE)
def generate_code() -> Response:
    params = generation().validate(read_body())
    relay = new_relay(params)
    resumable = params.resumable and params.stream and detach(relay)
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
            "files": done.files,
        }
        return Response(orjson.dumps(body), mimetype="application/json")
    mimetype = negotiate_stream_format()
    # text/plain has no keep-alive to send, so it waits for the first token
    # and can still answer 504 or 429 with a proper status.
    commit_after = None if mimetype == formats.TEXT else relay.config.heartbeat_interval
    relay.start(commit_after=commit_after)
    if resumable:
        job = run_detached(relay)
        return stream_response(formats.COUNTED[mimetype](job.driven(), job.start), mimetype)
    return stream_response(formats.FORMATTERS[mimetype](relay.events()), mimetype)


@bp.get("/healthz")
def healthz() -> Response:
    info = generation().provider.info()
    body = {
        "status": "ok",
        "provider": info.name,
        "model": info.model,
        **info.detail,
        **guard().health(),
        **current_app.extensions["jobs"].health(),
    }
    return Response(orjson.dumps(body), mimetype="application/json")
