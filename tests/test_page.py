"""The page as people use it, in Debian's Chromium: an accessibility audit (axe-core from
npm) before, during and after an answer, in light and dark, on desktop and phone; Copy
during a stream; Markdown in the finished answer; failures that keep what was there;
Stop within reach; focus that never falls to the page."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest
import requests

from tests.conftest import IN_CI, ROOT, Server
from tests.fake_upstream import FakeUpstream
from tests.helpers import csrf_token_of, submit, wait_idle

pytestmark = pytest.mark.browser
AXE = ROOT / "node_modules" / "axe-core" / "axe.min.js"
SHOTS = ROOT / "tests" / "artifacts"
DESKTOP = {"width": 1100, "height": 900}
PHONE = {"width": 390, "height": 740}


def wait_until(page: Any, expression: str, timeout: float = 10.0) -> None:
    """Poll `expression` in the page (wait_for_function evaluates strings, which the
    page's CSP forbids)."""
    deadline = time.monotonic() + timeout
    while not page.evaluate(expression):
        assert time.monotonic() < deadline, f"timed out waiting for {expression}"
        time.sleep(0.05)


def axe_source() -> str:
    if not AXE.exists():
        message = "axe-core is not installed (make test runs npm ci)"
        if IN_CI:
            pytest.fail(message)
        pytest.skip(message)
    return AXE.read_text()


def serious_violations(page: Any) -> list[str]:
    """axe-core's serious and critical findings on the page as it is now."""
    if not page.evaluate("typeof window.axe !== 'undefined'"):
        page.evaluate(axe_source())
    found: list[str] = page.evaluate(
        """async () => {
            const result = await axe.run(document, {resultTypes: ["violations"]});
            return result.violations
                .filter((v) => v.impact === "serious" || v.impact === "critical")
                .map((v) => v.id + ": " + v.nodes.slice(0, 3).map((n) => n.target.join(" ")));
        }"""
    )
    return found


@pytest.fixture()
def open_page(chromium: Any, server: Server) -> Iterator[Any]:
    contexts: list[Any] = []

    def make(path: str = "/", **options: Any) -> Any:
        context = chromium.new_context(**options)
        contexts.append(context)
        page = context.new_page()
        page.goto(server.url + path)
        return page

    yield make
    for context in contexts:
        context.close()


@pytest.mark.parametrize("scheme", ["light", "dark"])
@pytest.mark.parametrize("size", ["desktop", "phone"])
def test_the_page_passes_the_audit_before_during_and_after_an_answer(
    open_page: Any, fake: FakeUpstream, scheme: str, size: str
) -> None:
    viewport = DESKTOP if size == "desktop" else PHONE
    page = open_page(color_scheme=scheme, viewport=viewport)
    assert serious_violations(page) == []
    submit(page, "Slugs [[fake answer=markdown delay=0.08]]")
    page.wait_for_selector("#answer figure.codeblock")
    assert serious_violations(page) == [], "during the stream"
    wait_idle(page)
    assert serious_violations(page) == [], "after the answer"
    page.screenshot(path=str(SHOTS / f"page-{size}-{scheme}.png"), full_page=True)


@pytest.mark.parametrize("size", ["desktop", "phone"])
def test_the_docs_and_the_no_script_answer_pass_the_audit(
    open_page: Any, fake: FakeUpstream, server: Server, size: str
) -> None:
    viewport = DESKTOP if size == "desktop" else PHONE
    docs = open_page("/docs", viewport=viewport)
    assert serious_violations(docs) == []
    width = docs.evaluate("document.documentElement.scrollWidth")
    assert width <= viewport["width"], "the docs page scrolls sideways"
    # The no-script result page, as the server sends it after a form post.
    session = requests.Session()
    token = csrf_token_of(session.get(server.url + "/", timeout=5).text)
    html = session.post(
        server.url + "/",
        data={"csrf_token": token, "prompt": "Slugs [[fake answer=markdown]]"},
        timeout=30,
    ).text
    result = open_page(viewport=viewport)
    result.set_content(html)
    result.wait_for_selector(".rendered")
    assert serious_violations(result) == []


def test_copy_works_mid_stream_and_the_block_survives_it(
    open_page: Any, fake: FakeUpstream, server: Server
) -> None:
    page = open_page(permissions=["clipboard-read", "clipboard-write"])
    submit(page, "Code then more [[fake answer=code forever=1 delay=0.03]]")
    figure = page.wait_for_selector("#answer figure.codeblock:not(.streaming)")
    button = figure.query_selector("button.copy")
    box = button.bounding_box()
    page.mouse.move(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
    page.mouse.down()
    time.sleep(0.15)  # a human-length press, while tokens keep arriving
    page.mouse.up()
    wait_until(page, "navigator.clipboard.readText().then(t => t.length > 0)")
    copied = page.evaluate("navigator.clipboard.readText()")
    assert copied.startswith("def is_palindrome(text: str) -> bool:")
    length = len(page.inner_text("#answer"))
    wait_until(page, f"document.getElementById('answer').innerText.length > {length + 40}")
    assert figure.evaluate("el => el.isConnected")  # the same element, still in the page
    page.click("#stop")
    wait_idle(page)
    focused = page.evaluate("document.activeElement.id")
    assert focused in ("regenerate", "generate")  # not the page body


def test_the_finished_answer_is_markdown_with_and_without_javascript(
    open_page: Any, fake: FakeUpstream
) -> None:
    for scripted in (True, False):
        page = open_page(java_script_enabled=scripted)
        page.fill("#prompt", "Slugs [[fake answer=markdown]]")
        page.click("#generate")
        root = "#answer" if scripted else ".rendered"
        page.wait_for_selector(f"{root} table")
        if scripted:
            wait_idle(page)
        assert page.inner_text(f"{root} h4") == "Overview"
        assert page.query_selector(f"{root} table td code").inner_text() == "slugify"
        assert "Keep slugs lower-case." in page.inner_text(f"{root} blockquote")
        link = page.query_selector(f'{root} a[href="https://example.com/slug"]')
        assert link.get_attribute("rel") == "noopener noreferrer"
        assert page.query_selector(f'{root} a[href^="javascript"]') is None
        assert page.query_selector(f"{root} figure.codeblock pre.highlight span.k")


def test_a_failed_request_leaves_the_previous_answer(open_page: Any, fake: FakeUpstream) -> None:
    page = open_page()
    submit(page, "First [[fake answer=code]]")
    wait_idle(page)
    page.wait_for_selector("#answer figure.codeblock")
    submit(page, "Second [[fake status=500]]")
    page.wait_for_selector("#error:not([hidden])")
    wait_idle(page)
    assert "def is_palindrome" in page.inner_text("#answer")
    assert "request id" in page.inner_text("#error")
    page.fill("#temperature", "5")
    page.press("#prompt", "Control+Enter")
    page.wait_for_selector("#temperature[aria-invalid=true]")
    assert page.evaluate("document.activeElement.id") == "temperature"
    assert "def is_palindrome" in page.inner_text("#answer")


def test_stop_stays_on_screen_and_the_page_follows_on_a_phone(
    open_page: Any, fake: FakeUpstream
) -> None:
    page = open_page(viewport=PHONE)
    submit(page, "Endless [[fake forever=1 delay=0.005 pad=6]]")
    wait_until(page, "document.documentElement.scrollHeight > 2 * window.innerHeight")
    time.sleep(0.5)
    box = page.query_selector("#stop").bounding_box()
    assert box["y"] >= 0 and box["y"] + box["height"] <= PHONE["height"]
    at_bottom = page.evaluate(
        "window.innerHeight + window.scrollY >= document.documentElement.scrollHeight - 200"
    )
    assert at_bottom  # the page followed the stream
    page.screenshot(path=str(SHOTS / "page-phone-streaming.png"))
    page.click("#stop")
    wait_idle(page)


def test_a_mistyped_address_is_a_page_for_browsers_and_json_for_scripts(
    server: Server,
) -> None:
    browser = requests.get(
        server.url + "/nope", headers={"Accept": "text/html,*/*;q=0.8"}, timeout=5
    )
    assert browser.status_code == 404 and "text/html" in browser.headers["Content-Type"]
    assert "Back to the form" in browser.text
    script = requests.get(server.url + "/nope", timeout=5)
    assert script.status_code == 404 and script.json()["error"]["code"] == "not_found"
