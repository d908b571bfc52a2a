"""The provider interface: one streaming method, text deltas then a Final.

A provider turns a GenerationRequest into an iterator of `str` deltas (each
one everything that arrived in one upstream read, so several tokens may be
joined) followed by exactly one `Final`. It raises only `webapp.errors`
types, with `retryable` set where trying again could help. Closing the
iterator must close the upstream request: that is how Stop stops billing.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, ClassVar


@dataclass(frozen=True, slots=True)
class GenerationRequest:
    messages: list[dict[str, str]]
    model: str
    max_tokens: int
    temperature: float | None = None


@dataclass(slots=True)
class Final:
    finish_reason: str | None = None
    usage: dict[str, int] | None = None


@dataclass(slots=True)
class ProviderInfo:
    name: str
    model: str
    detail: dict[str, Any] = field(default_factory=dict)


class Provider(ABC):
    name: ClassVar[str]
    # The models a request may choose; the first is the default.
    models: tuple[str, ...]

    @abstractmethod
    def stream(self, request: GenerationRequest) -> Iterator[str | Final]:
        """Yield text deltas, then one Final; raise AppError subclasses."""

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
