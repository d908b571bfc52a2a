"""prompt -> provider -> events: one answer in flight, within its bounds.

A `Relay` is one answer, in two phases:

- Opening: an `Opener` (webapp/relay/opener.py) connects, retries (only before any
  text) and reads up to the first text in a greenlet of its own, while the
  response side waits with a timeout, so it can keep its bounds and send
  keep-alives.
- Streaming: the response greenlet reads the provider's stream itself and
  yields each read (everything that arrived, never waiting for more): one
  wake-up per upstream read. No timer is set per read; a `Watchdog`
  (webapp/relay/watchdog.py) interrupts the read only when something is due, as
  `Deadlines` (webapp/relay/deadlines.py) says.

When a bound fires, the answer passes its size bound, or the client goes away,
the upstream response is closed, so generation and billing stop. With
`RESUME_ON_FAILURE`, a stream that breaks after text arrived is continued by
a new request that carries the partial answer.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Generator, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import gevent

from webapp.config import Config
from webapp.errors import AppError, BadRequest, UpstreamError, UpstreamTimeout
from webapp.providers import Final, GenerationRequest, Provider, UpstreamStream
from webapp.relay import accounting
from webapp.relay.attachments import ASK, Attachment, changes, fenced, with_files
from webapp.relay.codeblocks import extract_code_blocks
from webapp.relay.deadlines import FIRST_TOKEN, TOTAL, Deadlines
from webapp.relay.deadlines import PING as PING_DUE
from webapp.relay.events import PING, Done, Failed, RelayEvent
from webapp.relay.opener import Opener, continuation, may_resume
from webapp.relay.schema import GenerateCodeRequest, parse_generate
from webapp.relay.watchdog import DISCONNECT_CHECK, Watchdog
from webapp.sockets import peer_closed

log = logging.getLogger("webapp.relay.generation")

# Characters allowed per requested token before an answer counts as a flood.
CHARS_PER_TOKEN_BOUND = 32
# A resumable answer's starting client that takes none of a write for this long is
# let go: the answer is handed on, not held back for the others (webapp/answers/jobs.py).
WRITE_STALL = 2.0
# Seconds a client gets to take the last event (done or error), past the
# total deadline if need be; a client that takes none is dropped then.
WRITE_GRACE = 5.0


def cancelled() -> AppError:
    """The end of an answer stopped on purpose (a Stop, or nobody came back)."""
    return AppError("The answer was stopped.", code="cancelled")


class Keeper(Protocol):
    """A resumable answer's job (webapp/answers/jobs.py), as its starting response's relay
    tells it: once each, never per chunk."""

    def reading(self) -> None:
        """The response that started the answer begins to read it."""

    def left(self) -> None:
        """That response stopped reading: the answer ended, or its client left and
        the answer goes on (the relay is open: the keeper reads it on)."""


class RelayHooks:
    """What the app observes of an answer: start, each retry, the end. No-ops here;
    called once per answer or per retry, never per chunk."""

    def started(self, relay: Answer) -> None:
        pass

    def retried(self, relay: Answer, reason: str) -> None:
        pass

    def finished(self, relay: Answer) -> None:
        pass


Turn = tuple[str, str]  # an earlier (prompt, answer) of the same conversation


def build_messages(
    prompt: str,
    language: str | None,
    system_prompt: str,
    turns: list[Turn] | None = None,
    files: Sequence[Attachment] = (),
) -> list[dict[str, str]]:
    user = prompt if not language else f"Language: {language}.\n\n{prompt}"
    user = with_files(user, files)
    messages = [{"role": "system", "content": system_prompt}]
    for earlier, answer in turns or ():
        messages += [{"role": "user", "content": earlier}, {"role": "assistant", "content": answer}]
    messages.append({"role": "user", "content": user})
    return messages


def too_large(bound: int, max_tokens: int) -> UpstreamError:
    return UpstreamError(
        f"The model server sent more than {bound:,} characters for {max_tokens} tokens: "
        "the answer was cut there.",
        code="answer_too_large",
    )


def first_token_timeout(config: Config) -> UpstreamTimeout:
    return UpstreamTimeout(
        f"No answer from the model within {config.first_token_timeout:g} s.",
        code="first_token_timeout",
    )


def bound_passed(due: str, config: Config) -> UpstreamTimeout:
    """The error for a bound that came due (see webapp/relay/deadlines.py)."""
    if due == TOTAL:
        return UpstreamTimeout(
            f"The answer passed the {config.total_timeout:g} s deadline.",
            code="deadline_exceeded",
        )
    if due == FIRST_TOKEN:
        return first_token_timeout(config)
    return UpstreamTimeout(
        f"The model server went silent for {config.idle_timeout:g} s mid-answer.",
        code="idle_timeout",
    )


@dataclass
class Answer:
    """What one answer is and what it became: its request, the text sent, its
    outcome, usage and timing. `close()` ends it once, whatever happened: it
    stops the upstream (`_stop`, the Relay's), counts what was used, runs the
    cleanups and the `finished` hook. The flow that fills it is the Relay's.
    """

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
    # Files the request attached: the Done diffs the answer's versions of them.
    attachments: tuple[Attachment, ...] = ()
    # The client's socket, where the server exposes it (gunicorn does): lets a
    # silent wait notice the client going away, not only the next write.
    _client_socket: Any = None
    # Run once when the answer ends, whatever the outcome (e.g. free a stream slot).
    cleanups: list[Callable[[], None]] = field(default_factory=list)
    # A resumable answer's job: when its starting client goes away, the relay stops
    # yielding but stays open, for the keeper to read on (`move_to`).
    _keeper: Keeper | None = None
    # Called with each new text in `parts` while others than the reader wait for it
    # (a resumable answer's followers); None, the hot path's case, costs one test.
    _on_grew: Callable[[], None] | None = None

    started: float = field(init=False, default=0.0)
    first_token_at: float | None = field(init=False, default=None)
    resumes: int = field(init=False, default=0)
    outcome: str = field(init=False, default="pending")
    parts: list[str] = field(init=False, default_factory=list)
    usage: dict[str, int] | None = field(init=False, default=None)
    # 200 once the response started; the error's status if it failed before that.
    http_status: int = field(init=False, default=200)
    cost_usd: float | None = field(init=False, default=None)
    # Earlier turns of the conversation left out to fit MAX_PROMPT_TOKENS.
    trimmed_turns: int = field(init=False, default=0)
    # Stop asked (webapp/answers/jobs.py): the relay ends at its next look, within a second.
    stop_requested: bool = field(init=False, default=False)
    # The last event, once yielded (or decided): Done or Failed.
    end: Done | Failed | None = field(init=False, default=None)

    _final: Final | None = field(init=False, default=None, repr=False)
    _ended: bool = field(init=False, default=False, repr=False)
    _closed: bool = field(init=False, default=False, repr=False)

    def watch_client(self, client_socket: object) -> None:
        """Look at this client's socket in silent waits (None: there is none to look
        at, as for an answer whose end is not its client's to decide)."""
        self._client_socket = client_socket

    def keep_with(self, keeper: Keeper | None, client_socket: object = None) -> None:
        """A resumable answer's job keeps it (None: no longer): when its starting
        client goes away the relay stays open for the keeper to read on."""
        self._keeper = keeper
        self._client_socket = client_socket

    def report_growth(self, on_grew: Callable[[], None] | None) -> None:
        """Call `on_grew` with each new text while others than the reader wait for it
        (None, the hot path's case, costs one test per text)."""
        self._on_grew = on_grew

    def end_as(self, outcome: str) -> None:
        """Why it ends when stopped from outside (a Stop, an abandoned grace): the
        outcome it is recorded with."""
        self.outcome = outcome

    @property
    def attempts(self) -> int:
        """Upstream requests made (the Relay's opener counts them)."""
        return 0

    def events(self) -> Generator[RelayEvent, None, None]:
        """Text, keep-alives, then one Done or Failed (the Relay's)."""
        raise NotImplementedError

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

    def _stop(self) -> None:
        """End the upstream side (the Relay's)."""

    def _ending(self) -> None:
        """Stop timers before the end is recorded (the Relay's)."""

    def answer_bound(self) -> int:
        """The most characters an answer may have: generous for `max_tokens` (real
        tokens average about 4), and never over MAX_ANSWER_CHARS."""
        return min(self.config.max_answer_chars, self.request.max_tokens * CHARS_PER_TOKEN_BOUND)

    def _fail(self, error: AppError) -> Failed:
        self.outcome = error.code
        self._ended = True
        self.end = Failed(error)
        return self.end

    def _client_too_slow(self) -> None:
        self.outcome = "client_too_slow"

    def _client_gone(self) -> bool:
        return self._client_socket is not None and peer_closed(self._client_socket)

    def _leaving(self) -> bool:
        """At a look at the client: True to stop reading now (a Stop, or the client
        left; a relay with a keeper stays open then, for the keeper)."""
        return self.stop_requested or self._client_gone()

    def _done(self) -> Done:
        final = self._final or Final()
        text = self.text()
        # After a resume the last Final covers only the last segment: count the whole.
        usage = accounting.usage_of(
            final.usage,
            text,
            prompt_tokens=self.prompt_tokens,
            count_tokens=self.count_tokens,
            whole=not self.resumes,
        )
        cost = accounting.cost_of(usage, self.config.prices.get(self.request.model))
        self.usage, self.cost_usd = usage, cost
        blocks = extract_code_blocks(text)
        files = changes(text, blocks, self.attachments) if self.attachments else []
        return Done(final.finish_reason, usage, blocks, self.request_id, self.timing(), cost, files)

    def timing(self) -> dict[str, float]:
        now = self.clock()
        ttft = None if self.first_token_at is None else self.first_token_at - self.started
        return {
            "ttft_ms": round(ttft * 1000, 1) if ttft is not None else -1.0,
            "duration_ms": round((now - self.started) * 1000, 1),
        }

    def text(self) -> str:
        return "".join(self.parts)

    @property
    def final(self) -> Final | None:
        """How the upstream ended the answer (finish reason, usage), once it has."""
        return self._final

    def close(self) -> None:
        """Stop the upstream (if still running) and report once."""
        if self._closed:
            return
        self._closed = True
        self._ending()
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
            # Each runs whatever another did: a failed one must not keep the answer
            # from being recorded, or its job from ending.
            for cleanup in self.cleanups:
                try:
                    cleanup()
                except Exception:
                    log.exception("answer cleanup failed request_id=%s", self.request_id)
            self.hooks.finished(self)

    @property
    def closed(self) -> bool:
        """Closed, or closing (its cleanups running): nothing can stop it any more."""
        return self._closed


@dataclass
class Relay(Answer):
    """One answer in flight: `start()`, then iterate `events()` (or `collect()`).

    `start` returns once the response can begin (first text, the end, or
    `commit_after` seconds of silence), or raises the AppError that ended the
    answer before that, so the caller can still pick the status. `events()`
    yields text, keep-alives, then one Done or Failed, and always closes the
    upstream. Every text is yielded exactly once, and the answer ends within
    its bounds (webapp/relay/deadlines.py) and its size bound (`answer_bound`).
    """

    def __post_init__(self) -> None:
        self._opener = Opener(
            self.provider,
            self.config,
            request_id=self.request_id,
            clock=self.clock,
            sleep=self.sleep,
            on_retry=lambda reason: self.hooks.retried(self, reason),
        )
        self._deadlines = Deadlines.of(0.0, self.config)
        self._watchdog: Watchdog | None = None
        self._stream: UpstreamStream | None = None
        self._first: str | Final | None = None  # an opening's first item, not yet passed on

    @property
    def attempts(self) -> int:
        return self._opener.attempts

    # Starting -------------------------------------------------------------------

    def start(self, commit_after: float | None) -> None:
        """Begin, and wait until the response can start (see the class docstring)."""
        self.started = self.clock()
        cfg = self.config
        self._deadlines = Deadlines.of(self.started, self.config)
        self.hooks.started(self)
        opening = self._opener.begin(
            self.request, retry=True, deadline=self.started + cfg.first_token_timeout
        )
        try:
            bound = self._deadlines.upstream_at()
            commit = commit_after is not None and self.started + commit_after <= bound
            until = self.started + commit_after if commit_after is not None and commit else bound
            if not self._opener.wait(opening, until, self._client_gone):
                if commit:
                    return  # the response starts now, with a keep-alive
                self.outcome = "first_token_timeout"
                self._stop()
                raise first_token_timeout(self.config)
            if opening.error is not None:
                self.outcome = opening.error.code
                raise opening.error
        except BaseException as exc:
            # Failed, timed out, or the worker is shutting down: never leak the slot.
            self.http_status = exc.status if isinstance(exc, AppError) else 500
            self.close()
            raise

    # The response side -----------------------------------------------------------

    def request_stop(self) -> None:
        """Stop from another greenlet: the reader ends the answer at its next look,
        within a second (its watchdog interrupts the read it is in)."""
        self.stop_requested = True
        if self._watchdog is not None:
            self._watchdog.hurry()

    def move_to(self, greenlet: Any) -> None:
        """`greenlet` reads on from here (`events()` again), with no client to look at
        and no keeper to hand it to: the one that read it so far stopped reading,
        its client gone, and `left()` the relay open."""
        self._client_socket = None
        self._keeper = None
        if self._watchdog is not None:
            self._watchdog.greenlet = greenlet
            self._watchdog.writing = 0.0  # the write it covered is no more
            self._watchdog.stall_limit = 0.0

    def events(self) -> Generator[RelayEvent, None, None]:
        """Text (everything that arrived in one read), pings, then Done or Failed.

        With a keeper (a resumable answer's starting response), a client that goes
        away (its socket closes, or the server stops iterating) leaves the relay
        open, not closed: the keeper reads on with `events()` again, from where it
        stopped. Stopped on purpose (`request_stop`), it ends with Failed(cancelled).
        """
        if self._closed:  # stopped before anyone read it: its end only
            yield self.end or Failed(cancelled())
            return
        keeper = self._keeper
        if keeper is not None:
            keeper.reading()
        watchdog = self._watchdog
        if watchdog is None:
            watchdog = self._watchdog = Watchdog(
                self.clock, self._deadlines, gevent.getcurrent(), self._client_too_slow
            )
            if keeper is not None:
                watchdog.stall_limit = WRITE_STALL
        # Characters the answer may still take: a flooding upstream is cut here,
        # and memory and the final count stay bounded.
        room: int | None = self.answer_bound() - sum(map(len, self.parts))
        kept_open = False  # left for the keeper: its client went, the answer goes on
        try:
            while room is not None and not self._ended:
                if self._opener.pending:
                    room = yield from self._await_opening(room)
                else:
                    room = yield from self._relay_stream(room)
            if self.stop_requested and not self._ended:
                self._ended = True
                if self.outcome == "pending":  # the stopper sets why; else it was a Stop
                    self.outcome = "cancelled"
                self.end = Failed(cancelled())
                watchdog.guard_write(self.clock() + DISCONNECT_CHECK)
                yield self.end
            kept_open = not self._ended
        except GeneratorExit:  # the server stopped iterating: its client is gone
            kept_open = not (self._ended or self.stop_requested)
            raise
        finally:
            try:
                if keeper is None or not kept_open:
                    self.close()
            finally:
                if keeper is not None:
                    keeper.left()

    def _await_opening(self, room: int) -> Generator[RelayEvent, None, int | None]:
        """Wait for the opener, keeping bounds and keep-alives. Returns `room`, or
        None once the client has gone."""
        opening = self._opener.opening
        assert opening is not None
        clock, deadlines = self.clock, self._deadlines
        while not opening.done.is_set():
            now = clock()
            limit = deadlines.next_at()
            if now >= limit:
                if self.stop_requested:
                    return None  # a Stop outranks a bound that fell due meanwhile
                yield from self._when_due(now)
                return room
            if not opening.done.wait(min(limit - now, DISCONNECT_CHECK)) and self._leaving():
                return None  # close() stops the upstream
        self._opener.take()
        if opening.error is not None:
            yield from self._break(opening.error)
        else:
            self._stream, self._first = opening.stream, opening.first
            deadlines.last_upstream = clock()
        return room

    def _relay_stream(self, room: int) -> Generator[RelayEvent, None, int | None]:
        """The hot path: read the open stream and pass its text on, until it ends,
        breaks, passes the size bound or something falls due. Returns what is left
        of `room`, or None once the client has gone."""
        clock, parts, deadlines = self.clock, self.parts, self._deadlines
        watchdog = self._watchdog
        assert watchdog is not None
        item, self._first = self._first, None
        while True:
            now = clock()
            if item is None:
                limit = deadlines.next_at()
                if now >= limit:
                    if self.stop_requested:
                        return None  # a Stop outranks a bound that fell due meanwhile
                    yield from self._when_due(now)
                    return room
                try:
                    assert self._stream is not None
                    item = watchdog.read(self._stream, now, limit)
                except AppError as exc:
                    self._drop_stream()
                    yield from self._break(exc)
                    return room
                if item is None:
                    # The watchdog woke us: something is due (the top of the loop
                    # sees to it), or it is time to look at the client.
                    if clock() < limit and self._leaving():
                        return None
                    continue
                deadlines.last_upstream = now = clock()
            if type(item) is not str:
                assert isinstance(item, Final)
                yield self._finish(item, now)
                return room
            room -= len(item)
            if room < 0:
                item = item[: len(item) + room]  # past the size bound: send what fits
            if item:
                parts.append(item)
                if self._on_grew is not None:
                    self._on_grew()
                if self.first_token_at is None:
                    self.first_token_at = now
                    deadlines.got_text = True
                # The timer armed for the read covers this write (see Watchdog).
                watchdog.writing = now
                yield item
                watchdog.writing = 0.0
                deadlines.last_sent = now
            else:
                # A continuation's restatement, held back (webapp/providers/seam.py): the
                # upstream has answered, so the idle bound applies from here.
                deadlines.got_text = True
            if room < 0:
                self._stop()
                watchdog.guard_write(max(now, deadlines.total_at) + WRITE_GRACE)
                yield self._fail(too_large(self.answer_bound(), self.request.max_tokens))
                return room
            item = None

    def _finish(self, final: Final, now: float) -> Done:
        self._final = final
        self._drop_stream()
        self.outcome = "ok"
        self._ended = True
        done = self.end = self._done()
        assert self._watchdog is not None
        self._watchdog.guard_write(max(now, self._deadlines.total_at) + WRITE_GRACE)
        return done

    def _when_due(self, now: float) -> Iterator[RelayEvent]:
        """Something came due: a keep-alive (PING), or a bound (the failure, or a
        resume that carries on)."""
        deadlines, watchdog = self._deadlines, self._watchdog
        assert watchdog is not None
        due = deadlines.due(now)
        if due == PING_DUE:
            watchdog.guard_write(deadlines.total_at)
            yield PING
            watchdog.writing = 0.0
            deadlines.last_sent = self.clock()
        elif due is not None:
            self._stop()
            yield from self._break(bound_passed(due, self.config), grace_from=now)

    def _break(self, error: AppError, grace_from: float | None = None) -> Iterator[RelayEvent]:
        """The upstream failed: resume if allowed (yields nothing), else send the failure."""
        if self.parts and may_resume(error, self.config, self.resumes, self.clock() - self.started):
            self.resumes += 1
            log.warning(
                "resuming stream request_id=%s after %s (%d chars kept)",
                self.request_id,
                error.code,
                sum(map(len, self.parts)),
            )
            partial = self.text()
            self._deadlines.last_upstream = self.clock()
            self._opener.begin(
                continuation(self.request, partial, self.count_tokens(partial)),
                retry=False,
                deadline=self._deadlines.total_at,
            )
            return
        now = self.clock() if grace_from is None else grace_from
        assert self._watchdog is not None
        limit = now if grace_from is not None else max(now, self._deadlines.total_at)
        self._watchdog.guard_write(limit + WRITE_GRACE)
        yield self._fail(error)

    # Bounds, failures and the end ------------------------------------------------

    def _ending(self) -> None:
        if self._watchdog is not None:
            self._watchdog.stop()

    def _drop_stream(self) -> None:
        stream, self._stream = self._stream, None
        if stream is not None:
            stream.close()

    def _stop(self) -> None:
        """End the upstream side, whatever it is doing: opening or streaming."""
        self._opener.stop(keep=self._stream)
        self._drop_stream()


# -- the service the views call ---------------------------------------------------


class GenerationService:
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
        cfg = self.config
        return parse_generate(
            body,
            self.provider.models,
            cfg.max_output_tokens,
            max_files=cfg.max_files,
            max_file_bytes=cfg.max_file_bytes,
        )

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
        turns: list[Turn] | None = None,
        partial: str | None = None,
        files: Sequence[Attachment] = (),
    ) -> Relay:
        """A Relay for `prompt`, after the conversation's earlier `turns` (the oldest
        left out while they do not fit MAX_PROMPT_TOKENS: `relay.trimmed_turns`
        says how many), carrying on `partial` (a Continue) when given."""
        cfg = self.config
        prompt_tokens = self.count_tokens(prompt)
        if prompt_tokens > cfg.max_prompt_tokens:
            raise BadRequest(
                f"prompt: {prompt_tokens} tokens is over the limit of {cfg.max_prompt_tokens}.",
                code="prompt_too_long",
            )
        if files:
            prompt_tokens = self._with_files(prompt_tokens, files)
        if partial is not None:
            prompt_tokens += self.count_tokens(partial)
            if prompt_tokens > cfg.max_prompt_tokens:
                raise BadRequest(
                    f"continue_answer: the answer so far is {prompt_tokens} tokens with its "
                    f"prompt, over the limit of {cfg.max_prompt_tokens}.",
                    code="prompt_too_long",
                )
        kept, turn_tokens = self._fitting(turns or [], prompt_tokens)
        request = GenerationRequest(
            build_messages(prompt, language, cfg.system_prompt, kept, files),
            model or self.provider.models[0],
            max_tokens or cfg.max_output_tokens,
            cfg.default_temperature if temperature is None else temperature,
            client=client,
        )
        if partial is not None:
            request = continuation(request, partial, 0)
        relay = Relay(
            self.provider,
            request,
            cfg,
            request_id,
            self.count_tokens,
            prompt_tokens + turn_tokens + self._system_tokens,
            hooks=self.hooks,
            client=client,
            attachments=tuple(files),
        )
        relay.trimmed_turns = len(turns or ()) - len(kept)
        return relay

    def _fitting(self, turns: list[Turn], prompt_tokens: int) -> tuple[list[Turn], int]:
        """The latest of a conversation's `turns` that fit MAX_PROMPT_TOKENS with the
        prompt (the oldest left out first), and their tokens."""
        kept = list(turns)
        sizes = [self.count_tokens(earlier) + self.count_tokens(answer) for earlier, answer in kept]
        while kept and prompt_tokens + sum(sizes) > self.config.max_prompt_tokens:
            kept.pop(0)
            sizes.pop(0)
        return kept, sum(sizes)

    def _with_files(self, prompt_tokens: int, files: Sequence[Attachment]) -> int:
        """The prompt's tokens with its files shown to the model, or the BadRequest
        that names the largest file when together they pass MAX_PROMPT_TOKENS."""
        limit = self.config.max_prompt_tokens
        sizes = [self.count_tokens(fenced(file)) for file in files]
        total = prompt_tokens + sum(sizes) + self.count_tokens(ASK) + 8
        if total > limit:
            largest = max(range(len(files)), key=sizes.__getitem__)
            raise BadRequest(
                f"files[{largest}] {files[largest].name!r}: the prompt and its files are "
                f"{total:,} tokens, over the limit of {limit:,} (this file alone is "
                f"{sizes[largest]:,}).",
                code="prompt_too_long",
            )
        return total
