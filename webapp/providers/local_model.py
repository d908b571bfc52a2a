"""The embedded model held in this process (webapp/providers/local.py): loaded
once, in a native thread, after a child process proved the runtime can run it;
every evaluation in steps that a stopped answer ends at; a partial answer
continued as the model's own next tokens."""

from __future__ import annotations

import functools
import logging
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NoReturn

from gevent import get_hub
from gevent.lock import Semaphore

from webapp.config import Config
from webapp.errors import UpstreamUnavailable
from webapp.providers.base import GenerationRequest
from webapp.providers.models import ModelFileError, model_file
from webapp.providers.runtime import RuntimeBroken, probe

log = logging.getLogger("webapp.local")

# Tokens of a prompt evaluated in one native call: between two, an answer whose
# client left stops. llama.cpp's own batch (512) takes seconds on a small CPU;
# 128 costs about a tenth more than 512 on a long prompt, 64 a third.
PROMPT_STEP = 128


class Abandoned(Exception):
    """Raised in the evaluating thread: the answer it works for was stopped."""


class PromptSteps:
    """The model's evaluations (the prompt's, then each new token's) in steps of
    PROMPT_STEP tokens, so that an answer whose client left stops between two
    steps instead of holding the model for the whole prompt.

    Contract: `evaluate` wraps the model's own evaluation (at load); `begin()` as
    an answer takes the model; `abandon()`, from the event loop, makes the
    evaluating thread raise `Abandoned` at its next step. `evaluated` counts the
    tokens the model read (for /healthz: it shows that a stopped prompt stopped).
    """

    __slots__ = ("_abandoned", "_evaluated")

    def __init__(self) -> None:
        self._abandoned = False  # read in the evaluating thread
        self._evaluated = 0

    @property
    def evaluated(self) -> int:
        return self._evaluated

    def begin(self) -> None:
        self._abandoned = False

    def abandon(self) -> None:
        self._abandoned = True

    def evaluate(self, evaluate: Callable[[Sequence[int]], None], tokens: Sequence[int]) -> None:
        for start in range(0, len(tokens), PROMPT_STEP):
            if self._abandoned:
                raise Abandoned
            step = tokens[start : start + PROMPT_STEP]
            evaluate(step)
            self._evaluated += len(step)


class LocalModel:
    """The one llama.cpp model of this process.

    Contract: `get()` loads it once, in a native thread so the loop keeps running
    (a request that arrives during the load waits for that load instead of
    reading the weights a second time), and returns it; a model that cannot be
    used raises UpstreamUnavailable (`local_model_invalid`), whose message stays
    in `error` for /healthz. `loaded` is the model, or None, without waiting;
    `state()` is lazy, loading, loaded or error. Every evaluation of the model
    goes through `steps`.
    """

    __slots__ = ("_config", "_error", "_llama", "_loading", "_name", "_steps")

    def __init__(self, config: Config, name: str, steps: PromptSteps) -> None:
        self._config = config
        self._name = name
        self._steps = steps
        self._llama: Any = None
        self._error: str | None = None
        self._loading = Semaphore(1)

    @property
    def loaded(self) -> Any:
        return self._llama

    @property
    def error(self) -> str | None:
        return self._error

    def state(self) -> str:
        if self._llama is not None:
            return "loaded"
        if self._loading.locked():
            return "loading"
        return "error" if self._error else "lazy"

    def get(self) -> Any:
        with self._loading:
            if self._llama is None:
                pool = get_hub().threadpool
                try:
                    path = pool.apply(model_file, (self._config,))
                    # In a child first: a runtime that crashes on this CPU must
                    # not take the worker down with it (and again on restart).
                    probe(self._config, path)
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

    def _load(self, path: Path) -> Any:
        from llama_cpp import Llama

        started = time.monotonic()
        config = self._config
        llama = Llama(
            model_path=str(path),
            n_ctx=config.local_context,
            n_threads=config.local_threads or os.cpu_count() or 1,
            verbose=False,
        )
        # Every evaluation, the prompt's included, in steps a stopped answer ends at.
        stepwise = functools.partial(self._steps.evaluate, llama.eval)
        llama.eval = stepwise  # type: ignore[method-assign]
        log.info(
            "local model loaded",
            extra={
                "fields": {
                    "model": self._name,
                    "path": str(path),
                    "seconds": round(time.monotonic() - started, 2),
                }
            },
        )
        return llama

    def _failed(self, public: str, detail: str) -> NoReturn:
        log.error("local model unusable: %s", detail)
        self._error = public
        raise UpstreamUnavailable(public, code="local_model_invalid") from None


def chat_template(llama: Any) -> str | None:
    """The GGUF's chat template, if it has one."""
    found: str | None = llama.metadata.get("tokenizer.chat_template")
    return found


def continued_completion(llama: Any, request: GenerationRequest, kwargs: dict[str, Any]) -> Any:
    """A continuation as the model's own next tokens: the chat so far through the
    GGUF's template, then the partial answer as the start of its reply, left
    open. Asked in words instead ("continue where you stopped"), small models
    restate the answer from the top. None when there is no partial answer or
    no template (the request's messages then ask in words)."""
    template = chat_template(llama)
    if request.partial is None or not template:
        return None
    from llama_cpp.llama_chat_format import Jinja2ChatFormatter

    eos, bos = llama.token_eos(), llama.token_bos()

    def text_of(token: int) -> str:
        return "" if token < 0 else llama.detokenize([token], special=True).decode()

    formatter = Jinja2ChatFormatter(template, eos_token=text_of(eos), bos_token=text_of(bos))
    # Without the two messages the opener's continuation() added: the partial answer and the plea.
    result = formatter(messages=request.messages[:-2])  # type: ignore[arg-type]
    prompt = llama.tokenize(
        result.prompt.encode(), add_bos=not result.added_special, special=True
    ) + llama.tokenize(request.partial.encode(), add_bos=False, special=False)
    return llama.create_completion(
        prompt, stop=result.stop, stopping_criteria=result.stopping_criteria, **kwargs
    )
