"""The one exception tree, and the one way to turn it into a response.

    AppError                       status  code
    ├── BadRequest                 400     invalid_json, invalid_request, unknown_fields,
    │                                      model_not_allowed, prompt_too_long,
    │                                      upstream_bad_request
    ├── Unauthorized               401     unauthorized, sign_in_required,
    │                                      metrics_token_required
    ├── Forbidden                  403     cross_site_request           (CSRF on /answers)
    ├── NotFound                   404     answer_not_found, conversation_not_found,
    │                                      history_off                  (or another owner's)
    ├── RequestTimeout             408     request_timeout              (head/body too slow)
    ├── Conflict                   409     not_continuable              (Continue on a whole answer)
    ├── PayloadTooLarge            413     body_too_large
    ├── UnsupportedMediaType       415     unsupported_media_type       (the API takes JSON only)
    ├── RateLimited                429     upstream_rate_limited        (.retry_after)
    │   └── TooManyRequests        429     rate_limited, too_many_streams, too_many_failed_auth
    ├── ClientClosed               499     client_closed                (nobody is listening)
    ├── InternalError              500     internal_error               (details only in the log)
    ├── HistoryUnavailable         503     history_unavailable          (the database failed)
    └── UpstreamError              502     upstream_error, upstream_disconnected,
        │                                  answer_too_large             (a flood, cut)
        ├── UpstreamAuthError      502     upstream_auth                (server key refused)
        ├── UpstreamMalformed      502     upstream_malformed
        ├── UpstreamUnavailable    503     upstream_unavailable, local_model_busy
        └── UpstreamTimeout        504     first_token_timeout, idle_timeout, deadline_exceeded

This module imports nothing of the app's, nor Flask: every layer may raise
these. `webapp/web/responses.py` turns them into responses.

Before a stream starts, an AppError becomes a status and a JSON body
`{"error": {"code", "message", "request_id"}}`; after it started, the same
code and message travel as the stream's final `error` event. `retryable`
marks the failures the retry loop may try again (before the first token only).
"""

from __future__ import annotations

import errno
from typing import Any


class TruncatedStream(ConnectionResetError):
    """Raised to make the WSGI server drop the connection without the last chunk.

    gunicorn treats ECONNRESET as a client going away: it closes the socket
    quietly, without writing the terminating zero-length chunk.
    """

    def __init__(self, reason: str) -> None:
        super().__init__(errno.ECONNRESET, reason)


class ClientTooSlow(TruncatedStream):
    """Thrown into a write the client has not drained by the total deadline:
    gunicorn drops the connection, and closing the answer closes the upstream."""


class ClientReadTimeout(ConnectionResetError):
    """The client did not send its request head and body within CLIENT_READ_TIMEOUT.

    Raised by the server's request reader (webapp.web.fastio); a ConnectionResetError,
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


class NotFound(AppError):
    """Nothing of this owner's at that id: another owner's answer is not found either."""

    status = 404
    code = "answer_not_found"


class Conflict(AppError):
    status = 409
    code = "not_continuable"


class RequestTimeout(AppError):
    status = 408
    code = "request_timeout"


class Unauthorized(AppError):
    status = 401
    code = "unauthorized"


class Forbidden(AppError):
    status = 403
    code = "forbidden"


class UnsupportedMediaType(AppError):
    status = 415
    code = "unsupported_media_type"


class RateLimited(AppError):
    status = 429
    code = "upstream_rate_limited"
    retryable = True


class TooManyRequests(RateLimited):
    """Over one of this server's own limits (not the upstream's): never retried."""

    code = "rate_limited"
    retryable = False


class ClientClosed(AppError):
    """The client went away before the answer started; nobody reads the status."""

    status = 499
    code = "client_closed"


class InternalError(AppError):
    status = 500
    code = "internal_error"


class HistoryUnavailable(AppError):
    """The history database failed (webapp/answers/store.py translates its errors to this)."""

    status = 503
    code = "history_unavailable"


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
