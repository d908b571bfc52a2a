"""Any OpenAI-compatible server: the official SDK builds the request, urllib3 carries it.

The SDK gives auth, base URL, headers and typed status errors. The body is
read with urllib3 and parsed with orjson, because this is the hot path:
measured here at 50 tokens/s per stream, iterating the SDK's stream costs
~140 µs a token in model objects, httpx2's raw iterator ~80 µs a read, and
urllib3's chunked reader ~35 µs (a bare gevent socket: ~25 µs). The SDK's
own retries are off (`max_retries=0`): the relay owns the one retry loop.
"""

from __future__ import annotations

import email.utils
import time
import urllib.parse
from collections.abc import Iterator
from functools import partial
from typing import Any

import httpx2
import openai
import orjson
import urllib3
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
from webapp.providers.base import Final, GenerationRequest, Provider, ProviderInfo

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
        # The relay enforces the exact bounds; the socket read timeout is only a
        # backstop for reads the relay cannot interrupt (no gevent).
        self._timeout = urllib3.Timeout(
            connect=config.connect_timeout,
            read=max(config.first_token_timeout, config.idle_timeout) + 1.0,
        )
        # Keep-alive connections are reused (TLS set-up costs a round trip or two);
        # past `maxsize` extra connections are opened and closed, never waited for.
        self._pool: urllib3.PoolManager = (
            urllib3.ProxyManager(config.upstream_proxy, maxsize=256, block=False, retries=False)
            if config.upstream_proxy
            else urllib3.PoolManager(maxsize=256, block=False, retries=False)
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
        self._headers = {
            k: v for k, v in template.headers.items() if k.lower() not in ("content-length", "host")
        }

    def info(self) -> ProviderInfo:
        return ProviderInfo(
            self.name,
            self.config.model,
            {
                "base_url": _without_credentials(str(self.client.base_url)),
                "models": list(self.models),
            },
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
            response = self._pool.urlopen(
                "POST",
                self._url,
                body=orjson.dumps(params),
                headers=self._headers,
                preload_content=False,
                decode_content=False,
                redirect=False,
                timeout=self._timeout,
            )
        except urllib3.exceptions.NewConnectionError:
            # Checked first: urllib3 makes it a subclass of ConnectTimeoutError.
            raise UpstreamUnavailable(
                "The model server could not be reached.", code="upstream_unreachable"
            ) from None
        except urllib3.exceptions.TimeoutError:
            raise UpstreamTimeout(
                "The model server did not answer in time.", code="upstream_timeout", retryable=True
            ) from None
        except urllib3.exceptions.HTTPError:
            raise UpstreamUnavailable(
                "The model server could not be reached.", code="upstream_unreachable"
            ) from None
        complete = False
        try:
            if response.status != 200:
                body = response.read()
                complete = True
                raise self._status_error(response, body)
            chunks: Iterator[bytes] = (
                response.read_chunked(decode_content=False)
                if response.chunked
                else iter(partial(response.read1, 65536), b"")
            )
            yield from parse_sse(chunks)
            complete = True
        except urllib3.exceptions.ReadTimeoutError:
            raise UpstreamTimeout(
                "The model server stopped answering.", code="upstream_timeout", retryable=True
            ) from None
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            raise UpstreamError(
                f"The model server broke off the stream ({type(exc).__name__}).",
                code="upstream_disconnected",
                retryable=True,
            ) from None
        finally:
            if not complete:
                # Closing the socket is what tells the upstream to stop generating.
                response.close()
            response.release_conn()

    def _status_error(self, response: urllib3.BaseHTTPResponse, body: bytes) -> AppError:
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
        failure: AppError | None = None
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
                    failure = in_band_error(event["error"])
                    break
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
            except (ValueError, TypeError, AttributeError, KeyError, IndexError):
                failure = UpstreamMalformed(
                    f"The model server sent a malformed event: {payload[:80]!r}"
                )
                break
        if texts:
            yield texts[0] if len(texts) == 1 else "".join(texts)
        if failure is not None:
            # Raised after the text that came before it in the same read is out.
            raise failure
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
