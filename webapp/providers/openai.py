"""Any OpenAI-compatible server: the official SDK builds the request, `wire` carries it.

The SDK gives auth, base URL, headers and typed status errors; it builds the
request head once, at start-up. The body goes out and comes back through
`webapp.providers.wire` and is parsed with orjson, because this is the hot
path: iterating the SDK's stream builds model objects per token, several
times the CPU of a bare socket plus a chunk decoder, which is what `wire` is
(`make bench` compares the relay with a bare gevent relay, `bench/floor.py`).
The SDK's own retries are off: the relay owns the one retry loop.
"""

from __future__ import annotations

import email.utils
import logging
import math
import re
import time
import urllib.parse
from collections.abc import Callable, Iterable, Iterator
from typing import Any, NamedTuple

import gevent
import httpx2
import openai
import orjson
from gevent import monkey

from webapp.config import Config
from webapp.errors import (
    AppError,
    BadRequest,
    RateLimited,
    UpstreamAuthError,
    UpstreamError,
    UpstreamMalformed,
    UpstreamTimeout,
    UpstreamUnavailable,
)
from webapp.providers import wire
from webapp.providers.base import (
    Final,
    GenerationRequest,
    Provider,
    ProviderInfo,
    UpstreamStream,
)

log = logging.getLogger("webapp.upstream")

_RETRYABLE_STATUS = frozenset({408, 409, 429}) | frozenset(range(500, 600))
# The longest SSE line kept while waiting for its end: a real event is a few
# hundred bytes; one that never ends would otherwise fill the worker's memory.
MAX_LINE = 1024 * 1024
# A socket that always has bytes waiting never blocks, so gevent never
# switches: a stream lets the worker's other greenlets run before its next read
# after this many reads in a row, and after every read that brought no text
# (comments, empty deltas, part of a long line: nothing the relay must write).
YIELD_EVERY = 4
# Largest token count believed (beyond it floats lose integers, e.g. in Prometheus).
MAX_COUNT = 2**53
_USAGE_KEYS = ("prompt_tokens", "completion_tokens", "total_tokens")
# An upstream error's `code` or `type` may reach our client only if it looks like this.
_SAFE_ID = re.compile(r"[A-Za-z0-9_.-]{1,64}")
# What looks like a credential in upstream text (some servers echo the request head).
_CREDENTIAL = re.compile(
    r"(?i)(?:\b(?:proxy-)?authorization[\"']?\s*[:=]\s*[\"']?(?:(?:bearer|basic|token)\s+)?\S+"
    r"|\b(?:x-)?api[-_]?key[\"']?\s*[:=]\s*[\"']?\S+"
    r"|\bbearer\s+\S+"
    r"|sk-[A-Za-z0-9_-]{8,})"
)
REDACTED = "[redacted]"
# Never compress a stream: a gzip layer buffers and costs a decode per read.
_STREAM_HEADERS = {"Accept": "text/event-stream", "Accept-Encoding": "identity"}


class OpenAIProvider(Provider):
    name = "openai"

    def __init__(self, config: Config) -> None:
        self.config = config
        self.models = (config.model, *(m for m in config.models if m != config.model))
        self.client = openai.OpenAI(
            api_key=config.openai_api_key or "not-needed",
            base_url=config.openai_base_url or None,
            max_retries=0,
        )
        # OpenAI's own API wants max_completion_tokens; compatible servers
        # (vLLM, Ollama, llama.cpp) know max_tokens.
        self._max_tokens_param = "max_tokens" if config.openai_base_url else "max_completion_tokens"
        # The URL and headers (auth, user agent, ...) are built once: they do not
        # change per request (`python -m bench.ab` measures building them each time).
        self._url, headers = request_template(self.client)
        # Under gevent (always, in gunicorn) the relay's watchdog interrupts a
        # blocked read. Without it (the in-process test client, a REPL) nothing
        # can, so reads wake on their own twice a second and the relay checks its
        # bounds then.
        self._poll = None if monkey.is_module_patched("socket") else 0.5
        # The relay enforces the exact bounds; this timeout on the request head is
        # only a backstop for a server that takes a request and never answers.
        self._pool = wire.Pool(
            self._url,
            proxy=config.upstream_proxy,
            connect_timeout=config.connect_timeout,
            head_timeout=max(config.first_token_timeout, config.idle_timeout) + 1.0,
        )
        self._head = self._pool.request_head("POST", self._url, headers)

    def info(self) -> ProviderInfo:
        return ProviderInfo(
            self.name,
            self.config.model,
            {
                "base_url": _without_credentials(str(self.client.base_url)),
                "models": list(self.models),
            },
        )

    def open(self, request: GenerationRequest) -> UpstreamStream:
        params: dict[str, Any] = {
            "model": request.model,
            "messages": request.messages,
            "stream": True,
            "stream_options": {"include_usage": True},
            self._max_tokens_param: request.max_tokens,
        }
        if request.temperature is not None:
            params["temperature"] = request.temperature
        try:
            response = self._pool.send(self._head, orjson.dumps(params))
        except wire.WireError as exc:
            raise wire_error(exc, self._secrets, streaming=False) from None
        if response.status != 200:
            try:
                body = response.read_all()
            except wire.WireError:
                body = b""
            raise self._status_error(response, body)
        return SSEStream(response, self._poll, secrets=self._secrets)

    @property
    def _secrets(self) -> tuple[str, ...]:
        return (self.config.openai_api_key,) if self.config.openai_api_key else ()

    def _status_error(self, response: wire.Response, body: bytes) -> AppError:
        # The upstream's message and code go to the log (redacted), never to our client.
        detail, code, kind = error_details(self.client, response, body, self._url)
        return status_error(
            response.status,
            response.headers,
            detail,
            upstream_code=safe_identifier(code, kind),
            retry_after_max=self.config.retry_after_max,
            secrets=self._secrets,
        )

    def close(self) -> None:
        self._pool.clear()
        self.client.close()


def request_template(client: openai.OpenAI) -> tuple[str, dict[str, str]]:
    """The chat-completions URL and fixed headers. The SDK builds them (auth, user
    agent, its platform headers) through a private method; if a release drops it,
    they are built by hand, with a warning, rather than failing at start-up."""
    build = getattr(client, "_build_request", None)
    if build is not None:
        try:
            from openai._models import FinalRequestOptions

            template = build(
                FinalRequestOptions.construct(
                    method="post", url="/chat/completions", json_data={}, headers=_STREAM_HEADERS
                )
            )
            headers = {
                k: v
                for k, v in template.headers.items()
                if k.lower() not in ("content-length", "host", "connection")
            }
            return str(template.url), headers
        except (ImportError, AttributeError, TypeError) as exc:
            log.warning("openai %s: building the request by hand (%s)", openai.__version__, exc)
    else:
        log.warning(
            "openai %s has no _build_request: building the request by hand", openai.__version__
        )
    url = str(client.base_url).rstrip("/") + "/chat/completions"
    headers = {
        "Authorization": f"Bearer {client.api_key}",
        "Content-Type": "application/json",
        "User-Agent": f"streaming-codegen openai-python/{openai.__version__}",
        **_STREAM_HEADERS,
    }
    return url, headers


def error_details(
    client: openai.OpenAI, response: wire.Response, body: bytes, url: str
) -> tuple[str, Any, Any]:
    """(message, code, type) of an upstream error body, read as the SDK reads its
    own (a private method); by hand from OpenAI's JSON shape if it is gone."""
    make = getattr(client, "_make_status_error_from_response", None)
    if make is not None:
        sdk_error = make(
            httpx2.Response(
                response.status,
                headers=list(response.headers.items()),
                content=body,
                request=httpx2.Request("POST", url),
            )
        )
        raw = sdk_error.body
        detail = raw if isinstance(raw, str) and raw else sdk_error.message
        return detail, sdk_error.code, sdk_error.type
    try:
        error = orjson.loads(body).get("error")
    except (ValueError, AttributeError):
        error = None
    if isinstance(error, dict):
        return str(error.get("message", "")), error.get("code"), error.get("type")
    return body[:500].decode("utf-8", "replace"), None, None


class _Malformed(Exception):
    """An event that parses but is not what the API defines (a why, in our words)."""


class SSEDecoder:
    """OpenAI's chat-completion SSE, fed bytes as they arrive.

    `feed` returns the text of every complete event in what it was given,
    joined. Anything that is not a `data:` line (comments, keep-alives,
    `event:`) is skipped. An in-band error or a malformed event (bad JSON,
    wrong types, a line over MAX_LINE bytes) is kept in `failure`, to be
    raised after the text that came before it has gone out. A partial line
    waits in `_partial` (a list of pieces, joined once its end arrives).
    """

    __slots__ = (
        "_partial",
        "_partial_size",
        "done",
        "failure",
        "finish_reason",
        "secrets",
        "usage",
    )

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        self._partial: list[bytes] = []
        self._partial_size = 0
        self.finish_reason: str | None = None
        self.usage: dict[str, int] | None = None
        self.done = False
        self.failure: AppError | None = None
        self.secrets = tuple(secrets)

    def feed(self, chunk: bytes) -> str:
        if self.failure is not None:
            return ""
        texts: list[str] = []
        for line in self._complete_lines(chunk):
            if len(line) > MAX_LINE:
                self._too_long()
                break
            if not line.startswith(b"data:"):
                continue
            payload = line[5:].strip()
            if payload == b"[DONE]":
                self.done = True
                continue
            try:
                content = self._event(orjson.loads(payload))
            except (_Malformed, ValueError, TypeError, AttributeError, KeyError, IndexError) as exc:
                why = str(exc) if isinstance(exc, _Malformed) else "not valid JSON"
                self._malformed(why, payload)
                break
            if self.failure is not None:
                break
            if content:
                texts.append(content)
        if self._partial_size > MAX_LINE and self.failure is None:
            self._too_long()
        if not texts:
            return ""
        return texts[0] if len(texts) == 1 else "".join(texts)

    def _complete_lines(self, chunk: bytes) -> list[bytes]:
        """The lines `chunk` completes; the unfinished rest waits in `_partial`."""
        partial = self._partial
        if partial:
            # Only the new bytes are searched: a long line is never re-scanned.
            if chunk.find(b"\n") < 0:
                self._partial_size += len(chunk)
                if self._partial_size > MAX_LINE:
                    self._too_long()
                else:
                    partial.append(chunk)
                return []
            partial.append(chunk)
            chunk = b"".join(partial)
            partial.clear()
        if b"data:" not in chunk and len(chunk) <= MAX_LINE:
            # Only comments or keep-alives (or a flood of them): no line to look at.
            lines: list[bytes] = []
            tail = chunk[chunk.rfind(b"\n") + 1 :]
        else:
            lines = chunk.split(b"\n")
            tail = lines.pop()
        if tail:
            partial.append(tail)
        self._partial_size = len(tail)
        return lines

    def _event(self, event: Any) -> str | None:
        """The text of one decoded event, checked against the API's shape; records
        the finish reason, usage and an in-band error. Raises _Malformed."""
        if type(event) is not dict:
            raise _Malformed("an event that is not a JSON object")
        error = event.get("error")
        if error is not None:
            self.failure = in_band_error(error, self.secrets)
            return None
        usage = event.get("usage")
        if usage:
            # Counts feed metrics and prices: only plausible ones are kept,
            # the app counts the rest itself.
            self.usage = clean_usage(usage) or self.usage
        choices = event.get("choices")
        if not choices:
            if choices is not None and type(choices) is not list:
                raise _Malformed("choices is not a list")
            return None
        if type(choices) is not list:
            raise _Malformed("choices is not a list")
        choice = choices[0]
        if type(choice) is not dict:
            raise _Malformed("a choice is not an object")
        finish = choice.get("finish_reason")
        if finish is not None:
            if type(finish) is not str:
                raise _Malformed("finish_reason is not a string")
            if finish:
                self.finish_reason = finish
        delta = choice.get("delta")
        if delta is None:
            return None
        if type(delta) is not dict:
            raise _Malformed("delta is not an object")
        content = delta.get("content")
        if content is not None and type(content) is not str:
            raise _Malformed("content is not a string")
        return content

    def _malformed(self, why: str, payload: bytes) -> None:
        snippet = redact(payload[:2000].decode("utf-8", "replace"), self.secrets)
        log.warning("model server sent a malformed event (%s): %.200s", why, snippet)
        self.failure = UpstreamMalformed(f"The model server sent a malformed event ({why}).")

    def _too_long(self) -> None:
        self._partial.clear()  # its memory goes now, not when the stream is dropped
        log.warning("model server sent an event line over %d bytes", MAX_LINE)
        self.failure = UpstreamMalformed(
            f"The model server sent an event line over {MAX_LINE} bytes."
        )

    def final(self) -> Final:
        """The end of the body: a Final, or an error if it ended before `[DONE]`."""
        if not (self.done or self.finish_reason):
            raise UpstreamError(
                "The model server ended the stream before it was complete.",
                code="upstream_disconnected",
                retryable=True,
            )
        return Final(self.finish_reason, self.usage or None)


def clean_usage(usage: Any) -> dict[str, int] | None:
    """The token counts that are plain non-negative integers (not bool, not float)."""
    if type(usage) is not dict:
        return None
    kept = {}
    for key in _USAGE_KEYS:
        value = usage.get(key)
        if type(value) is int and 0 <= value <= MAX_COUNT:
            kept[key] = value
    return kept or None


def parse_sse(chunks: Iterator[bytes]) -> Iterator[str | Final]:
    """The decoder over a whole body: text per chunk, then Final (or the error)."""
    decoder = SSEDecoder()
    for chunk in chunks:
        text = decoder.feed(chunk)
        if text:
            yield text
        if decoder.failure is not None:
            raise decoder.failure
    yield decoder.final()


class SSEStream(UpstreamStream):
    """An open chat-completion response, read in place with a timeout."""

    __slots__ = ("_decoder", "_poll", "_response", "_unyielded")

    def __init__(
        self, response: wire.Response, poll: float | None = None, secrets: Iterable[str] = ()
    ) -> None:
        self._response = response
        self._decoder = SSEDecoder(secrets)
        self._poll = poll
        self._unyielded = 0  # reads since the last explicit yield

    def read(self, timeout: float | None) -> str | Final | None:
        if timeout is None:
            timeout = self._poll
        decoder = self._decoder
        if decoder.failure is not None:
            self.close()
            raise decoder.failure
        if decoder.done:
            return self._end()
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            if self._unyielded >= YIELD_EVERY:
                # Before a read, never with text in hand: if the relay's watchdog
                # interrupts this sleep, nothing is lost.
                self._unyielded = 0
                gevent.sleep(0)
            self._unyielded += 1
            try:
                data = self._response.read(timeout)
            except wire.WireError as exc:
                raise wire_error(exc, self._decoder.secrets, streaming=True) from None
            if data is None:
                return None
            if not data:
                return decoder.final()
            text = decoder.feed(data)
            if text:
                return text  # a failure or the end in the same read comes next call
            if decoder.failure is not None:
                self.close()
                raise decoder.failure
            if decoder.done:
                return self._end()
            self._unyielded = YIELD_EVERY  # nothing to write: let others run first
            if deadline is not None:
                # Only comments or empty deltas came: wait for the rest of the time.
                timeout = deadline - time.monotonic()
                if timeout <= 0:
                    return None

    def _end(self) -> Final:
        # [DONE] is the last event; a body that does not end right after it is
        # not worth waiting for (and its connection is not reused).
        if not self._response.done:
            self.close()
        return self._decoder.final()

    def close(self) -> None:
        self._response.close()


def _without_credentials(url: str) -> str:
    """Scheme, host, port and path only: user info, a query (`?api-key=...`) and a
    fragment may carry secrets, and this is shown on /healthz."""
    parts = urllib.parse.urlsplit(url)
    host = parts.hostname or ""
    if ":" in host:  # IPv6
        host = f"[{host}]"
    netloc = f"{host}:{parts.port}" if parts.port else host
    return urllib.parse.urlunsplit((parts.scheme, netloc, parts.path, "", ""))


# Each way the wire can fail before an answer starts, in our own words. Mid-stream,
# any of them means the same to the client: the stream broke off.
_OPENING_FAILURES: dict[type[wire.WireError], Callable[[], AppError]] = {
    wire.WireTimeout: lambda: UpstreamTimeout(
        "The model server did not answer in time.", code="upstream_timeout", retryable=True
    ),
    wire.ConnectFailed: lambda: UpstreamUnavailable(
        "The model server could not be reached.", code="upstream_unreachable"
    ),
    wire.ProtocolError: lambda: UpstreamUnavailable(
        "The model server could not be reached.", code="upstream_unreachable"
    ),
    wire.Broken: lambda: UpstreamError(
        "The model server closed the connection without answering.",
        code="upstream_disconnected",
        retryable=True,
    ),
}


def wire_error(exc: wire.WireError, secrets: Iterable[str], *, streaming: bool) -> AppError:
    """The one translation of the HTTP client's errors into the app's (retryable
    where trying again could help). The reason may quote upstream bytes: it goes
    to the log, redacted, never to the client."""
    log.warning(
        "model server %s: %.300s",
        "stream broke" if streaming else "unusable",
        redact(str(exc), secrets),
    )
    if streaming:
        return UpstreamError(
            "The model server broke off the stream.",
            code="upstream_disconnected",
            retryable=True,
        )
    for kind in type(exc).__mro__:
        if kind in _OPENING_FAILURES:
            return _OPENING_FAILURES[kind]()
    return _OPENING_FAILURES[wire.ConnectFailed]()


def redact(text: str, secrets: Iterable[str] = ()) -> str:
    """`text` with anything that looks like a credential replaced, for the log."""
    for secret in secrets:
        if len(secret) >= 4:  # a tiny "secret" would redact half the text
            text = text.replace(secret, REDACTED)
    return _CREDENTIAL.sub(REDACTED, text)


def safe_identifier(*candidates: Any) -> str | None:
    """The first candidate that is a short plain identifier (an upstream `code`
    or `type`, e.g. `model_not_found`), safe to show our client."""
    for candidate in candidates:
        if type(candidate) is int:
            candidate = str(candidate)
        if isinstance(candidate, str) and _SAFE_ID.fullmatch(candidate):
            return candidate
    return None


def in_band_error(error: Any, secrets: Iterable[str] = ()) -> UpstreamError:
    """An `error` event inside the stream: our own words, plus the upstream's code
    if it is a plain identifier; its message only goes to the log, redacted."""
    if isinstance(error, dict):
        message = error.get("message")
        ident = safe_identifier(error.get("code"), error.get("type"))
    else:
        message, ident = error, None
    log.warning(
        "model server reported an error in the stream (%s): %.500s",
        ident or "no code",
        redact(str(message), secrets),
    )
    suffix = f" ({ident})" if ident else ""
    return UpstreamError(f"The model server reported an error{suffix}.", code="upstream_error")


class Answered(NamedTuple):
    """An upstream's error status, as `status_error` names it."""

    status: int
    suffix: str  # " (model_not_found)": the upstream's code, if it is safe to name
    retryable: bool
    retry_after: float | None


def _key_rejected(answered: Answered) -> AppError:
    return UpstreamAuthError(
        "The model server rejected this server's API key; ask the operator to check "
        "OPENAI_API_KEY.",
    )


# The app's error for an upstream status; any other status is `_other_status`.
_STATUS_ERRORS: dict[int, Callable[[Answered], AppError]] = {
    400: lambda a: BadRequest(
        f"The model server refused the request{a.suffix}.", code="upstream_bad_request"
    ),
    401: _key_rejected,
    403: _key_rejected,
    429: lambda a: RateLimited(
        "The model server is rate limiting requests; try again shortly.",
        retry_after=a.retry_after,
        retryable=a.retryable,
    ),
    503: lambda a: UpstreamUnavailable(
        f"The model server is unavailable ({a.status}).",
        retry_after=a.retry_after,
        retryable=a.retryable,
    ),
}


def _other_status(answered: Answered) -> AppError:
    return UpstreamError(
        f"The model server answered {answered.status}{answered.suffix}.",
        code="upstream_error",
        retryable=answered.retryable,
        retry_after=answered.retry_after,
    )


def retry_policy(status: int, headers: Any, retry_after_max: float) -> tuple[bool, float | None]:
    """Whether an error status may be retried, and after how long the upstream asked
    (for 429 and 5xx). `x-should-retry` overrides the status; a Retry-After beyond
    `retry_after_max` is cut to it and makes the error final."""
    should_retry = headers.get("x-should-retry")
    retryable = (
        should_retry == "true" if should_retry in ("true", "false") else status in _RETRYABLE_STATUS
    )
    hint: float | None = None
    if status == 429 or status >= 500:
        hint = retry_after(headers)
        if hint is not None and hint > retry_after_max:
            # Longer than we would wait: stop now, and tell our client the most
            # we would have waited (not an hour, not infinity).
            hint, retryable = retry_after_max, False
    return retryable, hint


def status_error(
    status: int,
    headers: Any,
    detail: str = "",
    *,
    upstream_code: str | None = None,
    retry_after_max: float = 30.0,
    secrets: Iterable[str] = (),
) -> AppError:
    """Map an upstream HTTP status to the app's error, in our own words.

    The upstream's text (`detail`) is logged, redacted, and never sent on: a
    server may echo the request head, our key with it. Only `upstream_code`, if
    it is a plain identifier, is named. A Retry-After beyond `retry_after_max`
    is passed on as that maximum, and makes the error final (not retried).
    """
    ident = safe_identifier(upstream_code)
    if detail:
        log.warning(
            "model server answered %d (%s): %.500s",
            status,
            ident or "no code",
            redact(detail, secrets),
        )
    retryable, hint = retry_policy(status, headers, retry_after_max)
    answered = Answered(status, f" ({ident})" if ident else "", retryable, hint)
    return _STATUS_ERRORS.get(status, _other_status)(answered)


_SECONDS = re.compile(r"[0-9]+(?:\.[0-9]+)?")


def retry_after(headers: Any, now: float | None = None, limit: float | None = None) -> float | None:
    """Seconds to wait, from `retry-after-ms` or `retry-after` (seconds or HTTP date).

    Anything else (negative, `inf`, `nan`, `1e400`, garbage) counts as absent;
    with `limit`, longer waits are cut to it.
    """
    value = _retry_after(headers, time.time() if now is None else now)
    if value is not None and limit is not None:
        value = min(value, limit)
    return value


def _retry_after(headers: Any, now: float) -> float | None:
    raw_ms = (headers.get("retry-after-ms") or "").strip()
    if _SECONDS.fullmatch(raw_ms):
        value = float(raw_ms) / 1000
        if math.isfinite(value):
            return value
    raw = (headers.get("retry-after") or "").strip()
    if not raw:
        return None
    if _SECONDS.fullmatch(raw):
        value = float(raw)
        return value if math.isfinite(value) else None
    try:
        moment = email.utils.parsedate_to_datetime(raw).timestamp()
    except (TypeError, ValueError, OverflowError, IndexError):
        return None
    if not math.isfinite(moment):
        return None
    return max(0.0, moment - now)
