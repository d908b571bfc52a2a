"""The page's history: an answer and its versions, Compare, Share, Delete, Download.

Routes of the page's blueprint (webapp/web/ui.py), server-rendered, and all of
them work without JavaScript: actions are POST forms with the CSRF token,
answered with a redirect (Delete asks first, on a page of its own). An answer
still being written is followed live: by the script on its page, without it on
`/a/<id>/live`; either way that page is a reader, which keeps the answer going.
The owner is the session's (webapp/web/service.py: `owner`); another owner's
answer is a 404. A share link (`/s/<id>`) is the one page anyone may open:
read-only, `noindex`, `no-store`, and gone once revoked.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import gevent
from flask import (
    Response,
    abort,
    flash,
    redirect,
    render_template,
    request,
    stream_with_context,
    url_for,
)
from gevent import get_hub
from markupsafe import Markup, escape
from werkzeug.wrappers import Response as BaseResponse

from webapp.answers import exports
from webapp.answers.life import Followed
from webapp.answers.store import CANCELLING, StoredAnswer
from webapp.errors import AppError, NotFound
from webapp.relay.events import Failed, close_source
from webapp.web.access import HISTORY_PAGE, STOP, needs, public
from webapp.web.history_api import follow_counted
from webapp.web.render import render_answer
from webapp.web.service import STREAM_HEADERS, answer_of, answers, owner, store
from webapp.web.ui import bp, page, prompt_form, recent_answers


def _rendered(answer: StoredAnswer) -> Markup:
    # Highlighting runs in a native thread, as it does for a streamed answer.
    html: Markup = get_hub().threadpool.apply(render_answer, (answer.text,))
    return html


def _version_numbers(versions: list[StoredAnswer]) -> dict[str, int]:
    return {v.id: number for number, v in enumerate(versions, start=1)}


@bp.get("/a/<answer_id>")
@needs(HISTORY_PAGE)
def answer_page(answer_id: str) -> str:
    answer = answer_of(answer_id, ended=True)  # as it ended, if that was just now elsewhere
    versions = store().versions(owner(), answer.conversation_id)
    form = prompt_form()
    form.conversation_id.data = answer.conversation_id
    form.prompt.data = ""
    return page(
        "answer.html",
        form=form,
        answer=answer,
        html=_rendered(answer),
        versions=versions,
        numbers=_version_numbers(versions),
        files=exports.code_files(answer.code_blocks),
        # Still being written: the page follows it live (static/app.js), as a reader.
        running=answer.outcome in ("pending", CANCELLING),
        **recent_answers(),
        share_url=(
            url_for("ui.shared", share_id=answer.share_id, _external=True)
            if answer.share_id
            else None
        ),
    )


@bp.get("/a/<answer_id>/live")
@needs(HISTORY_PAGE)
def follow_live(answer_id: str) -> Response:
    """Without the script, an answer still being written: its text streams into the page
    as it comes (escaped), then the answer formatted. The page is one of its readers, so
    the answer goes on while it is open, as it does for the script's."""
    answer = answer_of(answer_id)
    head, tail = page("live.html", answer=answer).split("<!--answer-->", 1)

    def respond(followed: Followed) -> Response:
        return Response(
            stream_with_context(_live_html(head, tail, followed)),
            mimetype="text/html",
            headers=STREAM_HEADERS,
            direct_passthrough=True,
        )

    return follow_counted(answer_id, 0, respond)


def _live_html(head: str, tail: str, followed: Followed) -> Iterator[bytes]:
    failed: AppError | None = None
    try:
        yield head.encode()
        yield b'<pre class="raw" id="noscript-answer">'
        for _, event in followed.events:
            if type(event) is str:
                yield str(escape(event)).encode()
            elif isinstance(event, Failed):
                failed = event.error
    finally:
        close_source(followed.events)
    yield b"</pre>"
    html = get_hub().threadpool.apply(render_answer, (followed.text(),))
    yield f'<div class="rendered">{html}</div>'.encode()
    if failed is not None:
        yield f'<p class="error" role="alert">{escape(failed.message)}</p>'.encode()
    yield tail.encode()


@bp.post("/a/<answer_id>/stop")
@needs(STOP)
def stop(answer_id: str) -> BaseResponse:
    """Stop, without the script: then the answer's page, as it ended (a Stop here ends
    it within a second: waited for, so the page does not show it still running)."""
    layer = answers()
    layer.cancel(answer_id, owner())
    until = time.monotonic() + 2.0
    while layer.recorder is not None and layer.recorder.running(answer_id):
        if time.monotonic() >= until:
            break
        gevent.sleep(0.05)
    return redirect(url_for("ui.answer_page", answer_id=answer_id), code=303)


@bp.get("/c/<conversation_id>/compare")
@needs(HISTORY_PAGE)
def compare(conversation_id: str) -> str:
    versions = store().versions(owner(), conversation_id)
    if not versions:
        raise NotFound("There is no conversation of yours with that id.")
    numbers = _version_numbers(versions)
    by_id = {v.id: v for v in versions}
    old = by_id.get(request.args.get("a", "")) or versions[max(0, len(versions) - 2)]
    new = by_id.get(request.args.get("b", "")) or versions[-1]
    try:
        lines, unavailable = (
            exports.unified_diff(
                exports.comparable_code(old.text, old.code_blocks),
                exports.comparable_code(new.text, new.code_blocks),
                f"version {numbers[old.id]}",
                f"version {numbers[new.id]}",
            ),
            None,
        )
    except exports.DiffUnavailable as exc:
        lines, unavailable = [], str(exc)
    return page(
        "compare.html",
        versions=versions,
        numbers=numbers,
        old=old,
        new=new,
        lines=lines,
        unavailable=unavailable,
        conversation_id=conversation_id,
    )


@bp.get("/a/<answer_id>/download")
@bp.get("/a/<answer_id>/download/<int:number>")
@needs(HISTORY_PAGE)
def download(answer_id: str, number: int | None = None) -> Response:
    """One block as a file, or "all": the only block, or a zip of several."""
    answer = answer_of(answer_id, ended=True)  # its blocks are recorded with its end
    files = exports.code_files(answer.code_blocks)
    if not files or (number is not None and not 1 <= number <= len(files)):
        raise NotFound("That answer has no such code block.", code="block_not_found")
    if number is None and len(files) > 1:
        body = exports.zip_of(files)
        name, mimetype = exports.ZIP_NAME.format(id=answer.id), "application/zip"
        response = Response(body, mimetype=mimetype)
    else:
        file = files[(number or 1) - 1]
        name = file.name
        response = Response(file.content, mimetype="text/plain")
    response.headers["Content-Disposition"] = f'attachment; filename="{name}"'
    return response


@bp.post("/a/<answer_id>/share")
@needs(HISTORY_PAGE)
def share(answer_id: str) -> BaseResponse:
    if store().share(owner(), answer_id) is None:
        raise NotFound("There is no answer of yours with that id.")
    return redirect(url_for("ui.answer_page", answer_id=answer_id, _anchor="share"), code=303)


@bp.post("/a/<answer_id>/unshare")
@needs(HISTORY_PAGE)
def unshare(answer_id: str) -> BaseResponse:
    if not store().unshare(owner(), answer_id):
        raise NotFound("There is no answer of yours with that id.")
    return redirect(url_for("ui.answer_page", answer_id=answer_id, _anchor="share"), code=303)


def _deleting(answer_id: str) -> tuple[StoredAnswer, int]:
    """The answer, and its version's number in its conversation."""
    answer = answer_of(answer_id)
    versions = store().versions(owner(), answer.conversation_id)
    return answer, _version_numbers(versions).get(answer.id, 1)


def _conversation(conversation_id: str) -> list[StoredAnswer]:
    versions = store().versions(owner(), conversation_id)
    if not versions:
        raise NotFound("There is no conversation of yours with that id.")
    return versions


# Delete asks first: the answer's page asks in a dialog (static/app.js), and without the
# script its Delete buttons open these pages, which ask with a button that deletes.
@bp.get("/a/<answer_id>/delete")
@needs(HISTORY_PAGE)
def confirm_delete(answer_id: str) -> str:
    answer, number = _deleting(answer_id)
    return page(
        "delete.html",
        question=f"Delete version {number}?",
        prompt=answer.prompt,
        action=url_for("ui.delete", answer_id=answer_id),
        back=url_for("ui.answer_page", answer_id=answer_id),
    )


@bp.get("/c/<conversation_id>/delete")
@needs(HISTORY_PAGE)
def confirm_delete_conversation(conversation_id: str) -> str:
    versions = _conversation(conversation_id)
    return page(
        "delete.html",
        question=f"Delete this conversation ({_versions(versions)})?",
        prompt=versions[0].prompt,
        action=url_for("ui.delete_conversation", conversation_id=conversation_id),
        back=url_for("ui.answer_page", answer_id=versions[-1].id),
    )


@bp.post("/a/<answer_id>/delete")
@needs(HISTORY_PAGE)
def delete(answer_id: str) -> BaseResponse:
    answer, number = _deleting(answer_id)
    store().delete_answer(owner(), answer_id)
    left = store().versions(owner(), answer.conversation_id)
    # Said on the page it lands on (a message kept in the session for that one page).
    flash(f"Version {number} ({_quoted(answer.prompt)}) was deleted.")
    if left:
        return redirect(url_for("ui.answer_page", answer_id=left[-1].id), code=303)
    return redirect(url_for("ui.index"), code=303)


@bp.post("/c/<conversation_id>/delete")
@needs(HISTORY_PAGE)
def delete_conversation(conversation_id: str) -> BaseResponse:
    versions = _conversation(conversation_id)
    if not store().delete_conversation(owner(), conversation_id):
        raise NotFound("There is no conversation of yours with that id.")
    flash(f"The conversation {_quoted(versions[0].prompt)} ({_versions(versions)}) was deleted.")
    return redirect(url_for("ui.index"), code=303)


def _versions(versions: list[StoredAnswer]) -> str:
    return f"{len(versions)} version{'s' if len(versions) > 1 else ''}"


def _quoted(prompt: str, most: int = 60) -> str:
    short = " ".join(prompt.split())
    return f"“{short if len(short) <= most else short[: most - 1] + '…'}”"


@bp.get("/s/<share_id>")
@needs(HISTORY_PAGE)
@public
def shared(share_id: str) -> Response:
    """A read-only answer for anyone with the link: no sign-in, no index, no cache."""
    answer = store().shared(share_id)
    if answer is None:
        abort(404)
    html = render_template("shared.html", answer=answer, html=_rendered(answer))
    response = Response(html, mimetype="text/html")
    response.headers["X-Robots-Tag"] = "noindex, nofollow"
    response.headers["Cache-Control"] = "no-store"
    return response
