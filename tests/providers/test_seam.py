"""What a continuation repeats at the seam is dropped (providers/seam.py), and nothing else."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from webapp.providers.base import Final, UpstreamStream
from webapp.providers.seam import SeamStream, overlap

CODE = "Here you go:\n```python\ndef add(a, b):\n    return a + b\n\n\ndef sub(a, b):\n    ret"


class Pieces(UpstreamStream):
    """The given reads, then the Final; None for each None given (a quiet moment)."""

    def __init__(self, items: list[str | None]) -> None:
        self._items: Iterator[str | None] = iter([*items])
        self.closed = False

    def read(self, timeout: float | None) -> str | Final | None:
        return next(self._items, Final("stop"))

    def close(self) -> None:
        self.closed = True


def through(before: str, pieces: list[str | None]) -> tuple[str, list[str | Final | None]]:
    """What the seam passes on (joined), and every read it returned."""
    stream = SeamStream(Pieces(pieces), before)
    reads: list[str | Final | None] = []
    while not reads or not isinstance(reads[-1], Final):
        reads.append(stream.read(1.0))
    return "".join(r for r in reads if isinstance(r, str)), reads


def split(text: str, size: int) -> list[str | None]:
    return [text[i : i + size] for i in range(0, len(text), size)]


@pytest.mark.parametrize("size", [1, 3, 7, 1000])
def test_a_restatement_from_the_top_is_dropped(size: int) -> None:
    rest = "urn a - b\n```\n"
    joined, reads = through(CODE, split(CODE + rest, size))
    assert joined == rest
    # Held back while it could still be a repeat: reads then give "" (not None,
    # which would mean the upstream went quiet).
    assert None not in reads and ("" in reads or size > len(CODE))


@pytest.mark.parametrize("size", [1, 4, 1000])
def test_a_restated_cut_line_is_dropped(size: int) -> None:
    # The model starts the cut line again ("    ret" -> "    return a - b").
    joined, _ = through(CODE, split("    return a - b\n```\n", size))
    assert joined == "urn a - b\n```\n"


def test_restated_last_lines_are_dropped() -> None:
    joined, _ = through(CODE, ["def sub(a, b):\n", "    ret", "urn a - b\n"])
    assert joined == "urn a - b\n"


@pytest.mark.parametrize(
    "after",
    [
        "urn a - b\n```\n",  # a true continuation
        "\n```\n",  # short and common: could be anything
        "ret = 3",  # the end again, but too short to be a repeat
        "Here you go: something else entirely",  # starts like the answer, then differs
    ],
)
def test_a_true_continuation_passes_whole(after: str) -> None:
    for size in (1, 5, 1000):
        assert through(CODE, split(after, size))[0] == after


def test_a_short_fence_is_not_taken_for_a_repeat() -> None:
    before = "Done.\n```"
    assert overlap(before, "```python\nx = 1\n") == 0
    assert through(before, ["```python\n", "x = 1\n"])[0] == "```python\nx = 1\n"


def test_a_stream_that_ends_while_held_gives_what_is_new_then_its_final() -> None:
    joined, reads = through(CODE, ["def sub(a, b):\n    ret"])
    assert joined == ""
    assert isinstance(reads[-1], Final)
    joined, _ = through("abc", ["x"])
    assert joined == "x"


def test_quiet_moments_and_close_pass_through() -> None:
    inner = Pieces([None, "    return", None, " a - b"])
    stream = SeamStream(inner, CODE)
    reads = [stream.read(0.1) for _ in range(5)]
    assert reads[0] is None and reads[2] is None
    assert "".join(r for r in reads if isinstance(r, str)) == "urn a - b"
    stream.close()
    assert inner.closed


def test_nothing_before_means_nothing_to_trim() -> None:
    assert through("", ["hello ", "world"])[0] == "hello world"


def test_overlap_is_linear_on_a_long_repetitive_answer() -> None:
    before = "ab" * 50_000
    assert overlap(before, before + "c") == len(before)
    assert overlap(before, "b" + "ab" * 100 + "c") == 201  # "bab...ab" ends it too
    assert overlap(before, "c" + "ab" * 100) == 0


def test_a_long_repetitive_restatement_is_dropped_whole() -> None:
    """`0, 0, 0, ...` restated three characters a read: one search per mismatch,
    not one check per place it could start (that was quadratic, and blocked the loop)."""
    before = "values = [" + "0, " * 20_000
    joined, _ = through(before, [*split("0, " * 20_000, 3), "0]\n"])
    assert joined == "0]\n"


def test_a_nul_in_the_text_is_just_a_character() -> None:
    assert overlap("ab", "ab\0ab") == 0  # "ab" is too short to count as a repeat
    before = "line one\nline two\0 and more\n"
    assert overlap(before, "line two\0 and more\nnext") == len("line two\0 and more\n")
    assert through(before, ["line two\0", " and more\n", "next"])[0] == "next"
