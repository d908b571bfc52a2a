"""Opening an answer's upstream: connect, retry, read up to the first text.

The relay hands a request to an `Opener`, which works in a greenlet of its own
so that the response side can keep its bounds and send keep-alives meanwhile.
Retries happen here and only here, and only while no text has arrived, so
nothing is ever sent twice. A resume (`RESUME_ON_FAILURE`) is a new opening of
a continuation request, without retries.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import gevent
from gevent.event import Event
from tenacity import RetryCallState, Retrying, retry_if_exception

from webapp.config import Config
from webapp.errors import AppError, ClientClosed, InternalError, UpstreamError, UpstreamTimeout
from webapp.providers import Final, GenerationRequest, Provider, UpstreamStream
from webapp.providers.seam import SeamStream
from webapp.relay.watchdog import DISCONNECT_CHECK

log = logging.getLogger("webapp.relay.generation")

CONTINUE_PROMPT = (
    "Your previous answer was cut off. Continue exactly where it stops, "
    "without repeating anything already written."
)
# The breaks a resume may mend: the upstream went away or went wrong mid-answer.
RESUMABLE = frozenset({"upstream_disconnected", "idle_timeout", "upstream_malformed"})


# -- retry policy: small pure functions, so tests can assert exact delays ------


def should_retry(exc: BaseException) -> bool:
    return isinstance(exc, AppError) and exc.retryable


def backoff(attempt: int, base: float, cap: float, rng: Callable[[], float]) -> float:
    """Full jitter: uniform in [0, min(cap, base * 2**(attempt-1))]."""
    return rng() * min(cap, base * 2.0 ** (attempt - 1))


@dataclass
class RetryPolicy:
    """How long to wait before each retry, and when to stop: attempts, the
    upstream's Retry-After (up to `retry_after_max`) and the first-token bound."""

    max_attempts: int
    base_delay: float
    max_delay: float
    retry_after_max: float
    rng: Callable[[], float] = random.random

    @classmethod
    def from_config(cls, config: Config) -> RetryPolicy:
        return cls(
            config.retry_max_attempts,
            config.retry_base_delay,
            config.retry_max_delay,
            config.retry_after_max,
        )

    def wait(self, state: RetryCallState) -> float:
        exc = state.outcome.exception() if state.outcome else None
        hinted: float | None = getattr(exc, "retry_after", None)
        if hinted is not None:
            return hinted
        return backoff(state.attempt_number, self.base_delay, self.max_delay, self.rng)

    def retrying(
        self,
        deadline: float,
        clock: Callable[[], float],
        sleep: Callable[[float], Any],
        may_retry: Callable[[BaseException], bool] = should_retry,
        before_sleep: Callable[[RetryCallState], None] | None = None,
    ) -> Retrying:
        """The one retry loop: this policy's waits, stopping before `deadline`."""
        return Retrying(
            retry=retry_if_exception(may_retry),
            wait=self.wait,
            stop=self.give_up(deadline, clock),
            sleep=sleep,
            before_sleep=before_sleep,
            reraise=True,
        )

    def give_up(
        self, deadline: float, clock: Callable[[], float]
    ) -> Callable[[RetryCallState], bool]:
        def stop(state: RetryCallState) -> bool:
            return (
                state.attempt_number >= self.max_attempts
                or state.upcoming_sleep > self.retry_after_max
                or clock() + state.upcoming_sleep >= deadline
            )

        return stop


# -- resuming ------------------------------------------------------------------


def continuation(request: GenerationRequest, partial: str, spent: int) -> GenerationRequest:
    """A request that asks the model to carry on from `partial` (`spent` tokens)."""
    messages = [
        *request.messages,
        {"role": "assistant", "content": partial},
        {"role": "user", "content": CONTINUE_PROMPT},
    ]
    return GenerationRequest(
        messages,
        request.model,
        max(1, request.max_tokens - spent),
        request.temperature,
        partial,
        request.client,
    )


# -- the opener ----------------------------------------------------------------


@dataclass(slots=True)
class Opening:
    """What one opening produced, set before `done` is: the stream and its first
    item, or the error that ended it."""

    done: Event
    stream: UpstreamStream | None = None
    first: str | Final | None = None
    error: AppError | None = None


class Opener:
    """Opens upstream streams for one answer, one at a time, each in a greenlet.

    `begin()` starts an opening; `opening.done` is set when it has a stream
    and its first item, or an error. `take()` hands the finished opening over;
    `stop()` kills one in progress and closes whatever it opened and nobody
    took. Failures are always AppErrors (anything else becomes InternalError,
    logged). `attempts` counts upstream requests made.
    """

    def __init__(
        self,
        provider: Provider,
        config: Config,
        *,
        request_id: str,
        clock: Callable[[], float],
        sleep: Callable[[float], Any],
        on_retry: Callable[[str], None],
    ) -> None:
        self.provider = provider
        self.config = config
        self.request_id = request_id
        self.clock = clock
        self.sleep = sleep
        self.on_retry = on_retry
        self.attempts = 0
        self.opening: Opening | None = None
        self._greenlet: gevent.Greenlet[Any, Any] | None = None

    @property
    def pending(self) -> bool:
        """An opening was begun and not taken (it may have finished)."""
        return self._greenlet is not None

    def begin(self, request: GenerationRequest, *, retry: bool, deadline: float) -> Opening:
        """Open `request`, retrying (if `retry`) until `deadline` at the latest."""
        opening = self.opening = Opening(Event())
        self._greenlet = gevent.spawn(self._open, request, retry, deadline, opening)
        return opening

    def wait(self, opening: Opening, until: float, client_gone: Callable[[], bool]) -> bool:
        """Wait for `opening` until `until` (on the clock): True if it finished.
        Looks at the client meanwhile, and raises ClientClosed once it has gone."""
        while not opening.done.is_set():
            remaining = until - self.clock()
            if remaining <= 0:
                return False
            if not opening.done.wait(min(remaining, DISCONNECT_CHECK)) and client_gone():
                raise ClientClosed("The client went away before the first token.")
        return True

    def take(self) -> Opening:
        opening = self.opening
        assert opening is not None and opening.done.is_set()
        self._greenlet = None
        return opening

    def stop(self, keep: UpstreamStream | None = None) -> None:
        """Kill an opening in progress; close a stream it opened unless it is `keep`."""
        greenlet, self._greenlet = self._greenlet, None
        # Dropped first: an opener that outlives the kill closes its own stream.
        opening, self.opening = self.opening, None
        if greenlet is not None and not greenlet.dead:
            greenlet.kill(block=True, timeout=1.0)
        if opening is not None and opening.stream not in (None, keep):
            opening.stream.close()

    def _open(
        self, request: GenerationRequest, retry: bool, deadline: float, opening: Opening
    ) -> None:
        # Results go to this opening's own record: an opener that outlived a
        # kill (a local model finishing its step) must not touch a newer one.
        try:
            try:
                self._attempt(request, opening)
            except AppError as exc:
                if not (retry and should_retry(exc)):
                    raise
                self._retry(request, exc, deadline, opening)
        except AppError as exc:
            opening.error = exc
        except gevent.GreenletExit:
            raise
        except Exception:
            log.exception("relay failed to open request_id=%s", self.request_id)
            opening.error = InternalError("Internal error while generating.")
        finally:
            opening.done.set()
            if self.opening is not opening and opening.stream is not None:
                opening.stream.close()  # nobody will read it

    def _retry(
        self, request: GenerationRequest, first: AppError, deadline: float, opening: Opening
    ) -> None:
        """The retry loop, built only once an attempt failed: most answers never
        need it (`python -m bench.ab` measures what building it always costs)."""
        retrying = RetryPolicy.from_config(self.config).retrying(
            deadline, self.clock, self.sleep, before_sleep=self._log_retry
        )
        failed: AppError | None = first
        for attempt in retrying:
            with attempt:
                if failed is not None:
                    # The first attempt's failure, replayed so that tenacity
                    # counts it and waits as it says (Retry-After included).
                    failure, failed = failed, None
                    raise failure
                self._attempt(request, opening)

    def _attempt(self, request: GenerationRequest, opening: Opening) -> None:
        self.attempts += 1
        stream = self.provider.open(request)
        if request.partial and not self.provider.continues_partial:
            stream = SeamStream(stream, request.partial)
        try:
            # Until the first text, a failure is still retryable: nothing was sent.
            # The relay's bounds stop this wait; the backstop is for a lost greenlet.
            item = stream.read(self.config.first_token_timeout + self.config.idle_timeout)
            if item is None:
                raise UpstreamTimeout(
                    "The model server stopped answering.", code="upstream_timeout"
                )
        except BaseException:
            stream.close()
            raise
        opening.stream, opening.first = stream, item

    def _log_retry(self, state: RetryCallState) -> None:
        exc = state.outcome.exception() if state.outcome else None
        reason = getattr(exc, "code", type(exc).__name__)
        self.on_retry(reason)
        log.warning(
            "upstream attempt %d failed request_id=%s reason=%s retry_in=%.3fs",
            state.attempt_number,
            self.request_id,
            reason,
            state.upcoming_sleep,
        )


def may_resume(exc: AppError, config: Config, resumes: int, elapsed: float) -> bool:
    """A break that a continuation request may mend, and the answer may still resume
    (`RESUME_ON_FAILURE`, `RESUME_MAX`, time left)."""
    return (
        config.resume_on_failure
        and resumes < config.resume_max
        and isinstance(exc, UpstreamError)
        and exc.code in RESUMABLE
        and elapsed < config.total_timeout
    )
