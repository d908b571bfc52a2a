"""webapp/web/render.py: code blocks are highlighted, escaped, and never take long.

Pygments' `guess_lexer` is quadratic on some inputs (an untagged block of
20,000 newlines took 14 s on the event loop), so the guess must only ever see
a short sample, and very long blocks are not highlighted at all.
"""

from __future__ import annotations

import random
import re
import time
from collections.abc import Iterator
from typing import Any

import pytest

from webapp.web import render
from webapp.web.render import code_block_html, highlight_code, render_answer

MAX_GUESS_CHARS = 2_000
MAX_GUESS_LINES = 50


def fenced(code: str, language: str = "") -> str:
    return f"Some prose.\n\n```{language}\n{code}\n```\n\nMore prose.\n"


def mixed_text(length: int, seed: int = 7) -> str:
    rng = random.Random(seed)
    alphabet = "abc def xyz 0123 \n\n\t{}()[];:<>=+-*/#%$&|'\"\\`~ "
    return "".join(rng.choice(alphabet) for _ in range(length))


@pytest.fixture(autouse=True)
def no_cached_guesses() -> Iterator[None]:
    render._guess.cache_clear()
    yield
    render._guess.cache_clear()


@pytest.fixture()
def guesses(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every text that reaches Pygments' guess_lexer (which still runs for real)."""
    seen: list[str] = []
    real = render.guess_lexer

    def spy(text: str, **options: Any) -> Any:
        seen.append(text)
        return real(text, **options)

    monkeypatch.setattr(render, "guess_lexer", spy)
    return seen


def assert_short(seen: list[str]) -> None:
    for text in seen:
        assert len(text) <= MAX_GUESS_CHARS
        assert text.count("\n") < MAX_GUESS_LINES


# `guessed`: whether the guess runs at all. Blank blocks need no guess, and blocks
# too long to highlight get none; the others are guessed once, on a short sample
# (with no guess, the checks on what it saw would pass on nothing).
@pytest.mark.parametrize(
    ("code", "guessed"),
    [
        pytest.param("\n" * 19_999, 0, id="20k-newlines"),
        pytest.param("\n" * 19_990 + "x = 1", 1, id="20k-newlines-then-a-line"),
        pytest.param(" \n" * 9_999, 0, id="10k-blank-lines"),
        pytest.param("{" * 19_000, 1, id="19k-braces"),
        pytest.param(mixed_text(19_000), 1, id="19k-mixed"),
        pytest.param(" \n" * 20_000, 0, id="20k-blank-lines"),
        pytest.param("x\n" * 9_999, 1, id="10k-short-lines"),
        pytest.param("{" * 40_000, 1, id="40k-braces"),
        pytest.param(mixed_text(40_000), 1, id="40k-mixed"),
        pytest.param(mixed_text(200_000), 0, id="200k-mixed"),
        pytest.param("x = 1\n" * 8_000, 1, id="8k-lines-of-code"),
        pytest.param("\n" * 20_000 + "import os\nprint(os.getcwd())\n", 1, id="newlines-then-code"),
    ],
)
def test_the_guess_only_ever_sees_a_short_sample(
    guesses: list[str], code: str, guessed: int
) -> None:
    html = highlight_code(code, "")
    assert html.startswith('<pre class="code highlight" tabindex="0"><code>')
    assert_short(guesses)
    assert len(guesses) == guessed
    # The same through a whole answer: one block, rendered once.
    assert '<figure class="codeblock">' in render_answer(fenced(code))
    assert_short(guesses)


def test_short_untagged_blocks_are_still_guessed(guesses: list[str]) -> None:
    code = "#!/usr/bin/env python3\nimport sys\n\n\ndef main():\n    return 0\n"
    html = highlight_code(code, "")
    assert guesses and guesses[0].startswith("#!/usr/bin/env python3")
    assert '<span class="kn">import</span>' in html  # guessed as Python


def test_an_unknown_tag_falls_back_to_a_short_guess(guesses: list[str]) -> None:
    highlight_code(mixed_text(30_000), "no-such-language")
    assert len(guesses) == 1
    assert_short(guesses)


def test_huge_blocks_are_plain_escaped_text_and_never_guessed(guesses: list[str]) -> None:
    for language in ("", "python"):
        code = "\n\n" + "if a < b and c > d:  # <script>\n    pass\n" * 5_000 + "\n"
        html = str(highlight_code(code, language))
        assert not guesses
        assert html.startswith('<pre class="code highlight" tabindex="0"><code>if a &lt; b')
        assert html.endswith("    pass\n</code></pre>")  # newlines trimmed as Pygments does
        assert "<span" not in html and "<script>" not in html
        assert "&lt;script&gt;" in html


def test_long_untagged_blocks_render_quickly() -> None:
    """A backstop on the wall clock with the real guess_lexer (it took 14 s)."""
    for code in ("\n" * 19_990 + "x = 1", "{" * 19_999, mixed_text(200_000)):
        started = time.perf_counter()
        highlight_code(code, "")
        assert time.perf_counter() - started < 5


def test_tagged_blocks_are_highlighted_in_the_usual_shape(guesses: list[str]) -> None:
    html = code_block_html("def is_even(n: int) -> bool:\n    return n % 2 == 0", "python")
    assert not guesses  # a known tag is never guessed
    assert html.startswith(
        '<figure class="codeblock"><figcaption><span>python</span>'
        '<button type="button" class="copy">Copy</button></figcaption>'
        '<pre class="code highlight" tabindex="0"><code>'
    )
    assert html.endswith("</code></pre></figure>")
    assert '<span class="k">def</span>' in html and '<span class="nf">is_even</span>' in html


@pytest.mark.parametrize("language", ["html", "python", "", "no-such-language"])
def test_code_is_escaped(language: str) -> None:
    html = str(render_answer(fenced("<script>window.__pwned = 1</script>", language)))
    assert "<script>" not in html
    assert "&lt;" in html and "script" in html
    text = re.sub(r"<[^>]+>", "", html)  # the highlighting spans may split the tag
    assert "&lt;script&gt;window.__pwned = 1&lt;/script&gt;" in text


def test_prose_is_escaped_too() -> None:
    html = str(render_answer('Careful: <script>alert(1)</script> and <img src=x onerror="x">'))
    assert "<script>" not in html and "<img" not in html
    assert "&lt;script&gt;" in html
