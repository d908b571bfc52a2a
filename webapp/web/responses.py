"""AppErrors (webapp/errors.py) as responses: the one way an error reaches a client.

JSON with a stable code for the API and the page's script, an HTML page for
the browser's own requests. The page's CSRF failure has its own handler, in
webapp/web/ui.py, since it re-renders the form.
"""

from __future__ import annotations

from typing import Any

import orjson
from flask import Flask, Response, current_app, g, render_template, request
from werkzeug.exceptions import HTTPException

from webapp.errors import AppError, InternalError

# The blueprints of pages a person reads: their errors are pages too.
PAGES = ("ui", "history_pages")


def wants_json_response() -> bool:
    """JSON for the API and the page's script; HTML for the page, and for a browser
    that asked for an address nobody serves (its Accept prefers text/html)."""
    if request.endpoint == "ui.stream":
        return True  # the page's streaming route speaks JSON whatever Accept says
    accept = request.accept_mimetypes
    if request.blueprint in PAGES:
        return accept["application/json"] > accept["text/html"]
    if request.url_rule is None:
        return not accept["text/html"] > accept["application/json"]
    return True


def error_response(exc: AppError, **extra: Any) -> Response:
    """The one way to build an error response, JSON for the API, HTML for the page."""
    request_id = g.get("request_id", "")
    if wants_json_response():
        body = {"error": {**exc.to_dict(), "request_id": request_id, **extra}}
        response = Response(orjson.dumps(body), status=exc.status, mimetype="application/json")
    else:
        html = render_template("error.html", error=exc, request_id=request_id)
        response = Response(html, status=exc.status, mimetype="text/html")
    if exc.retry_after is not None:
        response.headers["Retry-After"] = str(max(1, round(exc.retry_after + 0.499)))
    if exc.status == 408:
        response.headers["Connection"] = "close"  # what is left of the body is not read
    return response


_HTTP_CODES = {
    404: "not_found",
    405: "method_not_allowed",
    413: "body_too_large",
    415: "unsupported_media_type",
}


_HTTP_MESSAGES = {404: "There is nothing at this address."}


def register_error_handlers(app: Flask) -> None:
    @app.errorhandler(AppError)
    def on_app_error(exc: AppError) -> Response:
        if isinstance(exc, InternalError):
            app.logger.error("internal error: %s", exc.message)
            exc = InternalError("Internal server error; the request id is in the log.")
        return error_response(exc)

    @app.errorhandler(HTTPException)
    def on_http_error(exc: HTTPException) -> Response:
        status = exc.code or 500
        message = _HTTP_MESSAGES.get(status) or exc.description or exc.name
        if status == 413:
            limit = current_app.config["MAX_CONTENT_LENGTH"]
            message = f"The request body is over the limit of {limit} bytes."
        err = AppError(message, code=_HTTP_CODES.get(status, "http_error"))
        err.status = status
        response = error_response(err)
        if status == 405 and exc.get_response().headers.get("Allow"):
            response.headers["Allow"] = exc.get_response().headers["Allow"]
        return response

    @app.errorhandler(Exception)
    def on_unexpected(exc: Exception) -> Response:
        app.logger.exception("unhandled error")
        return error_response(InternalError("Internal server error; the request id is in the log."))
