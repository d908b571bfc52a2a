"""Model output -> safe HTML for the page.

Everything is escaped first; only fixed tags are added afterwards, and code
goes through Pygments, which escapes as it highlights. No model text ever
reaches the page as markup of its own.
"""

from __future__ import annotations

import re
from functools import lru_cache
from typing import Any

from markdown_it import MarkdownIt
from markupsafe import Markup, escape
from pygments import highlight
from pygments.formatters import HtmlFormatter
from pygments.lexers import get_lexer_by_name, guess_lexer
from pygments.lexers.special import TextLexer
from pygments.util import ClassNotFound

from webapp.relay.codeblocks import FENCE

_FORMATTER = HtmlFormatter(nowrap=True, classsuffix="")
_HEADING = re.compile(r"<(/?)h([1-6])")
# The answer's top heading level on every page that shows one: the page's title is its h1,
# and the headings around the answer (Versions, History, the question asked) are h2s.
ANSWER_TOP_HEADING = 2


# Pygments' `guess_lexer` runs every lexer's `analyse_text`, and some of those
# regexes are quadratic (20,000 newlines took 14 s, a run of "{" 0.2 s per
# 2,000): it only ever sees a short sample from the start of the block.
GUESS_MAX_CHARS = 1_000
GUESS_MAX_LINES = 50
# Highlighting itself is linear but slow on some lexers and inputs (tests/web/test_render.py
# holds the worst seen), and it runs in a thread beside the loop: longer blocks, far beyond
# what the output token limits allow by default, are shown as plain escaped text.
HIGHLIGHT_MAX_CHARS = 50_000


@lru_cache(maxsize=64)
def _lexer(language: str):  # type: ignore[no-untyped-def]
    try:
        return get_lexer_by_name(language.lower())
    except ClassNotFound:
        return None


def _guess_sample(code: str) -> str:
    """The start of the block that the guess looks at: bounded in characters and lines."""
    head = code.lstrip()[:GUESS_MAX_CHARS]
    return "\n".join(head.split("\n", GUESS_MAX_LINES)[:GUESS_MAX_LINES])


@lru_cache(maxsize=256)
def _guess(sample: str):  # type: ignore[no-untyped-def]
    """A lexer for an untagged block (cached: a block is rendered more than once)."""
    if not sample.strip():
        return TextLexer()
    try:
        return guess_lexer(sample)
    except ClassNotFound:
        return TextLexer()


def _plain(code: str) -> str:
    """Escaped text, with the newline handling Pygments applies before highlighting."""
    text = code.replace("\r\n", "\n").replace("\r", "\n").strip("\n")
    return f"{escape(text)}\n"


def highlight_code(code: str, language: str) -> Markup:
    if len(code) > HIGHLIGHT_MAX_CHARS:
        body = _plain(code)
    else:
        lexer = _lexer(language) if language else None
        if lexer is None:
            lexer = _guess(_guess_sample(code))
        body = highlight(code, lexer, _FORMATTER)
    # Focusable: a block wider than the screen scrolls, and keyboards must reach it.
    return Markup(f'<pre class="code highlight" tabindex="0"><code>{body}</code></pre>')


def _safe_link(url: str) -> bool:
    """Only web links: no javascript:, data:, file: or relative surprises."""
    return url.strip().lower().startswith(("http://", "https://"))


def _markdown() -> MarkdownIt:
    """CommonMark with tables and strikethrough; raw HTML off, so model text never
    becomes markup; links only to http(s), opened without access to this page."""
    md = MarkdownIt("commonmark", {"html": False, "linkify": False}).enable(
        ["table", "strikethrough"]
    )
    md.validateLink = _safe_link  # type: ignore[method-assign]

    def link_open(renderer: Any, tokens: Any, index: int, options: Any, env: Any) -> str:
        tokens[index].attrSet("rel", "noopener noreferrer")
        rendered: str = renderer.renderToken(tokens, index, options, env)
        return rendered

    def table_open(renderer: Any, tokens: Any, index: int, options: Any, env: Any) -> str:
        # A wide table scrolls inside its own box (reachable by keyboard).
        rendered: str = renderer.renderToken(tokens, index, options, env)
        return '<div class="table-scroll" tabindex="0">' + rendered

    def table_close(renderer: Any, tokens: Any, index: int, options: Any, env: Any) -> str:
        rendered: str = renderer.renderToken(tokens, index, options, env)
        return rendered + "</div>"

    md.add_render_rule("link_open", link_open)
    md.add_render_rule("table_open", table_open)
    md.add_render_rule("table_close", table_close)
    return md


_MD = _markdown()


class _Outline:
    """Heading levels for one answer that follow the page's outline (axe's heading-order):
    its first heading is at ANSWER_TOP_HEADING, and each later one keeps its step from the
    one before, but never goes more than one level deeper, nor above the top. So `##` after
    the page's h1 is an h2, and a lone `### Explanation:` an h2 too, never a small h5."""

    def __init__(self) -> None:
        self.source = 0  # the Markdown level of the last heading (0: none yet)
        self.shown = ANSWER_TOP_HEADING - 1

    def level(self, source: int) -> int:
        step = 1 if not self.source else source - self.source
        self.source = source
        self.shown = max(ANSWER_TOP_HEADING, min(self.shown + 1, self.shown + step, 6))
        return self.shown

    def relevel(self, html: str) -> str:
        # Raw HTML is off and headings never nest: a closing tag is the last opening's.
        def tag(match: re.Match[str]) -> str:
            closing, source = match.group(1), int(match.group(2))
            return f"<{closing}h{self.shown if closing else self.level(source)}"

        return _HEADING.sub(tag, html)


def render_prose(text: str, outline: _Outline | None = None) -> str:
    """The text between code blocks, as Markdown, its headings placed in the page's
    outline (`outline` carries the levels from one stretch of prose to the next)."""
    if not text.strip():
        return ""
    return (outline or _Outline()).relevel(_MD.render(text))


def render_answer(text: str) -> Markup:
    """The whole answer: prose as simple markdown, fenced code highlighted."""
    out: list[str] = []
    outline = _Outline()
    position = 0
    for match in FENCE.finditer(text):
        out.append(render_prose(text[position : match.start()], outline))
        out.append(code_block_html(match.group(2).rstrip("\n"), match.group(1)))
        position = match.end()
    out.append(render_prose(text[position:], outline))
    return Markup("".join(out))


def code_block_html(code: str, language: str) -> str:
    label = escape(language or "code")
    return (
        f'<figure class="codeblock"><figcaption><span>{label}</span>'
        f'<button type="button" class="copy">Copy</button></figcaption>'
        f"{highlight_code(code, language)}</figure>"
    )


def pygments_css() -> str:
    """The highlighting styles served as static/pygments.css (light, and dark by media query).

    Regenerate after a Pygments upgrade:
    python -c "from webapp.web.render import pygments_css; print(pygments_css(), end='')" \
        > static/pygments.css
    """
    light = HtmlFormatter(style="default").get_style_defs(".highlight")
    dark = HtmlFormatter(style="monokai").get_style_defs(".highlight")
    return f"{light}\n@media (prefers-color-scheme: dark) {{\n{dark}\n}}\n"
