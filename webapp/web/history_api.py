"""The history API: the owner's answers as JSON, deletion and share links.

    GET    /answers                  newest first (?q= filter, ?limit=, ?before= cursor)
    GET    /answers/<id>             one answer
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

import contextlib
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import orjson
from flask import Blueprint, Response, current_app, g, request, url_for

from webapp.answers.eventlog import EventLog, RedisUnavailable
from webapp.answers.jobs import FOLLOWER_WRITE_STALL, Numbered, follow_stored, writes_bounded
from webapp.answers.store import (
    CANCELLING,
    INTERRUPTED,
    MAX_PAGE_SIZE,
    PAGE_SIZE,
    Store,
    StoredAnswer,
)
from webapp.config import Config
from webapp.errors import BadRequest, HistoryUnavailable, NotFound
from webapp.relay import formats
from webapp.relay.events import PING, close_source
from webapp.web.service import (
    STREAM_HEADERS,
    answer_of,
    client_gone,
    fresh,
    guard,
    jobs,
    owner,
    store,
)

bp = Blueprint("answers", __name__)

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
    return _json(answer_of(answer_id, ended=True).to_json())


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
    url = url_for("ui.shared", share_id=share_id, _external=True)
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


def follow_counted(
    answer_id: str,
    after: int,
    respond: Callable[[Iterator[Numbered], Callable[[], str]], Response],
) -> Response:
    """`respond(events, text)` for a reader of the answer, who holds one of its
    client's stream slots (MAX_CONCURRENT_STREAMS_PER_CLIENT) while it reads, as the
    answers it starts do: following is no way around the bound."""
    limits = guard()
    slot = limits.acquire_stream(g.client_id)
    try:
        response = respond(*follow(answer_id, after))
    except BaseException:
        limits.release_stream(slot)
        raise
    # The body is passed straight to the server (direct_passthrough), which calls
    # its close() however the stream ends: Response.call_on_close would never run.
    body = _Releasing(response.response, lambda: limits.release_stream(slot))
    response.response = body
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


def follow(answer_id: str, after: int) -> tuple[Iterator[Numbered], Callable[[], str]]:
    """An answer's events after `after`: live from its job when it runs in this worker,
    else from Redis (any worker, any machine), else through its stored row; a reader
    that stops taking them is let go after FOLLOWER_WRITE_STALL s."""
    events, text = _follow(answer_id, after)
    return writes_bounded(events, FOLLOWER_WRITE_STALL), text


def _follow(answer_id: str, after: int) -> tuple[Iterator[Numbered], Callable[[], str]]:
    running = jobs()
    config: Config = current_app.config["APP_CONFIG"]
    until = time.monotonic() + config.total_timeout + config.resume_grace
    answer = _located(answer_id)
    if answer is None:
        # Another machine's answer, not in this one's database: Redis knows its owner.
        assert running.eventlog is not None
        g.followed_through = "redis"
        events = running.eventlog.follow(
            answer_id, after, heartbeat=config.heartbeat_interval, until=until
        )
        text = _Collected()
        return text.wrap(events), text.text
    job = running.get(answer_id)
    if job is not None:
        g.followed_through = "job"
        return job.follow(after, client_gone()), job.text
    # Read while streaming, outside the request's context: bound now.
    who, latest, history = owner(), [answer], store()

    def read() -> StoredAnswer | None:
        found = history.get(who, answer_id)
        if found is not None:
            latest[0] = found
        return found

    def following() -> None:
        with contextlib.suppress(HistoryUnavailable):  # then it may end at its grace
            history.mark_followed(answer_id)

    def stored_from(sent: int) -> Iterator[Numbered]:
        return follow_stored(
            read, sent, heartbeat=config.heartbeat_interval, until=until, following=following
        )

    eventlog = running.eventlog
    if eventlog is not None and answer.outcome in ("pending", CANCELLING):
        g.followed_through = "redis"

        def abandoned() -> bool:
            """Its instance died: the row's lease ran out (a read marks it interrupted);
            what it published past its last save is kept in the row."""
            with contextlib.suppress(HistoryUnavailable, RedisUnavailable):
                found = read()
                if found is not None and found.outcome == INTERRUPTED:
                    history.keep_interrupted_text(answer_id, eventlog.text(answer_id))
                return found is None or found.outcome not in ("pending", CANCELLING)
            return False

        events = eventlog.follow(
            answer_id, after, heartbeat=config.heartbeat_interval, until=until, abandoned=abandoned
        )
        text = _Collected(answer.text[:after])
        return text.wrap(_then(events, after, stored_from)), text.text
    g.followed_through = "store"
    return stored_from(after), lambda: latest[0].text


def _then(
    events: Iterator[Numbered], after: int, rest: Callable[[int], Iterator[Numbered]]
) -> Iterator[Numbered]:
    """`events` (from `after` characters on) to their end; if they stop short of one
    (Redis saw the answer's instance die), `rest(characters sent)`: the row's text
    past them, and its end."""
    sent = after
    for end, event in events:
        yield end, event
        if type(event) is not str and event is not PING:
            return  # Done or Failed
        if end >= 0:
            sent = end
    yield from rest(sent)


def _redis_owner_is(eventlog: EventLog, answer_id: str) -> bool:
    try:
        return eventlog.owner_of(answer_id) == owner()
    except RedisUnavailable:
        return False


def _located(answer_id: str) -> StoredAnswer | None:
    """One of the owner's answers, from the database; None when only Redis knows it
    (another machine's, with its own database). A new answer's row may not be
    written yet: read again for FRESH_WAIT s before the 404 (only when the id's time
    says it may be new, so a made-up id is a 404 at once)."""
    eventlog, who = jobs().eventlog, owner()
    history_off: NotFound | None = None
    try:
        stored: Store | None = store()
    except NotFound as exc:  # HISTORY=off here: another instance's answer, through Redis only
        stored, history_off = None, exc

    def read() -> tuple[StoredAnswer | None, bool]:
        found = stored.get(who, answer_id) if stored is not None else None
        elsewhere = found is None and eventlog is not None and _redis_owner_is(eventlog, answer_id)
        return found, elsewhere

    def known(got: tuple[StoredAnswer | None, bool]) -> bool:
        return got[0] is not None or got[1]

    got = fresh(read, known, read(), row_id=answer_id, missing=True)
    found, elsewhere = got
    if found is None and not elsewhere:
        if history_off is not None:
            raise history_off  # its 404 says so
        raise NotFound("There is no answer of yours with that id.")
    return found


class _Collected:
    """The text a Redis follower has seen, for the page's code blocks."""

    def __init__(self, known: str = "") -> None:
        self.parts = [known]

    def wrap(self, events: Iterator[Numbered]) -> Iterator[Numbered]:
        for end, event in events:
            if type(event) is str:
                self.parts.append(event)
            yield end, event

    def text(self) -> str:
        return "".join(self.parts)


@bp.get("/answers/<answer_id>/events")
def answer_events(answer_id: str) -> Response:
    after = events_after()
    accept = request.accept_mimetypes
    mimetype = formats.NDJSON if accept[formats.NDJSON] > accept[formats.SSE] else formats.SSE

    def respond(events: Iterator[Numbered], _: Callable[[], str]) -> Response:
        return Response(
            formats.NUMBERED[mimetype](events),
            mimetype=mimetype,
            # Which way it is followed: live in this worker, or through the stored row.
            headers={**STREAM_HEADERS, "X-Followed-Through": g.followed_through},
            direct_passthrough=True,
        )

    return follow_counted(answer_id, after, respond)


@bp.post("/answers/<answer_id>/cancel")
def cancel_answer(answer_id: str) -> Response:
    """Stop: the upstream closes within a second, whoever is attached, on any worker.
    `X-Stopped-Through` says how: `job` (it ran here), `row` (a mark in its row, for
    the worker running it), `redis` (another machine's), `ended` (it had ended)."""
    running = jobs()
    answer = _located(answer_id)
    if answer is None:
        assert running.eventlog is not None
        running.eventlog.request_cancel(answer_id)  # another machine's: its job looks
        return _stopped("redis")
    if running.cancel(answer_id):
        return _stopped("job")
    if answer.outcome not in ("pending", CANCELLING):
        return _stopped("ended")
    store().request_cancel(owner(), answer_id)  # its worker looks every 0.4 s
    if running.eventlog is not None:
        with contextlib.suppress(RedisUnavailable):
            running.eventlog.request_cancel(answer_id)
    return _stopped("row")


def _stopped(way: str) -> Response:
    return Response(status=204, headers={"X-Stopped-Through": way})


@bp.delete("/conversations/<conversation_id>")
def delete_conversation(conversation_id: str) -> Response:
    if not store().delete_conversation(owner(), conversation_id):
        raise NotFound(
            "There is no conversation of yours with that id.", code="conversation_not_found"
        )
    return Response(status=204)
