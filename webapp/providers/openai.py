"""Any OpenAI-compatible server: the official SDK builds the request, `wire` carries it.

The SDK gives auth, base URL, headers and typed status errors; it builds the
request head once, at start-up. The body goes out and comes back through
`webapp.providers.wire` and is parsed with orjson, because this is the hot
path. Measured here at 50 tokens/s per stream, iterating the SDK's stream
costs ~140 µs a token in model objects, httpx2's raw iterator ~80 µs a read,
urllib3's chunked reader ~35 µs, and a bare gevent socket ~25 µs; `wire` is a
bare socket plus a chunk decoder. The SDK's own retries are off: the relay
owns the one retry loop.
"""

from __future__ import annotations

import email.utils
import time
import urllib.parse
from collections.abc import Iterator
from typing import Any

import httpx2
import openai
import orjson
from gevent import monkey
from openai._models import FinalRequestOptions

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

_RETRYABLE_STATUS = frozenset({408, 409, 429}) | frozenset(range(500, 600))
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
        # The SDK builds the URL and headers (auth, user agent, ...) once; they do
        # not change per request, and building them costs ~0.5 ms each time.
        template = self.client._build_request(
            FinalRequestOptions.construct(
                method="post", url="/chat/completions", json_data={}, headers=_STREAM_HEADERS
            )
        )
        self._url = str(template.url)
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
        self._head = self._pool.request_head(
            "POST",
            self._url,
            {
                k: v
                for k, v in template.headers.items()
                if k.lower() not in ("content-length", "host", "connection")
            },
        )

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
        except wire.WireTimeout:
            raise UpstreamTimeout(
                "The model server did not answer in time.", code="upstream_timeout", retryable=True
            ) from None
        except (wire.ConnectFailed, wire.ProtocolError):
            raise UpstreamUnavailable(
                "The model server could not be reached.", code="upstream_unreachable"
            ) from None
        except wire.Broken:
            raise UpstreamError(
                "The model server closed the connection without answering.",
                code="upstream_disconnected",
                retryable=True,
            ) from None
        if response.status != 200:
            try:
                body = response.read_all()
            except wire.WireError:
                body = b""
            raise self._status_error(response, body)
        return SSEStream(response, self._poll)

    def _status_error(self, response: wire.Response, body: bytes) -> AppError:
        # The SDK extracts the upstream's message the way it does for its own calls.
        sdk_error = self.client._make_status_error_from_response(
            httpx2.Response(
                response.status,
                headers=list(response.headers.items()),
                content=body,
                request=httpx2.Request("POST", self._url),
            )
        )
        return status_error(response.status, response.headers, sdk_error.message)

    def close(self) -> None:
        self._pool.clear()
        self.client.close()


class SSEDecoder:
    """OpenAI's chat-completion SSE, fed bytes as they arrive.

    `feed` returns the text of every complete event in what it was given,
    joined. Anything that is not a `data:` line (comments, keep-alives,
    `event:`) is skipped. An in-band error or a malformed event is kept in
    `failure`, to be raised after the text that came before it has gone out.
    """

    __slots__ = ("done", "failure", "finish_reason", "pending", "usage")

    def __init__(self) -> None:
        self.pending = b""
        self.finish_reason: str | None = None
        self.usage: dict[str, Any] | None = None
        self.done = False
        self.failure: AppError | None = None

    def feed(self, chunk: bytes) -> str:
        if self.pending:
            chunk = self.pending + chunk
        lines = chunk.split(b"\n")
        self.pending = lines.pop()
        texts: list[str] = []
        loads = orjson.loads
        for line in lines:
            if not line.startswith(b"data:"):
                continue
            payload = line[5:].strip()
            if payload == b"[DONE]":
                self.done = True
                continue
            try:
                event = loads(payload)
                if "error" in event:
                    self.failure = in_band_error(event["error"])
                    break
                choices = event.get("choices")
                if choices:
                    choice = choices[0]
                    content = choice["delta"].get("content")
                    if content:
                        texts.append(content)
                    if choice.get("finish_reason"):
                        self.finish_reason = choice["finish_reason"]
                if event.get("usage"):
                    self.usage = event["usage"]
            except (ValueError, TypeError, AttributeError, KeyError, IndexError):
                self.failure = UpstreamMalformed(
                    f"The model server sent a malformed event: {payload[:80]!r}"
                )
                break
        if not texts:
            return ""
        return texts[0] if len(texts) == 1 else "".join(texts)

    def final(self) -> Final:
        """The end of the body: a Final, or an error if it ended before `[DONE]`."""
        if not (self.done or self.finish_reason):
            raise UpstreamError(
                "The model server ended the stream before it was complete.",
                code="upstream_disconnected",
                retryable=True,
            )
        usage = self.usage
        if usage is not None:
            usage = {
                k: usage[k]
                for k in ("prompt_tokens", "completion_tokens", "total_tokens")
                if isinstance(usage.get(k), int)
            }
        return Final(self.finish_reason, usage or None)


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

    __slots__ = ("_decoder", "_poll", "_response")

    def __init__(self, response: wire.Response, poll: float | None = None) -> None:
        self._response = response
        self._decoder = SSEDecoder()
        self._poll = poll

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
            try:
                data = self._response.read(timeout)
            except wire.WireError as exc:
                raise UpstreamError(
                    f"The model server broke off the stream ({exc}).",
                    code="upstream_disconnected",
                    retryable=True,
                ) from None
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
    parts = urllib.parse.urlsplit(url)
    if parts.username is None and parts.password is None:
        return url
    host = parts.hostname or ""
    netloc = f"{host}:{parts.port}" if parts.port else host
    return urllib.parse.urlunsplit(parts._replace(netloc=netloc))


def in_band_error(error: Any) -> UpstreamError:
    message = error.get("message") if isinstance(error, dict) else str(error)
    return UpstreamError(f"The model server reported an error: {message}", code="upstream_error")


def status_error(status: int, headers: Any, message: str) -> AppError:
    """Map an upstream HTTP status to the app's error, never echoing secrets."""
    should_retry = headers.get("x-should-retry")
    retryable = (
        should_retry == "true" if should_retry in ("true", "false") else status in _RETRYABLE_STATUS
    )
    if status in (401, 403):
        return UpstreamAuthError(
            "The model server rejected this server's API key; ask the operator to check "
            "OPENAI_API_KEY.",
        )
    if status == 400:
        return BadRequest(
            f"The model server refused the request: {message}", code="upstream_bad_request"
        )
    if status == 429:
        return RateLimited(
            "The model server is rate limiting requests; try again shortly.",
            retry_after=retry_after(headers),
            retryable=retryable,
        )
    if status == 503:
        return UpstreamUnavailable(
            f"The model server is unavailable ({status}).",
            retry_after=retry_after(headers),
            retryable=retryable,
        )
    return UpstreamError(
        f"The model server answered {status}: {message}",
        code="upstream_error",
        retryable=retryable,
        retry_after=retry_after(headers) if status >= 500 else None,
    )


def retry_after(headers: Any, now: float | None = None) -> float | None:
    """Seconds to wait, from `retry-after-ms` or `retry-after` (seconds or HTTP date)."""
    raw_ms = headers.get("retry-after-ms")
    if raw_ms:
        try:
            return max(0.0, float(raw_ms) / 1000)
        except ValueError:
            pass
    raw = headers.get("retry-after")
    if not raw:
        return None
    try:
        return max(0.0, float(raw))
    except ValueError:
        pass
    try:
        moment = email.utils.parsedate_to_datetime(raw).timestamp()
    except (TypeError, ValueError):
        return None
    return max(0.0, moment - (time.time() if now is None else now))
