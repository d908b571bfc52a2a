"""What a relay yields, and what each wire format writes: text, keep-alives, the end.

An answer is a sequence of RelayEvents: `str` deltas (each is everything that
arrived in one upstream read), PING keep-alives, then exactly one `Done` or
`Failed`. Plain data, and `close_source` for whoever reads them; importable by
any layer.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from webapp.errors import AppError


class Ping:
    """A keep-alive marker: formats write a comment or a ping line."""


PING = Ping()


def close_source(events: Iterator[Any]) -> None:
    """Close a stream of events when its reader ends, however it ends (a generator's
    cleanup runs then: a relay closes or is handed on, a follower lets go), not
    whenever the collector frees the frames that hold it."""
    close = getattr(events, "close", None)
    if close is not None:
        close()


@dataclass(slots=True)
class Done:
    """The answer ended normally: why it stopped, what it used, its code blocks."""

    finish_reason: str | None
    usage: dict[str, int]
    code_blocks: list[dict[str, str]]
    request_id: str
    timing: dict[str, float]
    cost_usd: float | None = None
    # Per attached (or new) file the answer changed: name, status and diff
    # (webapp/relay/attachments.py); empty without attachments.
    files: list[dict[str, Any]] = field(default_factory=list)


@dataclass(slots=True)
class Failed:
    """The answer ended with `error`, after everything generated before it."""

    error: AppError


RelayEvent = str | Ping | Done | Failed
