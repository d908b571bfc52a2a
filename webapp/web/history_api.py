"""The history API: the owner's answers as JSON, deletion and share links.

    GET    /answers                  newest first (?q= filter, ?limit=, ?before= cursor)
    GET    /answers/<id>             one answer (with `attachments`, `results` and `files`)
    GET    /answers/<id>/files/<name>  a file as the answer left it (?version=attached)
    GET    /answers/<id>/changes.patch the diffs of the files it changed, one patch
    GET    /answers/<id>/changes.zip   the files it changed or made, and that patch
    DELETE /answers/<id>             204
    POST   /answers/<id>/share       {"share_id", "share_url"}
    DELETE /answers/<id>/share       204 (the link is a 404 from then on)
    DELETE /conversations/<id>       204, every version
    GET    /answers/<id>/events      re-attach: the events after Last-Event-ID / ?after=
    POST   /answers/<id>/cancel      Stop a resumable answer, whichever worker runs it

Owners are found as for generation (webapp/web/service.py: `owner`): with API_KEYS
the key authenticates every call here; without, the session cookie that
`POST /generate-code/` set. Another owner's answer is a 404, like a missing one.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import Any

import orjson
from flask import Blueprint, Response, g, request, url_for

from webapp.answers import exports
from webapp.answers.life import Followed
from webapp.answers.store import MAX_PAGE_SIZE, PAGE_SIZE
from webapp.errors import BadRequest, NotFound
from webapp.relay import formats
from webapp.relay.events import close_source
from webapp.web.access import HISTORY, STOP, needs, needs_for_blueprint
from webapp.web.service import (
    STREAM_HEADERS,
    answer_of,
    answers,
    client_gone,
    guard,
    owner,
    store,
)

bp = Blueprint("answers", __name__)
needs_for_blueprint(bp.name, HISTORY)

# What a listing shows of each answer: enough to choose one, not its whole text.
SUMMARY = ("id", "conversation_id", "parent_id", "prompt", "language", "model", "finish_reason")


def _json(body: object, status: int = 200) -> Response:
    return Response(orjson.dumps(body), status=status, mimetype="application/json")


@bp.get("/answers")
def list_answers() -> Response:
    raw_limit = request.args.get("limit", str(PAGE_SIZE))
    if not _whole(raw_limit, 4) or not 1 <= int(raw_limit) <= MAX_PAGE_SIZE:
        raise BadRequest(f"limit: must be a whole number from 1 to {MAX_PAGE_SIZE}.")
    found, cursor = store().page(
        owner(),
        query=request.args.get("q", "")[:200],
        limit=int(raw_limit),
        before=request.args.get("before") or None,
    )
    items = []
    for answer in found:
        item = {name: getattr(answer, name) for name in SUMMARY}
        item.update(
            outcome=answer.outcome,
            created_at=answer.created_at.isoformat() + "Z",
            chars=len(answer.text),
            shared=answer.share_id is not None,
        )
        items.append(item)
    return _json({"answers": items, "next": cursor})


@bp.get("/answers/<answer_id>")
def get_answer(answer_id: str) -> Response:
    # As it ended, when it just ended on another worker (a script reads it at once).
    body = answer_of(answer_id, ended=True).to_json()
    held = answers().files_of(answer_id, owner())
    body["attachments"] = [file.to_json() for file in held.attached]
    body["results"] = [file.to_json() for file in held.results]
    return _json(body)


@bp.get("/answers/<answer_id>/files/<name>")
def answer_file(answer_id: str, name: str) -> Response:
    version = request.args.get("version", "latest")
    if version not in ("latest", "attached"):
        raise BadRequest("version: must be latest or attached.")
    held = answers().files_of(answer_id, owner())
    found = held.find(name, "attached") if version == "attached" else None
    if version == "latest":
        found = held.find(name, "result") or held.find(name, "attached")
    if found is None:
        raise NotFound(f"This answer has no file named {name!r}.", code="file_not_found")
    return _download(found.content.encode(), name, "text/plain; charset=utf-8")


@bp.get("/answers/<answer_id>/changes.patch")
def answer_patch(answer_id: str) -> Response:
    answer = answer_of(answer_id, ended=True)
    patch = exports.patch_of(answer.file_changes or [])
    return _download(patch.encode(), f"answer-{answer_id}.patch", "text/x-diff; charset=utf-8")


@bp.get("/answers/<answer_id>/changes.zip")
def answer_changes_zip(answer_id: str) -> Response:
    answer = answer_of(answer_id, ended=True)
    held = answers().files_of(answer_id, owner())
    new = [exports.CodeFile(file.name, file.content) for file in held.results]
    body = exports.changes_zip(new, answer.file_changes or [])
    return _download(body, f"answer-{answer_id}-changes.zip", "application/zip")


def _download(body: bytes, name: str, mimetype: str) -> Response:
    response = Response(body, mimetype=mimetype)
    # The name is the owner's own and one plain segment (webapp/relay/attachments.py);
    # Werkzeug quotes it (and adds filename* for what is not ASCII).
    response.headers.set("Content-Disposition", "attachment", filename=name)
    response.headers["X-Content-Type-Options"] = "nosniff"
    return response


@bp.delete("/answers/<answer_id>")
def delete_answer(answer_id: str) -> Response:
    if not store().delete_answer(owner(), answer_id):
        raise NotFound("There is no answer of yours with that id.")
    return Response(status=204)


@bp.post("/answers/<answer_id>/share")
def share_answer(answer_id: str) -> Response:
    share_id = store().share(owner(), answer_id)
    if share_id is None:
        raise NotFound("There is no answer of yours with that id.")
    url = url_for("history_pages.shared", share_id=share_id, _external=True)
    return _json({"share_id": share_id, "share_url": url})


@bp.delete("/answers/<answer_id>/share")
def unshare_answer(answer_id: str) -> Response:
    if not store().unshare(owner(), answer_id):
        raise NotFound("There is no answer of yours with that id.")
    return Response(status=204)


def _whole(raw: str, digits: int) -> bool:
    """ASCII digits only: `str.isdigit` also accepts "²", which `int` refuses (a 500)."""
    return 0 < len(raw) <= digits and raw.isascii() and raw.isdigit()


def events_after() -> int:
    """Where a re-attachment picks up: Last-Event-ID (SSE), else ?after=, else 0."""
    header = request.headers.get("Last-Event-ID")
    raw = header or request.args.get("after", "0")
    if not _whole(raw, 12):
        field = "Last-Event-ID" if header else "after"
        raise BadRequest(f"{field}: must be a whole number of characters, 0 or more.")
    return int(raw)


def follow_counted(answer_id: str, after: int, respond: Callable[[Followed], Response]) -> Response:
    """`respond(followed)` for a reader of the answer (webapp/answers/life.py), who
    holds one of its client's stream slots (MAX_CONCURRENT_STREAMS_PER_CLIENT) while
    it reads, as the answers it starts do: following is no way around the bound."""
    return holding_a_slot(
        lambda: respond(answers().follow(answer_id, owner(), after, client_gone()))
    )


def holding_a_slot(respond: Callable[[], Response]) -> Response:
    """`respond()`'s streamed response, holding one of the client's stream slots from
    before it is made until the server closes its body, however the stream ends."""
    limits = guard()
    slot = limits.acquire_stream(g.client_id)
    try:
        response = respond()
    except BaseException:
        limits.release_stream(slot)
        raise
    # The body is passed straight to the server (direct_passthrough), which calls
    # its close() however the stream ends: Response.call_on_close would never run.
    response.response = _Releasing(response.response, lambda: limits.release_stream(slot))
    return response


class _Releasing:
    """A response body that calls `release` once, when the server closes it (even if
    no byte of it was ever sent)."""

    def __init__(self, body: Iterable[Any], release: Callable[[], None]) -> None:
        self._body: Iterator[Any] = iter(body)
        self._release = release
        self._released = False

    def __iter__(self) -> Iterator[Any]:
        return self._body

    def close(self) -> None:
        try:
            close_source(self._body)
        finally:
            if not self._released:
                self._released = True
                self._release()


@bp.get("/answers/<answer_id>/events")
def answer_events(answer_id: str) -> Response:
    after = events_after()
    accept = request.accept_mimetypes
    mimetype = formats.NDJSON if accept[formats.NDJSON] > accept[formats.SSE] else formats.SSE

    def respond(followed: Followed) -> Response:
        return Response(
            formats.NUMBERED[mimetype](followed.events),
            mimetype=mimetype,
            # Which way it is followed: live in this worker, Redis, or the stored row.
            headers={**STREAM_HEADERS, "X-Followed-Through": followed.way},
            direct_passthrough=True,
        )

    return follow_counted(answer_id, after, respond)


@bp.post("/answers/<answer_id>/cancel")
@needs(STOP)
def cancel_answer(answer_id: str) -> Response:
    """Stop, wherever it runs; `X-Stopped-Through` says how (webapp/answers/life.py)."""
    return _stopped(answers().cancel(answer_id, owner()))


def _stopped(way: str) -> Response:
    return Response(status=204, headers={"X-Stopped-Through": way})


@bp.delete("/conversations/<conversation_id>")
def delete_conversation(conversation_id: str) -> Response:
    if not store().delete_conversation(owner(), conversation_id):
        raise NotFound(
            "There is no conversation of yours with that id.", code="conversation_not_found"
        )
    return Response(status=204)
