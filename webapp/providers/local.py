"""The embedded model: llama.cpp through llama-cpp-python, no key, no network.

Decoding is CPU-bound C code that releases the GIL, so each step runs in
gevent's native threadpool: the event loop keeps serving other requests
(health checks, other streams, the page) while a token is computed. One
`Llama` object serves one generation at a time; others wait in a bounded
queue, and that wait counts against their time-to-first-token bound because
the relay's clock starts before it.

The queue is fair across clients (`FairQueue`): the model goes to clients in
turn, and one client holds at most half of the places. A prompt is evaluated
in steps of `PROMPT_STEP` tokens, so one whose client left stops between two
steps instead of holding the model for the whole prompt.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, NoReturn

import gevent
from gevent import get_hub
from gevent.event import Event
from gevent.lock import Semaphore

from webapp.config import Config
from webapp.errors import UpstreamUnavailable
from webapp.providers.base import (
    Final,
    GenerationRequest,
    IteratorStream,
    Provider,
    ProviderInfo,
    UpstreamStream,
)
from webapp.providers.models import ModelFileError, model_file
from webapp.providers.runtime import RuntimeBroken, probe
from webapp.providers.seam import SeamStream

log = logging.getLogger("webapp.local")

# Tokens of a prompt evaluated in one native call: between two, an answer whose
# client left stops. llama.cpp's own batch (512) takes seconds on a small CPU;
# 128 costs about a tenth more than 512 on a long prompt, 64 a third.
PROMPT_STEP = 128


class Abandoned(Exception):
    """Raised in the evaluating thread: the answer it works for was stopped."""


class FairQueue:
    """Turns at the one model, for clients in turn.

    A first-in first-out queue (Ollama's) lets one client with many long prompts
    hold the model: everyone else's first token waits for all of them. Here each
    client waits in a line of its own, the model goes next to the client that
    waited longest for a turn (not to the one that just had it, while others
    wait), and one client may hold at most half of the `size` places (at least
    one), so it never fills the queue alone.
    """

    def __init__(self, size: int) -> None:
        self.size = size
        self.share = max(1, size // 2)
        self.waiting = 0
        # Each client's waiters; the dict's order is the order of turns (a client
        # served goes to the back).
        self._lines: dict[str, deque[Event]] = {}
        self._busy = False
        self._holder: str | None = None

    def acquire(self, client: str) -> None:
        """Wait for the model; raise `local_model_busy` if `client` has its share
        waiting already, or the queue is full. A greenlet killed while it waits
        leaves the queue at once."""
        if not self._busy:
            self._busy, self._holder = True, client
            return
        line = self._lines.get(client)
        if line is not None and len(line) >= self.share:
            raise UpstreamUnavailable(
                f"The local model is busy: you already have {len(line)} requests waiting "
                f"for it, your share of the queue. Try again once one has finished.",
                code="local_model_busy",
            )
        if self.waiting >= self.size:
            raise UpstreamUnavailable(
                "The local model is busy; try again shortly.", code="local_model_busy"
            )
        turn = Event()
        self._lines.setdefault(client, deque()).append(turn)
        self.waiting += 1
        try:
            turn.wait()
        except BaseException:
            if turn.is_set():  # handed the model as it was stopped: pass it on
                self.release()
            else:
                self._leave(client, turn)
            raise

    def release(self) -> None:
        """Hand the model to the next client in turn, or free it."""
        client = next((c for c in self._lines if c != self._holder), None)
        if client is None and self._holder in self._lines:
            client = self._holder  # nobody else waits
        if client is None:
            self._busy, self._holder = False, None
            return
        line = self._lines.pop(client)
        turn = line.popleft()
        if line:
            self._lines[client] = line  # to the back: the others go first
        self.waiting -= 1
        self._holder = client
        turn.set()

    def _leave(self, client: str, turn: Event) -> None:
        line = self._lines[client]
        line.remove(turn)
        if not line:
            del self._lines[client]
        self.waiting -= 1


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
        self._queue = FairQueue(config.local_queue_size)
        self._loading = Semaphore(1)
        self._generating = False
        # Set when the answer holding the model is stopped: its prompt's evaluation
        # ends at the next step (read in the evaluating thread).
        self._abandoned = False
        # For /healthz: they show that a cancelled answer, or its prompt, stopped.
        self.tokens_generated = 0
        self.tokens_evaluated = 0  # what the model read: prompts, then each new token

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
            "queue": self._queue.waiting,
            "tokens_generated": self.tokens_generated,
            "tokens_evaluated": self.tokens_evaluated,
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
        # Every evaluation, the prompt's included, in steps a stopped answer ends at.
        stepwise = functools.partial(self._evaluate_in_steps, llama.eval)
        llama.eval = stepwise  # type: ignore[method-assign]
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

    def _evaluate_in_steps(
        self, evaluate: Callable[[Sequence[int]], None], tokens: Sequence[int]
    ) -> None:
        for start in range(0, len(tokens), PROMPT_STEP):
            if self._abandoned:
                raise Abandoned
            step = tokens[start : start + PROMPT_STEP]
            evaluate(step)
            self.tokens_evaluated += len(step)

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
        self._queue.acquire(request.client)
        self._abandoned = False
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
                pending = pool.spawn(self._next, chunks)
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
            # A kill (Stop, a bound, the client gone) lands while a token is being
            # computed or the prompt evaluated: let that one step finish (a
            # prompt's evaluation ends at its next step), then close the generator
            # so llama.cpp stops, and only then hand the model to the next
            # request. A step still running after the wait does that itself when
            # it ends, so the model is never left locked.
            if pending is not None and not pending.ready():
                self._abandoned = True
                with contextlib.suppress(BaseException):
                    pending.get(timeout=30)
            if pending is not None and not pending.ready():
                pending.rawlink(lambda _: self._release(chunks))
            else:
                self._release(chunks)

    @staticmethod
    def _next(chunks: Iterator[Any]) -> Any:
        """In the threadpool: the next chunk, or None at the end or once the answer
        was stopped mid-prompt (its pump is gone: nobody needs a traceback)."""
        try:
            return next(chunks, None)
        except Abandoned:
            return None

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
            self._queue.release()
