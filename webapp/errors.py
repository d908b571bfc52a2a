"""The one exception tree, and the one way to turn it into a response.

    AppError                       status  code
    ├── BadRequest                 400     invalid_json, invalid_request, unknown_fields,
    │                                      model_not_allowed, prompt_too_long,
    │                                      upstream_bad_request
    ├── Unauthorized (guard.py)    401     unauthorized, sign_in_required
    ├── RequestTimeout             408     request_timeout              (head/body too slow)
    ├── PayloadTooLarge            413     body_too_large
    ├── UnsupportedMediaType       415     unsupported_media_type       (the API takes JSON only)
    ├── RateLimited                429     upstream_rate_limited        (.retry_after)
    │   └── TooManyRequests (guard) 429    rate_limited, too_many_streams, too_many_failed_auth
    ├── ClientClosed               499     client_closed                (nobody is listening)
    ├── InternalError              500     internal_error               (details only in the log)
    └── UpstreamError              502     upstream_error, upstream_disconnected,
        │                                  answer_too_large             (a flood, cut)
        ├── UpstreamAuthError      502     upstream_auth                (server key refused)
        ├── UpstreamMalformed      502     upstream_malformed
        ├── UpstreamUnavailable    503     upstream_unavailable, local_model_busy
        └── UpstreamTimeout        504     first_token_timeout, idle_timeout, deadline_exceeded

Before a stream starts, an AppError becomes a status and a JSON body
`{"error": {"code", "message", "request_id"}}`; after it started, the same
code and message travel as the stream's final `error` event. `retryable`
marks the failures the retry loop may try again (before the first token only).
"""

from __future__ import annotations

import errno
from typing import Any

import orjson
from flask import Flask, Response, current_app, g, render_template, request
from flask_wtf.csrf import CSRFError, generate_csrf
from werkzeug.exceptions import HTTPException


class TruncatedStream(ConnectionResetError):
    """Raised to make the WSGI server drop the connection without the last chunk.

    gunicorn treats ECONNRESET as a client going away: it closes the socket
    quietly, without writing the terminating zero-length chunk.
    """

    def __init__(self, reason: str) -> None:
        super().__init__(errno.ECONNRESET, reason)


class ClientReadTimeout(ConnectionResetError):
    """The client did not send its request head and body within CLIENT_READ_TIMEOUT.

    Raised by the server's request reader (webapp.fastio); a ConnectionResetError,
    so gunicorn drops the connection quietly if the app does not answer first.
    """

    def __init__(self) -> None:
        super().__init__(errno.ECONNRESET, "client_read_timeout")


class AppError(Exception):
    status = 500
    code = "internal_error"
    retryable = False

    def __init__(
        self,
        message: str,
        *,
        code: str | None = None,
        retryable: bool | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code
        if retryable is not None:
            self.retryable = retryable
        self.retry_after = retry_after

    def to_dict(self) -> dict[str, Any]:
        body: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.retry_after is not None:
            body["retry_after"] = round(self.retry_after, 3)
        return body


class BadRequest(AppError):
    status = 400
    code = "invalid_request"


class PayloadTooLarge(AppError):
    status = 413
    code = "body_too_large"


class RequestTimeout(AppError):
    status = 408
    code = "request_timeout"


class UnsupportedMediaType(AppError):
    status = 415
    code = "unsupported_media_type"


class RateLimited(AppError):
    status = 429
    code = "upstream_rate_limited"
    retryable = True


class ClientClosed(AppError):
    """The client went away before the answer started; nobody reads the status."""

    status = 499
    code = "client_closed"


class InternalError(AppError):
    status = 500
    code = "internal_error"


class UpstreamError(AppError):
    status = 502
    code = "upstream_error"


class UpstreamAuthError(UpstreamError):
    code = "upstream_auth"


class UpstreamMalformed(UpstreamError):
    code = "upstream_malformed"


class UpstreamUnavailable(UpstreamError):
    status = 503
    code = "upstream_unavailable"
    retryable = True


class UpstreamTimeout(UpstreamError):
    status = 504
    code = "first_token_timeout"


def wants_json_response() -> bool:
    # The page's streaming route speaks JSON whatever the Accept header says.
    if request.blueprint != "ui" or request.endpoint == "ui.stream":
        return True
    accept = request.accept_mimetypes
    return accept["application/json"] > accept["text/html"]


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

    @app.errorhandler(CSRFError)
    def on_csrf_error(exc: CSRFError) -> Response | tuple[str, int]:
        err = BadRequest(
            "Your session expired or the page was open too long. A fresh token is in "
            "place: submit again.",
            code="csrf_invalid",
        )
        if wants_json_response():
            return error_response(err, csrf_token=generate_csrf())
        from webapp.ui import csrf_failed_page

        return csrf_failed_page(err.message), 400

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
