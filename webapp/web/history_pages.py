"""The page's history: an answer and its versions, Compare, Share, Delete, Download.

Routes of the page's blueprint (webapp/web/ui.py), server-rendered, and all of
them work without JavaScript: actions are POST forms with the CSRF token,
answered with a redirect. The owner is the session's (webapp/web/service.py:
`owner`); another owner's answer is a 404. A share link (`/s/<id>`) is the one
page anyone may open: read-only, `noindex`, `no-store`, and gone once revoked.
"""

from __future__ import annotations

from flask import Response, abort, redirect, render_template, request, url_for
from gevent import get_hub
from markupsafe import Markup
from werkzeug.wrappers import Response as BaseResponse

from webapp.answers import exports
from webapp.answers.store import StoredAnswer
from webapp.errors import NotFound
from webapp.web.access import HISTORY_PAGE, needs, public
from webapp.web.render import render_answer
from webapp.web.service import answer_of, owner, store
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
        **recent_answers(),
        share_url=(
            url_for("ui.shared", share_id=answer.share_id, _external=True)
            if answer.share_id
            else None
        ),
    )


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


@bp.post("/a/<answer_id>/delete")
@needs(HISTORY_PAGE)
def delete(answer_id: str) -> BaseResponse:
    answer = answer_of(answer_id)
    store().delete_answer(owner(), answer_id)
    left = store().versions(owner(), answer.conversation_id)
    if left:
        return redirect(url_for("ui.answer_page", answer_id=left[-1].id), code=303)
    return redirect(url_for("ui.index"), code=303)


@bp.post("/c/<conversation_id>/delete")
@needs(HISTORY_PAGE)
def delete_conversation(conversation_id: str) -> BaseResponse:
    if not store().delete_conversation(owner(), conversation_id):
        raise NotFound("There is no conversation of yours with that id.")
    return redirect(url_for("ui.index"), code=303)


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
