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
steps instead of holding the model for the whole prompt. Loading and holding
the model, and its steps, are `LocalModel`'s (local_model.py).
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections import deque
from collections.abc import Iterator
from typing import Any

import gevent
from gevent import get_hub
from gevent.event import Event

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
from webapp.providers.local_model import (
    Abandoned,
    LocalModel,
    PromptSteps,
    chat_template,
    continued_completion,
)
from webapp.providers.seam import SeamStream

log = logging.getLogger("webapp.local")


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
    """The embedded model as a provider: one generation at a time on the model this
    process holds (`LocalModel`), the others waiting their turn (`FairQueue`).

    Contract: `stream(request)` waits for a turn (or raises `local_model_busy`),
    loads the model if need be, and yields text, then one Final; closed or killed
    at any point, it stops llama.cpp and hands the model on. `info()` never waits.
    """

    name = "local"
    continues_partial = True  # see continued_completion; without a chat template, open() trims

    def __init__(self, config: Config) -> None:
        self._config = config
        self.model_name = (
            os.path.basename(config.local_model_path)
            if config.local_model_path
            else config.local_model
        )
        self.models = (self.model_name,)
        self._steps = PromptSteps()
        self._model = LocalModel(config, self.model_name, self._steps)
        self._queue = FairQueue(config.local_queue_size)
        self._generating = False
        # For /healthz: it shows that a cancelled answer stopped.
        self._tokens_generated = 0

    def info(self) -> ProviderInfo:
        detail: dict[str, Any] = {
            "models": list(self.models),
            "model_state": self._model.state(),
            "generating": self._generating,
            "queue": self._queue.waiting,
            "tokens_generated": self._tokens_generated,
            "tokens_evaluated": self._steps.evaluated,
        }
        if self._model.error:
            detail["model_error"] = self._model.error
        return ProviderInfo(self.name, self.model_name, detail)

    def warm_up(self) -> None:
        """Load (and verify) the model now, so the first request does not wait for it."""

        def load() -> None:
            with contextlib.suppress(UpstreamUnavailable):  # kept in its error for /healthz
                self._model.get()

        gevent.spawn(load)

    def count_tokens(self, text: str) -> int | None:
        llama = self._model.loaded
        if llama is None:
            return None
        return len(llama.tokenize(text.encode(), add_bos=False, special=False))

    def open(self, request: GenerationRequest) -> UpstreamStream:
        # Tokens take tens of milliseconds each here: a pump greenlet costs nothing.
        stream = IteratorStream(self.stream(request))
        llama = self._model.loaded
        if request.partial and llama is not None and not chat_template(llama):
            # No template to continue the reply with: asked in words, the model may
            # restate, so what it repeats is dropped as for other upstreams.
            return SeamStream(stream, request.partial)
        return stream

    def stream(self, request: GenerationRequest) -> Iterator[str | Final]:
        self._queue.acquire(request.client)
        self._steps.begin()
        pool = get_hub().threadpool
        pending = None
        chunks = None
        try:
            self._generating = True
            llama = self._model.get()
            kwargs: dict[str, Any] = {"max_tokens": request.max_tokens, "stream": True}
            if request.temperature is not None:
                kwargs["temperature"] = request.temperature
            kwargs["repeat_penalty"] = self._config.repeat_penalty
            chunks = continued_completion(llama, request, kwargs)
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
                    self._tokens_generated += 1
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
                self._steps.abandon()
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

    def _release(self, chunks: Any) -> None:
        try:
            if chunks is not None:
                chunks.close()
        except ValueError:  # still executing in its thread: nothing more to stop
            log.warning("local generation could not be closed cleanly")
        finally:
            self._generating = False
            self._queue.release()
