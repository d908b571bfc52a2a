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

import re
import time
from collections.abc import Callable, Iterator
from typing import Any

import gevent
from flask import (
    Blueprint,
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
from webapp.answers.jobs import FOLLOWER_WRITE_STALL, follow_stored, writes_bounded
from webapp.answers.life import Followed
from webapp.answers.store import CANCELLING, StoredAnswer
from webapp.errors import AppError, NotFound
from webapp.relay.events import Failed, close_source
from webapp.web.access import HISTORY_PAGE, STOP, needs, public
from webapp.web.history_api import follow_counted, holding_a_slot
from webapp.web.render import render_answer
from webapp.web.service import STREAM_HEADERS, answer_of, answers, owner, store
from webapp.web.ui import (
    EXAMPLES,
    PromptForm,
    page,
    prompt_form,
    pyodide_url,
    recent_answers,
    require_sign_in,
)

# The answers' own pages, beside the prompt page (ui.py): signed-out visitors of a
# keyed server go to the sign-in form as they do there.
bp = Blueprint("history_pages", __name__)
bp.before_request(require_sign_in)


def _rendered(answer: StoredAnswer) -> Markup:
    # Highlighting runs in a native thread, as it does for a streamed answer.
    html: Markup = get_hub().threadpool.apply(render_answer, (answer.text,))
    return html


def _version_numbers(versions: list[StoredAnswer]) -> dict[str, int]:
    return {v.id: number for number, v in enumerate(versions, start=1)}


@bp.get("/a/<answer_id>")
@needs(HISTORY_PAGE)
def answer_page(answer_id: str) -> str:
    form = prompt_form()
    form.prompt.data = ""
    return _answer_view(answer_id, form, recent_answers())


def _answer_view(answer_id: str, form: PromptForm, listing: dict[str, Any]) -> str:
    """An answer's page: `form` is its Refine form, `listing` the history beside it."""
    answer = answer_of(answer_id, ended=True)  # as it ended, if that was just now elsewhere
    versions = store().versions(owner(), answer.conversation_id)
    form.conversation_id.data = answer.conversation_id
    return page(
        "answer.html",
        form=form,
        answer=answer,
        html=_rendered(answer),
        versions=versions,
        numbers=_version_numbers(versions),
        files=exports.code_files(answer.code_blocks),
        # The files it was given (attached, or its conversation's latest) and its changes.
        attachments=answers().files_of(answer.id, owner()).attached,
        changes=answer.file_changes or [],
        # Still being written: the page follows it live (static/app.js), as a reader.
        running=answer.outcome in ("pending", CANCELLING),
        **listing,
        share_url=(
            url_for("history_pages.shared", share_id=answer.share_id, _external=True)
            if answer.share_id
            else None
        ),
    )


# The pages that list the history beside a form: the form's own, and an answer's.
_LISTED_ON = re.compile(r"/(?:a/(?P<answer>[\w-]{1,32}))?")


@bp.post("/history/filter")
@needs(HISTORY_PAGE)
def filter_history() -> str | BaseResponse:
    """The history's filter without the script: it is part of the prompt form, so the
    prompt being typed comes along and the page it was on is shown again with it, the
    list filtered (or cleared). Enter in a field of that form lands here too: it filters
    when the filter was changed, else it generates (the form again, as its own button
    sends it)."""
    sent = request.form
    action = sent.get("history", "")
    query = sent.get("q", "")
    if action == "enter" and query.strip() == sent.get("shown_q", "").strip():
        return redirect(url_for("ui.submit"), code=307)  # the same POST, to generate
    listed = _LISTED_ON.fullmatch(sent.get("here", ""))
    here = listed.group(0) if listed else url_for("ui.index")
    listing = recent_answers("" if action == "clear" else query, here)
    form = prompt_form()
    if listed and listed.group("answer"):
        return _answer_view(listed.group("answer"), form, listing)
    return page("index.html", form=form, examples=EXAMPLES, **listing)


@bp.get("/a/<answer_id>/live")
@needs(HISTORY_PAGE)
def follow_live(answer_id: str) -> Response:
    """Without the script, an answer still being written: its text streams into the page
    as it comes (escaped), then the answer formatted. The page is one of its readers, so
    the answer goes on while it is open, as it does for the script's."""
    answer = answer_of(answer_id)
    head, tail = page("live.html", answer=answer).split("<!--answer-->", 1)

    return follow_counted(answer_id, 0, lambda f: _streaming_page(_live_html(head, tail, f)))


def _live_html(head: str, tail: str, followed: Followed) -> Iterator[bytes]:
    return _streamed(head, tail, followed, _rendered_end, pre_id="noscript-answer")


def _rendered_end(text: str, failed: AppError | None) -> str:
    html = get_hub().threadpool.apply(render_answer, (text,))
    end = f'<div class="rendered">{html}</div>'
    if failed is not None:
        end += f'<p class="error" role="alert">{escape(failed.message)}</p>'
    return end


def _streamed(
    head: str,
    tail: str,
    followed: Followed,
    end: Callable[[str, AppError | None], str],
    *,
    pre_id: str,
) -> Iterator[bytes]:
    """A page that follows an answer still being written, with or without the script:
    `head`, the text as it comes (escaped), then `end(text, failure)` (which the
    stylesheet shows in place of the text), then `tail`. This response is a reader of
    the answer, so the answer goes on while the page is open."""
    failed: AppError | None = None
    try:
        yield head.encode()
        yield f'<pre class="raw" id="{pre_id}">'.encode()
        for _, event in followed.events:
            if type(event) is str:
                yield str(escape(event)).encode()
            elif isinstance(event, Failed):
                failed = event.error
    finally:
        close_source(followed.events)
    yield b"</pre>"
    yield end(followed.text(), failed).encode()
    yield tail.encode()


def _running(answer: StoredAnswer) -> bool:
    """Still being written, by this worker or by one that is alive (not a row left
    pending by a server that died, which nobody will end)."""
    if answer.outcome not in ("pending", CANCELLING):
        return False
    layer = answers()
    here = layer.recorder is not None and layer.recorder.running(answer.id)
    return here or not layer.freshness.settled(answer)


def _streaming_page(body: Iterator[bytes], **headers: str) -> Response:
    return Response(
        stream_with_context(body),
        mimetype="text/html",
        headers={**STREAM_HEADERS, **headers},
        direct_passthrough=True,
    )


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
    return redirect(url_for("history_pages.answer_page", answer_id=answer_id), code=303)


@bp.get("/c/<conversation_id>/compare")
@needs(HISTORY_PAGE)
def compare(conversation_id: str) -> str | Response:
    """Two versions' code, diffed. One still being written is followed live first (its
    text as it comes), then compared as it ended: the page never cuts it."""
    versions = store().versions(owner(), conversation_id)
    if not versions:
        raise NotFound("There is no conversation of yours with that id.")
    old_id, new_id = _compared(versions)
    writing = next((v for v in versions if v.id in (new_id, old_id) and _running(v)), None)
    numbers = _version_numbers(versions)
    by_id = {v.id: v for v in versions}
    context = {
        "versions": versions,
        "numbers": numbers,
        "old": by_id[old_id],
        "new": by_id[new_id],
        "conversation_id": conversation_id,
    }
    if writing is None:
        return page("compare.html", **context, **_diff(versions, old_id, new_id))
    head, tail = page("compare.html", **context, writing=writing).split("<!--answer-->", 1)

    def end(text: str, failed: AppError | None) -> str:
        # The versions as they are now, the one followed with its end.
        now = store().versions(owner(), conversation_id)
        if not {old_id, new_id} <= {v.id for v in now}:
            return '<p class="error" role="alert">A version compared here was deleted.</p>'
        return render_template("_compare_diff.html", **_diff(now, old_id, new_id))

    return follow_counted(
        writing.id,
        0,
        lambda f: _streaming_page(_streamed(head, tail, f, end, pre_id="live-version")),
    )


def _compared(versions: list[StoredAnswer]) -> tuple[str, str]:
    """The ids compared: `?a=` and `?b=`, else the last two versions."""
    ids = {v.id for v in versions}
    old = request.args.get("a", "")
    new = request.args.get("b", "")
    return (
        old if old in ids else versions[max(0, len(versions) - 2)].id,
        new if new in ids else versions[-1].id,
    )


def _diff(versions: list[StoredAnswer], old_id: str, new_id: str) -> dict[str, Any]:
    numbers = _version_numbers(versions)
    by_id = {v.id: v for v in versions}
    old, new = by_id[old_id], by_id[new_id]
    try:
        lines = exports.unified_diff(
            exports.comparable_code(old.text, old.code_blocks),
            exports.comparable_code(new.text, new.code_blocks),
            f"version {numbers[old.id]}",
            f"version {numbers[new.id]}",
        )
    except exports.DiffUnavailable as exc:
        return {"lines": [], "unavailable": str(exc)}
    return {"lines": lines, "unavailable": None}


@bp.get("/a/<answer_id>/download")
@bp.get("/a/<answer_id>/download/<int:number>")
@needs(HISTORY_PAGE)
def download(answer_id: str, number: int | None = None) -> Response:
    """One block as a file, or "all": the only block, or a zip of several."""
    return _download(answer_of(answer_id, ended=True), number)  # blocks come with its end


def _download(answer: StoredAnswer, number: int | None) -> Response:
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


@bp.get("/a/<answer_id>/patch/<name>")
@needs(HISTORY_PAGE)
def file_patch(answer_id: str, name: str) -> Response:
    """One changed file's patch (`git apply` takes it in the file's folder); all of them
    are /answers/<id>/changes.patch."""
    answer = answer_of(answer_id, ended=True)
    change = next((c for c in answer.file_changes or [] if c.get("name") == name), None)
    if change is None or not change.get("diff"):
        raise NotFound(f"This answer did not change a file named {name!r}.", code="file_not_found")
    response = Response(change["diff"], mimetype="text/x-diff")
    response.headers.set("Content-Disposition", "attachment", filename=f"{name}.patch")
    return response


@bp.post("/a/<answer_id>/share")
@needs(HISTORY_PAGE)
def share(answer_id: str) -> BaseResponse:
    if store().share(owner(), answer_id) is None:
        raise NotFound("There is no answer of yours with that id.")
    return redirect(
        url_for("history_pages.answer_page", answer_id=answer_id, _anchor="share"), code=303
    )


@bp.post("/a/<answer_id>/unshare")
@needs(HISTORY_PAGE)
def unshare(answer_id: str) -> BaseResponse:
    if not store().unshare(owner(), answer_id):
        raise NotFound("There is no answer of yours with that id.")
    return redirect(
        url_for("history_pages.answer_page", answer_id=answer_id, _anchor="share"), code=303
    )


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
        action=url_for("history_pages.delete", answer_id=answer_id),
        back=url_for("history_pages.answer_page", answer_id=answer_id),
    )


@bp.get("/c/<conversation_id>/delete")
@needs(HISTORY_PAGE)
def confirm_delete_conversation(conversation_id: str) -> str:
    versions = _conversation(conversation_id)
    return page(
        "delete.html",
        question=f"Delete this conversation ({_versions(versions)})?",
        prompt=versions[0].prompt,
        action=url_for("history_pages.delete_conversation", conversation_id=conversation_id),
        back=url_for("history_pages.answer_page", answer_id=versions[-1].id),
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
        return redirect(url_for("history_pages.answer_page", answer_id=left[-1].id), code=303)
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


# A share link is for anyone: read-only, never indexed, never cached.
SHARED_HEADERS = {"X-Robots-Tag": "noindex, nofollow", "Cache-Control": "no-store"}


def _shared_answer(share_id: str) -> StoredAnswer:
    answer = store().shared(share_id)
    if answer is None:
        abort(404)
    return answer


@bp.get("/s/<share_id>")
@needs(HISTORY_PAGE)
@public
def shared(share_id: str) -> Response:
    """A read-only answer for anyone with the link, with Copy, Run and downloads of its
    code and a way to try the app. One still being written is followed live (through its
    row, a few seconds behind at most: the reader need not be its owner), as a reader
    that keeps it going."""
    answer = _shared_answer(share_id)
    context = {"answer": answer, "share_id": share_id, "pyodide": pyodide_url()}
    if not _running(answer):
        html = render_template(
            "shared.html",
            **context,
            html=_rendered(answer),
            files=exports.code_files(answer.code_blocks),
        )
        return Response(html, mimetype="text/html", headers=SHARED_HEADERS)
    head, tail = render_template("shared.html", **context, running=True).split("<!--answer-->", 1)

    # A reader holds a stream slot as any reader does: no way around the bound.
    def respond() -> Response:
        config, history = answers().config, store()
        events = follow_stored(
            lambda: history.shared(share_id),
            0,
            heartbeat=config.heartbeat_interval,
            until=time.monotonic() + config.total_timeout + config.resume_grace,
            following=lambda: history.mark_followed(answer.id),
        )

        def end(text: str, failed: AppError | None) -> str:
            ended = history.shared(share_id) or answer
            return render_template(
                "_shared_answer.html",
                html=get_hub().threadpool.apply(render_answer, (ended.text,)),
                error=failed,
                files=exports.code_files(ended.code_blocks),
                share_id=share_id,
            )

        followed = Followed(
            writes_bounded(events, FOLLOWER_WRITE_STALL), lambda: answer.text, "store"
        )
        return _streaming_page(
            _streamed(head, tail, followed, end, pre_id="live-answer"), **SHARED_HEADERS
        )

    return holding_a_slot(respond)


@bp.get("/s/<share_id>/download")
@bp.get("/s/<share_id>/download/<int:number>")
@needs(HISTORY_PAGE)
@public
def shared_download(share_id: str, number: int | None = None) -> Response:
    """A shared answer's code, as its owner downloads it (one block, or all as a zip)."""
    response = _download(_shared_answer(share_id), number)
    response.headers.update(SHARED_HEADERS)
    return response
