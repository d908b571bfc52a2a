"""The provider interface: `open` a request, then `read` text until a Final.

`Provider.open(request)` starts one generation and returns an UpstreamStream.
`stream.read(timeout)` returns everything that arrived since the last call as
one `str` (several tokens may be joined), `None` if nothing came within
`timeout` (nothing is lost: the next read carries on), and once, at the end, a
`Final`. Both raise only `webapp.errors` types, with `retryable` set where
trying again could help. `close()` must stop the upstream: that is how Stop
and the bounds stop billing.

The relay reads the stream from the greenlet that writes to the client, so
a provider's `read` must be cheap and must honour `timeout` exactly.
"""

from __future__ import annotations

import logging
import time
from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, ClassVar

import gevent
from gevent.event import Event

from webapp.errors import AppError, InternalError

log = logging.getLogger("webapp.provider")


@dataclass(frozen=True, slots=True)
class GenerationRequest:
    messages: list[dict[str, str]]
    model: str
    max_tokens: int
    temperature: float | None = None
    # A continuation: the assistant text it carries on. Its messages also ask for
    # that in words (for providers that cannot continue a message themselves).
    partial: str | None = None
    # Who asked (the request's client id): the local model's queue serves clients in turn.
    client: str = ""


@dataclass(slots=True)
class Final:
    finish_reason: str | None = None
    usage: dict[str, int] | None = None


@dataclass(slots=True)
class ProviderInfo:
    name: str
    model: str
    detail: dict[str, Any] = field(default_factory=dict)


class UpstreamStream(ABC):
    @abstractmethod
    def read(self, timeout: float | None) -> str | Final | None:
        """New text, or None after `timeout` seconds of nothing, or the Final."""

    @abstractmethod
    def close(self) -> None:
        """Stop the upstream generation; safe to call twice."""


class Provider(ABC):
    name: ClassVar[str]
    # The models a request may choose; the first is the default.
    models: tuple[str, ...]
    # Whether `open` continues a request's `partial` text itself (as a raw
    # completion after it); if not, the opener trims what the model restates.
    continues_partial: ClassVar[bool] = False

    @abstractmethod
    def open(self, request: GenerationRequest) -> UpstreamStream:
        """Start generating; raise AppError subclasses if that fails."""

    @abstractmethod
    def info(self) -> ProviderInfo:
        """What /healthz and the page show; must not touch the upstream."""

    def count_tokens(self, text: str) -> int | None:
        """The provider's own token count, or None to fall back to tiktoken."""
        return None

    def warm_up(self) -> None:  # noqa: B027 - optional hook
        """Start slow set-up in the background once the server process is ready."""

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release clients or models at shutdown."""


class IteratorStream(UpstreamStream):
    """An UpstreamStream over a blocking generator of str and one Final.

    For providers whose tokens come slowly from elsewhere (the local model):
    a greenlet drains the generator into a list, and `read` waits on an event.
    Killing that greenlet raises GreenletExit inside the generator, whose
    `finally` stops the work.
    """

    def __init__(self, items: Iterator[str | Final]) -> None:
        self._items = items
        self._pending: list[str] = []
        self._final: Final | None = None
        self._error: AppError | None = None
        self._ended = False
        self._wake = Event()
        self._reader = gevent.spawn(self._pump)

    def _pump(self) -> None:
        try:
            for item in self._items:
                if type(item) is str:
                    self._pending.append(item)
                    self._wake.set()
                elif isinstance(item, Final):
                    self._final = item
        except AppError as exc:
            self._error = exc
        except gevent.GreenletExit:
            raise
        except Exception:
            log.exception("provider stream failed")
            self._error = InternalError("Internal error while generating.")
        finally:
            self._ended = True
            self._wake.set()

    def read(self, timeout: float | None) -> str | Final | None:
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            if self._pending:
                text = "".join(self._pending)
                self._pending.clear()
                return text
            if self._ended:
                if self._error is not None:
                    raise self._error
                return self._final or Final()
            self._wake.clear()
            wait = None if deadline is None else max(0.0, deadline - time.monotonic())
            if not self._wake.wait(wait):
                return None

    def close(self) -> None:
        if not self._reader.dead:
            self._reader.kill(block=True, timeout=1.0)
