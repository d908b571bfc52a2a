"""Any OpenAI-compatible server, through the official SDK but read as raw SSE.

The SDK gives auth, base URL, request building and typed status errors;
`with_streaming_response` hands over the raw body, which is parsed here with
orjson. Building an SDK model object per chunk costs ~140 µs; this costs a
few. The SDK's own retries are off (`max_retries=0`): the relay owns the one
retry loop, so waits never multiply.
"""

from __future__ import annotations

import email.utils
import time
from collections.abc import Iterator
from typing import Any

import httpx2
import openai
import orjson

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
from webapp.providers.base import Final, GenerationRequest, Provider, ProviderInfo

_RETRYABLE_STATUS = frozenset({408, 409, 429}) | frozenset(range(500, 600))


class OpenAIProvider(Provider):
    name = "openai"

    def __init__(self, config: Config, http_client: httpx2.Client | None = None) -> None:
        self.config = config
        # The relay enforces the exact bounds; the socket read timeout is only a
        # backstop for reads the relay cannot interrupt (no gevent).
        read = max(config.first_token_timeout, config.idle_timeout) + 1.0
        timeout = httpx2.Timeout(read, connect=config.connect_timeout)
        if http_client is None:
            # One pooled client per process; streams are long, so allow many.
            http_client = openai.DefaultHttpx2Client(
                timeout=timeout,
                limits=httpx2.Limits(max_connections=4096, max_keepalive_connections=256),
            )
        self.client = openai.OpenAI(
            api_key=config.openai_api_key or "not-needed",
            base_url=config.openai_base_url or None,
            max_retries=0,
            timeout=timeout,
            http_client=http_client,
        )
        # OpenAI's own API wants max_completion_tokens; compatible servers
        # (vLLM, Ollama, llama.cpp) know max_tokens.
        self._max_tokens_param = "max_tokens" if config.openai_base_url else "max_completion_tokens"

    def info(self) -> ProviderInfo:
        return ProviderInfo(
            self.name,
            self.config.model,
            {"base_url": str(self.client.base_url), "models": list(self.config.models)},
        )

    def stream(self, request: GenerationRequest) -> Iterator[str | Final]:
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
            with self.client.chat.completions.with_streaming_response.create(**params) as response:
                yield from parse_sse(response.iter_bytes())
        except openai.APIStatusError as exc:
            raise status_error(exc.status_code, exc.response.headers, exc.message) from None
        except (openai.APITimeoutError, httpx2.TimeoutException):
            raise UpstreamTimeout(
                "The model server did not answer in time.", code="upstream_timeout", retryable=True
            ) from None
        except openai.APIConnectionError:
            raise UpstreamUnavailable(
                "The model server could not be reached.", code="upstream_unreachable"
            ) from None
        except httpx2.TransportError as exc:
            # After the stream started the SDK no longer wraps transport errors.
            raise UpstreamError(
                f"The model server broke off the stream ({type(exc).__name__}).",
                code="upstream_disconnected",
                retryable=True,
            ) from None

    def close(self) -> None:
        self.client.close()


def parse_sse(chunks: Iterator[bytes]) -> Iterator[str | Final]:
    """OpenAI's chat-completion SSE, as deltas joined per network read, then Final.

    Anything that is not a `data:` line (comments, keep-alives, `event:`) is
    skipped. A body that ends before `[DONE]` or a finish reason is a break,
    never a clean end.
    """
    pending = b""
    finish_reason: str | None = None
    usage: dict[str, int] | None = None
    done = False
    loads = orjson.loads
    for chunk in chunks:
        if pending:
            chunk = pending + chunk
        lines = chunk.split(b"\n")
        pending = lines.pop()
        texts: list[str] = []
        for line in lines:
            if not line.startswith(b"data:"):
                continue
            payload = line[5:].strip()
            if payload == b"[DONE]":
                done = True
                continue
            try:
                event = loads(payload)
                if "error" in event:
                    raise in_band_error(event["error"])
                choices = event.get("choices")
                if choices:
                    choice = choices[0]
                    content = choice["delta"].get("content")
                    if content:
                        texts.append(content)
                    if choice.get("finish_reason"):
                        finish_reason = choice["finish_reason"]
                if event.get("usage"):
                    usage = event["usage"]
            except AppError:
                raise
            except (ValueError, TypeError, AttributeError, KeyError, IndexError):
                raise UpstreamMalformed(
                    f"The model server sent a malformed event: {payload[:80]!r}"
                ) from None
        if texts:
            yield texts[0] if len(texts) == 1 else "".join(texts)
    if not (done or finish_reason):
        raise UpstreamError(
            "The model server ended the stream before it was complete.",
            code="upstream_disconnected",
            retryable=True,
        )
    if usage is not None:
        usage = {
            k: usage[k]
            for k in ("prompt_tokens", "completion_tokens", "total_tokens")
            if isinstance(usage.get(k), int)
        }
    yield Final(finish_reason, usage or None)


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
