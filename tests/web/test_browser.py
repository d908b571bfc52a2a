"""The page in real headless Chromium (Debian's package), driven by Playwright.

The app runs under gunicorn against the fake upstream. Every test also checks
that the page asked nothing of another origin.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Iterator
from typing import Any

import pytest

from tests.conftest import ROOT, Server
from tests.fake_upstream import FakeUpstream
from tests.helpers import submit, wait_idle

pytestmark = pytest.mark.browser
SHOTS = ROOT / "tests" / "artifacts"


@pytest.fixture()
def page_for(chromium: Any, server: Server) -> Iterator[Any]:
    contexts = []
    foreign: list[str] = []

    def make(**options: Any) -> Any:
        context = chromium.new_context(**options)
        contexts.append(context)
        page = context.new_page()
        page.on(
            "request", lambda r: None if r.url.startswith(server.url) else foreign.append(r.url)
        )
        page.goto(server.url + "/")
        return page

    yield make
    for context in contexts:
        context.close()
    assert foreign == [], f"requests to other origins: {foreign}"


def test_the_answer_streams_in_and_renders_highlighted_code(
    page_for: Any, fake: FakeUpstream, server: Server
) -> None:
    for scheme in ("light", "dark"):
        page = page_for(color_scheme=scheme, viewport={"width": 1100, "height": 900})
        submit(page, "Palindrome check [[fake answer=code delay=0.06]]")
        lengths = []
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and len(lengths) < 40:
            lengths.append(len(page.inner_text("#answer")))
            if not page.is_disabled("#generate") and lengths[-1] > 0:
                break
            if len(lengths) == 6:
                page.screenshot(path=str(SHOTS / f"page-streaming-{scheme}.png"), full_page=True)
            time.sleep(0.1)
        wait_idle(page)
        growth = [b for a, b in itertools.pairwise(lengths) if b > a]
        assert len(growth) >= 3, lengths  # seen growing at several moments
        block = page.wait_for_selector("figure.codeblock pre.highlight")
        assert "def is_palindrome" in block.inner_text()
        assert page.query_selector("figure.codeblock pre.highlight span.k")  # keyword highlighted
        assert page.query_selector("#answer strong").inner_text() == "normalises"
        assert "tokens/s" in page.inner_text("#stats")
        page.screenshot(path=str(SHOTS / f"page-finished-{scheme}.png"), full_page=True)


def test_copy_puts_the_code_on_the_clipboard(
    page_for: Any, fake: FakeUpstream, server: Server
) -> None:
    page = page_for(permissions=["clipboard-read", "clipboard-write"])
    submit(page, "code please [[fake answer=code]]")
    wait_idle(page)
    page.click("figure.codeblock button.copy")
    page.wait_for_selector("button.copy:has-text('Copied')")
    copied = page.evaluate("navigator.clipboard.readText()")
    assert copied.startswith("def is_palindrome(text: str) -> bool:")
    assert copied.rstrip().endswith("return cleaned == cleaned[::-1]")


def test_stop_ends_the_stream_and_the_upstream(page_for: Any, fake: FakeUpstream) -> None:
    page = page_for()
    submit(page, "go on forever [[fake forever=1 delay=0.05 id=stop]]")
    deadline = time.monotonic() + 10
    while len(page.inner_text("#answer")) < 20 and time.monotonic() < deadline:
        time.sleep(0.05)
    page.click("#stop")
    stopped_at = time.monotonic()
    wait_idle(page)
    closed = fake.wait_closed(1, timeout=3)
    assert closed and closed[0].how == "client_closed"
    assert closed[0].at - stopped_at < 1.0
    assert "Stopped" in page.inner_text("#stats")
    assert page.is_visible("#regenerate")


@pytest.mark.parametrize(
    ("directive", "message"),
    [
        ("status=401", "API key was rejected"),
        ("fail=429,429,429 retry_after=1", "try again in 1 s"),
        ("first_delay=30", "took too long"),
        ("drop_after=3", "broke off the answer"),
    ],
)
def test_errors_show_a_friendly_message(
    page_for: Any, fake: FakeUpstream, directive: str, message: str
) -> None:
    page = page_for()
    submit(page, f"x [[fake {directive} id=err{directive}]]")
    page.wait_for_selector("#error:not([hidden])", timeout=15_000)
    assert message in page.inner_text("#error")
    assert "Traceback" not in page.content()


def test_prompt_too_long_is_explained(page_for: Any, fake: FakeUpstream) -> None:
    page = page_for()
    submit(page, "word " * 400)
    page.wait_for_selector("#error:not([hidden])")
    assert "over the limit of 200" in page.inner_text("#error")
    assert page.input_value("#prompt").startswith("word word")  # nothing lost


def test_model_output_is_text_never_markup(page_for: Any, fake: FakeUpstream) -> None:
    page = page_for()
    submit(page, "show me [[fake answer=xss]]")
    wait_idle(page)
    assert page.evaluate("window.__pwned") is None
    text = page.inner_text("#answer")
    assert "<script>window.__pwned = 1</script>" in text
    assert '<img src=x onerror="window.__pwned = 2">' in text
    assert page.query_selector("#answer img") is None
    assert page.query_selector("#answer script") is None


def test_the_form_works_without_javascript(page_for: Any, fake: FakeUpstream) -> None:
    page = page_for(java_script_enabled=False)
    page.fill("#prompt", "no js [[fake answer=code]]")
    page.click("#generate")
    page.wait_for_selector(".rendered figure.codeblock")
    assert "def is_palindrome" in page.inner_text(".rendered")
    assert "First token" in page.inner_text("main")


def test_an_answer_cut_at_max_tokens_says_so(page_for: Any, fake: FakeUpstream) -> None:
    page = page_for()
    submit(page, "long one [[fake finish=length]]")
    wait_idle(page)
    page.wait_for_selector("#stats:not([hidden])")
    assert "stopped at the Max tokens limit" in page.inner_text("#stats")

    submit(page, "short one [[fake]]")  # a complete answer carries no such note
    wait_idle(page)
    page.wait_for_selector("#stats:not([hidden])")
    assert "Max tokens limit" not in page.inner_text("#stats")

    page = page_for(java_script_enabled=False)
    page.fill("#prompt", "long one, no js [[fake finish=length]]")
    page.click("#generate")
    page.wait_for_selector(".rendered")
    assert "stopped at the Max tokens limit" in page.inner_text("main")
