"""The embedded model: llama.cpp through llama-cpp-python, no key, no network.

Decoding is CPU-bound C code that releases the GIL, so each step runs in
gevent's native threadpool: the event loop keeps serving other requests
(health checks, other streams, the page) while a token is computed. One
`Llama` object serves one generation at a time; others wait in a bounded
queue, and that wait counts against their time-to-first-token bound because
the relay's clock starts before it.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NoReturn

import gevent
from gevent import get_hub
from gevent.lock import Semaphore

from webapp.config import Config
from webapp.errors import UpstreamUnavailable
from webapp.models import ModelFileError, model_file
from webapp.providers.base import (
    Final,
    GenerationRequest,
    IteratorStream,
    Provider,
    ProviderInfo,
    UpstreamStream,
)
from webapp.runtime import RuntimeBroken, probe
from webapp.seam import SeamStream

log = logging.getLogger("webapp.local")


class LocalProvider(Provider):
    name = "local"
    continues_partial = True  # see _continuing; without a chat template, open() trims

    def __init__(self, config: Config) -> None:
        self.config = config
        self.model_name = (
            os.path.basename(config.local_model_path)
            if config.local_model_path
            else config.local_model
        )
        self.models = (self.model_name,)
        self._llama: Any = None
        self._load_error: str | None = None
        self._turn = Semaphore(1)
        self._loading = Semaphore(1)
        self._waiting = 0
        self._generating = False
        self.tokens_generated = 0  # for /healthz: shows that a cancelled answer stopped

    def info(self) -> ProviderInfo:
        if self._llama is not None:
            state = "loaded"
        elif self._loading.locked():
            state = "loading"
        else:
            state = "error" if self._load_error else "lazy"
        detail: dict[str, Any] = {
            "models": list(self.models),
            "model_state": state,
            "generating": self._generating,
            "queue": self._waiting,
            "tokens_generated": self.tokens_generated,
        }
        if self._load_error:
            detail["model_error"] = self._load_error
        return ProviderInfo(self.name, self.model_name, detail)

    def _load(self, path: Path) -> Any:
        from llama_cpp import Llama

        started = time.monotonic()
        llama = Llama(
            model_path=str(path),
            n_ctx=self.config.local_context,
            n_threads=self.config.local_threads or os.cpu_count() or 1,
            verbose=False,
        )
        log.info(
            "local model loaded",
            extra={
                "fields": {
                    "model": self.model_name,
                    "path": str(path),
                    "seconds": round(time.monotonic() - started, 2),
                }
            },
        )
        return llama

    def model(self) -> Any:
        """Load once per process, in a native thread so the loop keeps running.

        A request that arrives during the start-up load waits for that load
        instead of starting a second one (the weights would be read twice).
        """
        with self._loading:
            if self._llama is None:
                pool = get_hub().threadpool
                try:
                    path = pool.apply(model_file, (self.config,))
                    # In a child first: a runtime that crashes on this CPU must
                    # not take the worker down with it (and again on restart).
                    probe(self.config, path)
                    self._llama = pool.apply(self._load, (path,))
                except (ModelFileError, RuntimeBroken) as exc:
                    self._failed(str(exc), str(exc))
                except (ValueError, RuntimeError, OSError) as exc:
                    # llama.cpp's messages name the file: the log may, responses not.
                    self._failed(
                        "The local model file could not be loaded: it is not a GGUF model "
                        "this runtime reads. Check LOCAL_MODEL_PATH, or run `make run`.",
                        str(exc),
                    )
        return self._llama

    def _failed(self, public: str, detail: str) -> NoReturn:
        log.error("local model unusable: %s", detail)
        self._load_error = public
        raise UpstreamUnavailable(public, code="local_model_invalid") from None

    def warm_up(self) -> None:
        """Load (and verify) the model now, so the first request does not wait for it."""

        def load() -> None:
            with contextlib.suppress(UpstreamUnavailable):  # kept in _load_error for /healthz
                self.model()

        gevent.spawn(load)

    def count_tokens(self, text: str) -> int | None:
        if self._llama is None:
            return None
        return len(self._llama.tokenize(text.encode(), add_bos=False, special=False))

    def open(self, request: GenerationRequest) -> UpstreamStream:
        # Tokens take tens of milliseconds each here: a pump greenlet costs nothing.
        stream = IteratorStream(self.stream(request))
        if request.partial and self._llama is not None and not self._template(self._llama):
            # No template to continue the reply with: asked in words, the model may
            # restate, so what it repeats is dropped as for other upstreams.
            return SeamStream(stream, request.partial)
        return stream

    @staticmethod
    def _template(llama: Any) -> str | None:
        found: str | None = llama.metadata.get("tokenizer.chat_template")
        return found

    def stream(self, request: GenerationRequest) -> Iterator[str | Final]:
        if self._waiting >= self.config.local_queue_size:
            raise UpstreamUnavailable(
                "The local model is busy; try again shortly.", code="local_model_busy"
            )
        self._waiting += 1
        try:
            self._turn.acquire()
        finally:
            self._waiting -= 1
        pool = get_hub().threadpool
        pending = None
        chunks = None
        try:
            self._generating = True
            llama = self.model()
            kwargs: dict[str, Any] = {"max_tokens": request.max_tokens, "stream": True}
            if request.temperature is not None:
                kwargs["temperature"] = request.temperature
            kwargs["repeat_penalty"] = self.config.repeat_penalty
            chunks = self._continuing(llama, request, kwargs)
            if chunks is None:
                chunks = llama.create_chat_completion(request.messages, **kwargs)
            finish_reason = None
            produced = 0
            while True:
                pending = pool.spawn(next, chunks, None)
                chunk = pending.get()
                pending = None
                if chunk is None:
                    break
                choice = chunk["choices"][0]
                text = choice["delta"].get("content") if "delta" in choice else choice["text"]
                if text:
                    produced += 1
                    self.tokens_generated += 1
                    yield text
                if choice.get("finish_reason"):
                    finish_reason = choice["finish_reason"]
            prompt_tokens = sum(
                len(llama.tokenize(m["content"].encode(), add_bos=False)) for m in request.messages
            )
            yield Final(
                finish_reason,
                {
                    "prompt_tokens": prompt_tokens,
                    "completion_tokens": produced,
                    "total_tokens": prompt_tokens + produced,
                },
            )
        finally:
            # A kill (Stop, a bound) lands while a token is being computed:
            # let that one step finish, then close the generator so llama.cpp
            # stops, and only then hand the model to the next request. A step
            # still running after the wait (a huge prompt) does that itself when
            # it ends, so the model is never left locked.
            if pending is not None and not pending.ready():
                with contextlib.suppress(BaseException):
                    pending.get(timeout=30)
            if pending is not None and not pending.ready():
                pending.rawlink(lambda _: self._release(chunks))
            else:
                self._release(chunks)

    @staticmethod
    def _continuing(llama: Any, request: GenerationRequest, kwargs: dict[str, Any]) -> Any:
        """A continuation as the model's own next tokens: the chat so far through the
        GGUF's template, then the partial answer as the start of its reply, left
        open. Asked in words instead ("continue where you stopped"), small models
        restate the answer from the top. None when there is no partial answer or
        no template (the request's messages then ask in words)."""
        template = LocalProvider._template(llama)
        if request.partial is None or not template:
            return None
        from llama_cpp.llama_chat_format import Jinja2ChatFormatter

        eos, bos = llama.token_eos(), llama.token_bos()

        def text_of(token: int) -> str:
            return "" if token < 0 else llama.detokenize([token], special=True).decode()

        formatter = Jinja2ChatFormatter(template, eos_token=text_of(eos), bos_token=text_of(bos))
        # Without the two messages continuation() added: the partial answer and the plea.
        result = formatter(messages=request.messages[:-2])  # type: ignore[arg-type]
        prompt = llama.tokenize(
            result.prompt.encode(), add_bos=not result.added_special, special=True
        ) + llama.tokenize(request.partial.encode(), add_bos=False, special=False)
        return llama.create_completion(
            prompt, stop=result.stop, stopping_criteria=result.stopping_criteria, **kwargs
        )

    def _release(self, chunks: Any) -> None:
        try:
            if chunks is not None:
                chunks.close()
        except ValueError:  # still executing in its thread: nothing more to stop
            log.warning("local generation could not be closed cleanly")
        finally:
            self._generating = False
            self._turn.release()
