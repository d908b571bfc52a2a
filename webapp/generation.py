"""prompt -> provider -> events, with one retry loop, three bounds and cancellation.

A `Relay` is one answer in flight, in two phases:

- Opening: an opener greenlet connects, retries (tenacity, only before any
  text) and reads up to the first text, while the response side waits on an
  event with a timeout, so it can keep its bounds and send keep-alives.
- Streaming: the response greenlet reads the provider's stream itself and
  yields each read (everything that arrived, never waiting for more) as it
  comes: one wake-up per upstream read. No timer is set per read; a watchdog
  timer per answer interrupts the read only when something is due.

The bounds, on the relay's own clock:

- time to first token (queueing and retries included),
- idle time between upstream chunks (keep-alives from us never reset it),
- a total deadline.

When a bound fires, or the client goes away, the upstream response is
closed, so generation and billing stop. Retries happen only while no text
has arrived, so nothing is ever sent twice. With `RESUME_ON_FAILURE`, a
stream that breaks after text arrived is continued by a new request that
carries the partial answer.
"""

from __future__ import annotations

import logging
import random
import re
import socket
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import gevent
from gevent import get_hub
from gevent.event import Event
from tenacity import RetryCallState, Retrying, retry_if_exception

from webapp.config import Config
from webapp.errors import (
    AppError,
    BadRequest,
    ClientClosed,
    InternalError,
    TruncatedStream,
    UpstreamError,
    UpstreamTimeout,
)
from webapp.providers import Final, GenerationRequest, Provider, UpstreamStream
from webapp.providers.wire import readable_now
from webapp.schema import GenerateCodeRequest, parse_generate

log = logging.getLogger("webapp.relay")

CONTINUE_PROMPT = (
    "Your previous answer was cut off. Continue exactly where it stops, "
    "without repeating anything already written."
)


@dataclass(slots=True)
class _Opening:
    """What one opener greenlet produced: set before `done` is."""

    done: Event
    stream: UpstreamStream | None = None
    first: str | Final | None = None
    error: AppError | None = None


class ReadInterrupted(BaseException):
    """Thrown by the relay's watchdog into its own upstream read; never escapes it.

    A BaseException, like gevent's Timeout, so that no `except Exception` in a
    provider swallows it. Providers keep their state consistent at every
    blocking point, so an interrupted read loses nothing.
    """


class ClientTooSlow(TruncatedStream):
    """Thrown into a write the client has not drained by the total deadline:
    gunicorn drops the connection, and closing the answer closes the upstream."""


class Ping:
    """A keep-alive marker: formats write a comment or a ping line."""


PING = Ping()

# While no token flows, the relay looks at the client's socket this often, so a
# closed tab stops the upstream within a second even in a silent stretch.
DISCONNECT_CHECK = 0.5
# Characters allowed per requested token before an answer counts as a flood.
CHARS_PER_TOKEN_BOUND = 32
# Seconds a client gets to take the last event (done or error), past the
# total deadline if need be; a client that takes none is dropped then.
WRITE_GRACE = 5.0


@dataclass(slots=True)
class Done:
    finish_reason: str | None
    usage: dict[str, int]
    code_blocks: list[dict[str, str]]
    request_id: str
    timing: dict[str, float]
    cost_usd: float | None = None


@dataclass(slots=True)
class Failed:
    error: AppError


Event_ = str | Ping | Done | Failed


class RelayHooks:
    """What the app observes of an answer: start, each retry, the end. No-ops here;
    called once per answer or per retry, never per chunk."""

    def started(self, relay: Relay) -> None:
        pass

    def retried(self, relay: Relay, reason: str) -> None:
        pass

    def finished(self, relay: Relay) -> None:
        pass


# -- retry policy: small pure functions, so tests can assert exact delays ------


def should_retry(exc: BaseException) -> bool:
    return isinstance(exc, AppError) and exc.retryable


def backoff(attempt: int, base: float, cap: float, rng: Callable[[], float]) -> float:
    """Full jitter: uniform in [0, min(cap, base * 2**(attempt-1))]."""
    return rng() * min(cap, base * 2.0 ** (attempt - 1))


@dataclass
class RetryPolicy:
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


# -- prompting -----------------------------------------------------------------


def build_messages(prompt: str, language: str | None, system_prompt: str) -> list[dict[str, str]]:
    user = prompt if not language else f"Language: {language}.\n\n{prompt}"
    return [{"role": "system", "content": system_prompt}, {"role": "user", "content": user}]


# Groups: the language tag, the code, and the closing fence (None while the
# block is still open: it then runs to the end of the text).
FENCE = re.compile(r"^```[ \t]*([\w+#.-]*)[^\n]*\n(.*?)(?:^(```)[ \t]*$|\Z)", re.M | re.S)


def extract_code_blocks(text: str) -> list[dict[str, str]]:
    return [{"language": m.group(1), "code": m.group(2).rstrip("\n")} for m in FENCE.finditer(text)]


def explanation_of(text: str) -> str:
    return re.sub(r"\n{3,}", "\n\n", FENCE.sub("", text)).strip()


# -- the relay -----------------------------------------------------------------


@dataclass
class Relay:
    provider: Provider
    request: GenerationRequest
    config: Config
    request_id: str
    count_tokens: Callable[[str], int]
    prompt_tokens: int
    clock: Callable[[], float] = time.monotonic
    sleep: Callable[[float], Any] = gevent.sleep
    hooks: RelayHooks = field(default_factory=RelayHooks)
    client: str = ""
    # The client's socket, where the server exposes it (gunicorn does): lets a
    # silent wait notice the client going away, not only the next write.
    client_socket: Any = None
    # Run once when the answer ends, whatever the outcome (e.g. free a stream slot).
    cleanups: list[Callable[[], None]] = field(default_factory=list)

    started: float = field(init=False, default=0.0)
    first_token_at: float | None = field(init=False, default=None)
    attempts: int = field(init=False, default=0)
    resumes: int = field(init=False, default=0)
    outcome: str = field(init=False, default="pending")
    parts: list[str] = field(init=False, default_factory=list)
    usage: dict[str, int] | None = field(init=False, default=None)
    # 200 once the response started; the error's status if it failed before that.
    http_status: int = field(init=False, default=200)
    cost_usd: float | None = field(init=False, default=None)

    def __post_init__(self) -> None:
        self._stream: UpstreamStream | None = None
        self._opener: gevent.Greenlet[Any, Any] | None = None
        self._opening: _Opening | None = None
        self._final: Final | None = None
        self._last_upstream = 0.0
        self._ended = False
        self._closed = False
        # The watchdog's view of the response side (see events()).
        self._timer: Any = None
        self._timer_at = 0.0
        self._reading = False
        self._writing = False
        self._write_limit = 0.0
        self._read_since = 0.0
        self._last_sent = 0.0
        self._total_deadline = 0.0
        self._greenlet: Any = None

    # Opening: connect, retry, read up to the first text -------------------------

    def _begin(self, request: GenerationRequest, retry: bool) -> None:
        """Open `request` in a greenlet, so the response side can keep its bounds
        and send keep-alives while connections, retries and back-offs happen."""
        opening = self._opening = _Opening(Event())
        self._opener = gevent.spawn(self._open, request, retry, opening)

    def _open(self, request: GenerationRequest, retry: bool, opening: _Opening) -> None:
        # Results go to this opening's own record: an opener that outlived a
        # kill (a local model finishing its step) must not touch a newer one.
        try:
            try:
                self._attempt(request, opening)
            except AppError as exc:
                if not (retry and should_retry(exc)):
                    raise
                self._retry(request, exc, opening)
        except AppError as exc:
            opening.error = exc
        except gevent.GreenletExit:
            raise
        except Exception:
            log.exception("relay failed to open request_id=%s", self.request_id)
            opening.error = InternalError("Internal error while generating.")
        finally:
            opening.done.set()
            if self._opening is not opening and opening.stream is not None:
                opening.stream.close()  # nobody will read it

    def _retry(self, request: GenerationRequest, first: AppError, opening: _Opening) -> None:
        """The retry loop, built only once an attempt failed: most answers never
        need it, and setting tenacity up costs ~90 µs of each request."""
        retrying = RetryPolicy.from_config(self.config).retrying(
            self.started + self.config.first_token_timeout,
            self.clock,
            self.sleep,
            before_sleep=self._log_retry,
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

    def _attempt(self, request: GenerationRequest, opening: _Opening) -> None:
        self.attempts += 1
        stream = self.provider.open(request)
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

    def _may_resume(self, exc: AppError) -> bool:
        return (
            self.config.resume_on_failure
            and bool(self.parts)
            and self.resumes < self.config.resume_max
            and isinstance(exc, UpstreamError)
            and exc.code in ("upstream_disconnected", "idle_timeout", "upstream_malformed")
            and self.clock() < self.started + self.config.total_timeout
        )

    def _resume_or_fail(self, exc: AppError) -> Failed | None:
        """After a break: None if a continuation carries on, else the Failed to send."""
        if not self._may_resume(exc):
            return self._fail(exc)
        self.resumes += 1
        log.warning(
            "resuming stream request_id=%s after %s (%d chars kept)",
            self.request_id,
            exc.code,
            sum(map(len, self.parts)),
        )
        self._last_upstream = self.clock()
        self._begin(self._continuation(), retry=False)
        return None

    def _continuation(self) -> GenerationRequest:
        partial = self.text()
        messages = [
            *self.request.messages,
            {"role": "assistant", "content": partial},
            {"role": "user", "content": CONTINUE_PROMPT},
        ]
        spent = self.count_tokens(partial)
        return GenerationRequest(
            messages,
            self.request.model,
            max(1, self.request.max_tokens - spent),
            self.request.temperature,
        )

    def _log_retry(self, state: RetryCallState) -> None:
        exc = state.outcome.exception() if state.outcome else None
        self.hooks.retried(self, getattr(exc, "code", type(exc).__name__))
        log.warning(
            "upstream attempt %d failed request_id=%s reason=%s retry_in=%.3fs",
            state.attempt_number,
            self.request_id,
            getattr(exc, "code", type(exc).__name__),
            state.upcoming_sleep,
        )

    # The response side -----------------------------------------------------

    def start(self, commit_after: float | None) -> None:
        """Begin, and wait until the response can start.

        Returns at the first text, the end, or after `commit_after` seconds of
        silence (so a keep-alive can go out). Raises the AppError if the answer
        failed before any of those: the caller can still choose the status.
        """
        self.started = self.clock()
        self._last_upstream = self.started
        self.hooks.started(self)
        self._begin(self.request, retry=True)
        try:
            self._wait_for_start(commit_after)
        except BaseException as exc:
            # Failed, timed out, or the worker is shutting down: never leak the slot.
            self.http_status = exc.status if isinstance(exc, AppError) else 500
            self.close()
            raise

    def _wait_for_start(self, commit_after: float | None) -> None:
        commit_at = None if commit_after is None else self.started + commit_after
        limit = self.started + self.config.first_token_timeout
        if commit_at is not None:
            limit = min(limit, commit_at)
        opening = self._opening
        assert opening is not None
        while not opening.done.is_set():
            remaining = limit - self.clock()
            if remaining <= 0:
                if commit_at is not None and commit_at <= limit:
                    return
                self.outcome = "first_token_timeout"
                self._stop()
                raise self._first_token_timeout()
            if not opening.done.wait(min(remaining, DISCONNECT_CHECK)) and self._client_gone():
                raise ClientClosed("The client went away before the first token.")
        if opening.error is not None:
            self.outcome = opening.error.code
            raise opening.error

    def events(self) -> Iterator[Event_]:
        """Text (everything that arrived in one read), pings, then Done or Failed.

        While a stream is open, this greenlet reads it directly, with no timeout
        per read: a per-answer watchdog timer (below) interrupts a read only when
        the nearest of the idle bound, the total deadline, the next keep-alive
        and the next look at the client comes due. An interrupted read loses
        nothing, and no timer is set or cancelled per token.
        """
        cfg, clock, parts = self.config, self.clock, self.parts
        idle, heartbeat = cfg.idle_timeout, cfg.heartbeat_interval
        total_deadline = self._total_deadline = self.started + cfg.total_timeout
        # Counted from the request: a response started by commit_after owes its
        # first keep-alive now, not one interval later.
        self._last_sent = self.started
        self._greenlet = gevent.getcurrent()
        self._write_limit = total_deadline
        # Characters the answer may still take (see answer_bound): a flooding
        # upstream is cut here, and memory and the final count stay bounded.
        room = self.answer_bound() - sum(map(len, parts))
        item: str | Final | None
        try:
            while True:
                now = clock()
                stream = self._stream
                if self._opener is not None:
                    # Opening (the start, or a resume): wait for the opener.
                    opening = self._opening
                    assert opening is not None
                    if not opening.done.is_set():
                        limit = min(
                            self._upstream_bound(), total_deadline, self._last_sent + heartbeat
                        )
                        if now >= limit:
                            yield from self._when_due(now)
                            if self._ended:
                                return
                            continue
                        opened = opening.done.wait(min(limit - now, DISCONNECT_CHECK))
                        if not opened and self._client_gone():
                            return  # close() below stops the upstream
                        continue
                    self._opener = None
                    if opening.error is not None:
                        failure = self._resume_or_fail(opening.error)
                        if failure is None:
                            continue
                        self._guard_write(max(now, total_deadline) + WRITE_GRACE)
                        yield failure
                        return
                    self._stream, item = opening.stream, opening.first
                    self._last_upstream = now
                else:
                    assert stream is not None
                    limit = self._last_upstream + idle
                    if total_deadline < limit:
                        limit = total_deadline
                    ping_at = self._last_sent + heartbeat
                    if ping_at < limit:
                        limit = ping_at
                    if now >= limit:
                        yield from self._when_due(now)
                        if self._ended:
                            return
                        continue
                    self._read_since = now
                    wake_at = now + DISCONNECT_CHECK if now + DISCONNECT_CHECK < limit else limit
                    if self._timer is None or self._timer_at > wake_at:
                        self._arm(wake_at - now)
                    self._reading = True
                    broke: AppError | None = None
                    try:
                        item = stream.read(None)
                    except ReadInterrupted:
                        item = None
                    except AppError as exc:
                        item, broke = None, exc
                    finally:
                        self._reading = False
                    if broke is not None:
                        self._drop_stream()
                        failure = self._resume_or_fail(broke)
                        if failure is None:
                            continue
                        self._guard_write(max(now, total_deadline) + WRITE_GRACE)
                        yield failure
                        return
                    if item is None:
                        # The watchdog woke us: a bound or keep-alive is due (the
                        # top of the loop handles those), or it is time to look
                        # at the client.
                        if clock() < limit and self._client_gone():
                            return
                        continue
                    self._last_upstream = now = clock()
                if type(item) is str:
                    room -= len(item)
                    if room < 0:
                        # Past the size bound: send what fits, then say so.
                        item = item[: len(item) + room]
                    if item:
                        parts.append(item)
                        if self.first_token_at is None:
                            self.first_token_at = now
                        # The timer armed for the read covers this write (see _on_timer).
                        self._writing = True
                        yield item
                        self._writing = False
                        self._last_sent = now
                    if room < 0:
                        self._stop()
                        self._guard_write(max(now, total_deadline) + WRITE_GRACE)
                        yield self._fail(self._too_large())
                        return
                    continue
                assert isinstance(item, Final)
                self._final = item
                self._drop_stream()
                self.outcome = "ok"
                self._ended = True
                done = self._done()
                self._guard_write(max(now, total_deadline) + WRITE_GRACE)
                yield done
                return
        finally:
            self.close()

    # The watchdog: one timer per answer, re-armed only when it fires ------------

    def _arm(self, delay: float) -> None:
        if self._timer is not None:
            self._timer.stop()
        delay = max(delay, 0.001)
        timer = get_hub().loop.timer(delay)
        timer.start(self._on_timer)
        self._timer, self._timer_at = timer, self.clock() + delay

    def _guard_write(self, limit: float) -> None:
        """The next yield is a write the client must take by `limit`."""
        self._writing = True
        self._write_limit = limit
        if self._timer is None or self._timer_at > limit:
            self._arm(limit - self.clock())

    def _on_timer(self) -> None:
        """Runs in the hub. While reading: interrupts the upstream read if a
        bound, a keep-alive or a look at the client is due. While writing: drops
        a client that has not taken the write by its limit. Otherwise waits
        again until the next thing could be due."""
        self._timer = None
        if self._closed:
            return
        now = self.clock()
        if self._reading:
            due = min(
                self._last_upstream + self.config.idle_timeout,
                self._total_deadline,
                self._last_sent + self.config.heartbeat_interval,
                self._read_since + DISCONNECT_CHECK,
            )
            if now < due:
                self._arm(due - now)
            else:
                # As gevent's own Timeout does: raise inside the waiting greenlet.
                self._greenlet.throw(ReadInterrupted)
        elif self._writing:
            # Blocked in a write: the client is not reading. Without this, a
            # client that never reads would hold the answer (and the upstream, by
            # backpressure) for ever.
            if now < self._write_limit:
                self._arm(self._write_limit - now)
            else:
                self.outcome = "client_too_slow"
                self._greenlet.throw(ClientTooSlow("client_too_slow"))
        # Otherwise the response side waits for the opener, with its own timeouts.

    def _when_due(self, now: float) -> Iterator[Event_]:
        """The nearest of the bounds and the next keep-alive has come: yields a
        PING, or the failure (the answer has then ended), or nothing (a resume
        carries on)."""
        total_deadline = self._total_deadline
        if now >= total_deadline or now >= self._upstream_bound():
            failure = self._expired(now >= total_deadline)
            if failure is not None:
                self._guard_write(now + WRITE_GRACE)
                yield failure
            return
        self._guard_write(total_deadline)
        yield PING
        self._writing = False
        self._last_sent = self.clock()

    def _expired(self, total: bool) -> Failed | None:
        """A bound passed: the Failed to send, or None if a resume carries on."""
        cfg = self.config
        self._stop()
        if total:
            return self._fail(
                UpstreamTimeout(
                    f"The answer passed the {cfg.total_timeout:g} s deadline.",
                    code="deadline_exceeded",
                )
            )
        if not self.parts:
            return self._fail(self._first_token_timeout())
        return self._resume_or_fail(
            UpstreamTimeout(
                f"The model server went silent for {cfg.idle_timeout:g} s mid-answer.",
                code="idle_timeout",
            )
        )

    def answer_bound(self) -> int:
        """The most characters an answer may have: generous for `max_tokens` (real
        tokens average about 4), and never over MAX_ANSWER_CHARS."""
        return min(self.config.max_answer_chars, self.request.max_tokens * CHARS_PER_TOKEN_BOUND)

    def _too_large(self) -> UpstreamError:
        return UpstreamError(
            f"The model server sent more than {self.answer_bound():,} characters for "
            f"{self.request.max_tokens} tokens: the answer was cut there.",
            code="answer_too_large",
        )

    def _fail(self, error: AppError) -> Failed:
        self.outcome = error.code
        self._ended = True
        return Failed(error)

    def _client_gone(self) -> bool:
        """True once the client closed its side: readable, and a peek finds EOF."""
        if self.client_socket is None:
            return False
        try:
            return readable_now(self.client_socket) and (
                self.client_socket.recv(1, socket.MSG_PEEK) == b""
            )
        except (OSError, ValueError):
            return True

    def _upstream_bound(self) -> float:
        if not self.parts:
            return self.started + self.config.first_token_timeout
        return self._last_upstream + self.config.idle_timeout

    def _first_token_timeout(self) -> UpstreamTimeout:
        return UpstreamTimeout(
            f"No answer from the model within {self.config.first_token_timeout:g} s.",
            code="first_token_timeout",
        )

    def _drop_stream(self) -> None:
        stream, self._stream = self._stream, None
        if stream is not None:
            stream.close()

    def _stop(self) -> None:
        """End the upstream side, whatever it is doing: opening or streaming."""
        opener, self._opener = self._opener, None
        # Dropped first: an opener that outlives the kill closes its own stream.
        opening, self._opening = self._opening, None
        if opener is not None and not opener.dead:
            opener.kill(block=True, timeout=1.0)
        if opening is not None and opening.stream not in (None, self._stream):
            opening.stream.close()
        self._drop_stream()

    def _done(self) -> Done:
        final = self._final or Final()
        text = self.text()
        # After a resume the last Final covers only the last segment: count the whole.
        usage = dict(final.usage or {}) if not self.resumes else {}
        if "completion_tokens" not in usage:
            usage["completion_tokens"] = self.count_tokens(text)
        usage.setdefault("prompt_tokens", self.prompt_tokens)
        usage["total_tokens"] = usage["prompt_tokens"] + usage["completion_tokens"]
        price = self.config.prices.get(self.request.model)
        cost = None
        if price is not None:
            cost = round(
                (usage["prompt_tokens"] * price[0] + usage["completion_tokens"] * price[1]) / 1e6,
                8,
            )
        self.usage, self.cost_usd = usage, cost
        return Done(
            final.finish_reason,
            usage,
            extract_code_blocks(text),
            self.request_id,
            self.timing(),
            cost,
        )

    def timing(self) -> dict[str, float]:
        now = self.clock()
        ttft = None if self.first_token_at is None else self.first_token_at - self.started
        return {
            "ttft_ms": round(ttft * 1000, 1) if ttft is not None else -1.0,
            "duration_ms": round((now - self.started) * 1000, 1),
        }

    def text(self) -> str:
        return "".join(self.parts)

    def close(self) -> None:
        """Stop the upstream (if still running) and report once."""
        if self._closed:
            return
        self._closed = True
        if self._timer is not None:
            self._timer.stop()
            self._timer = None
        try:
            if not self._ended and self.outcome == "pending":
                self.outcome = "client_disconnected"
            self._stop()
            if self.usage is None and self.parts:
                # A failed or stopped answer still cost its tokens: count them once.
                self.usage = {
                    "prompt_tokens": self.prompt_tokens,
                    "completion_tokens": self.count_tokens(self.text()),
                }
        finally:
            for cleanup in self.cleanups:
                cleanup()
            self.hooks.finished(self)

    def collect(self) -> tuple[str, Done]:
        """Run to the end for non-streaming answers; raise the AppError on failure."""
        done: Done | None = None
        for event in self.events():
            if isinstance(event, Failed):
                raise event.error
            if isinstance(event, Done):
                done = event
        assert done is not None
        return self.text(), done


# -- the service the views call ---------------------------------------------------


class CodeGen:
    """Validated parameters -> a Relay, with the prompt limit checked first."""

    def __init__(
        self,
        config: Config,
        provider: Provider,
        count_tokens: Callable[[str], int],
        hooks: RelayHooks | None = None,
    ) -> None:
        self.config = config
        self.provider = provider
        self._count = count_tokens
        self.hooks = hooks or RelayHooks()
        self._system_tokens = self.count_tokens(config.system_prompt)

    def validate(self, body: Any) -> GenerateCodeRequest:
        """The request body checked against the schema, this provider's models and limits."""
        return parse_generate(body, self.provider.models, self.config.max_output_tokens)

    def count_tokens(self, text: str) -> int:
        own = self.provider.count_tokens(text)
        return own if own is not None else self._count(text)

    def relay(
        self,
        request_id: str,
        prompt: str,
        *,
        language: str | None = None,
        model: str | None = None,
        temperature: float | None = None,
        max_tokens: int | None = None,
        client: str = "",
    ) -> Relay:
        cfg = self.config
        prompt_tokens = self.count_tokens(prompt)
        if prompt_tokens > cfg.max_prompt_tokens:
            raise BadRequest(
                f"prompt: {prompt_tokens} tokens is over the limit of {cfg.max_prompt_tokens}.",
                code="prompt_too_long",
            )
        request = GenerationRequest(
            build_messages(prompt, language, cfg.system_prompt),
            model or self.provider.models[0],
            max_tokens or cfg.max_output_tokens,
            temperature,
        )
        return Relay(
            self.provider,
            request,
            cfg,
            request_id,
            self.count_tokens,
            prompt_tokens + self._system_tokens,
            hooks=self.hooks,
            client=client,
        )
