"""A continuation's text without what it repeats at the seam.

A chat model asked to carry on from a cut answer (a Continue, or a resume
after the upstream broke) often restates first: the cut line, the last few
lines, or the whole answer from the top. Sent as is, the joined answer holds
that text twice. `SeamStream` wraps such a continuation's stream:

- while what came so far could be a restatement (it occurs in the earlier
  text), it is held back, and `read` returns "" (the upstream is alive, which
  keeps the idle bound quiet, but nothing is sent);
- once it cannot be (it stops matching, or runs past the earlier text's end),
  the longest start of it that the earlier text ends with is dropped, and the
  rest goes on; from then on, every read passes straight through;
- a repeat only counts when it is long enough not to be a coincidence: at
  least MIN_OVERLAP characters, or MIN_LINE_OVERLAP from the start of a line.

Memory: what is held is a piece of the earlier text plus one read, so it is
bounded by the answer's own size bound. Providers that truly continue a
message (the embedded model) do not need it.
"""

from __future__ import annotations

from webapp.providers.base import Final, UpstreamStream

MIN_OVERLAP = 16
MIN_LINE_OVERLAP = 6


def overlap(before: str, after: str) -> int:
    """The length of the longest start of `after` that `before` ends with, if it is
    long enough to be a repeat (see the module docstring), else 0."""
    if not before or not after:
        return 0
    # Knuth-Morris-Pratt: `after`'s prefix function, then the tail of `before` run
    # through it; the state at the end is the answer. Linear, and no separator
    # character that the model's own text could contain.
    border = [0] * len(after)
    k = 0
    for i in range(1, len(after)):
        while k and after[i] != after[k]:
            k = border[k - 1]
        if after[i] == after[k]:
            k += 1
        border[i] = k
    k = 0
    for ch in before[-len(after) :]:
        if k == len(after):
            k = border[k - 1]
        while k and ch != after[k]:
            k = border[k - 1]
        if ch == after[k]:
            k += 1
    if k >= MIN_OVERLAP:
        return k
    at_line_start = k == len(before) or before[-k - 1] == "\n"
    return k if k >= MIN_LINE_OVERLAP and at_line_start else 0


class SeamStream(UpstreamStream):
    """`inner`'s items, less the text at its start that repeats the end of `before`."""

    def __init__(self, inner: UpstreamStream, before: str) -> None:
        self._inner = inner
        self._before = before
        self._held = ""
        self._at = -1  # where in `before` the held text occurs (the first such place)
        self._deciding = bool(before)
        self._final: Final | None = None

    def read(self, timeout: float | None) -> str | Final | None:
        if self._final is not None:
            return self._final
        item = self._inner.read(timeout)
        if not self._deciding or item is None:
            return item
        if type(item) is not str:
            assert isinstance(item, Final)
            self._final = item  # after what was held, on the next read
            return self._settle(self._held)
        return self._take(item)

    def _take(self, piece: str) -> str:
        before, held = self._before, self._held
        at = self._at
        # The place found so far still matches, or the next place the whole held
        # text occurs (str.find: C speed; one search per mismatch, not per read).
        if at < 0 or not before.startswith(piece, at + len(held)):
            at = before.find(held + piece, at + 1)
        held += piece
        if at >= 0:
            self._held, self._at = held, at
            return ""
        return self._settle(held)

    def _settle(self, held: str) -> str:
        self._deciding = False
        self._held, self._at = "", -1
        return held[overlap(self._before, held) :]

    def close(self) -> None:
        self._inner.close()
