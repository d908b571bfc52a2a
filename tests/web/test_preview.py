"""Preview (HTML, SVG, CSS with HTML) and Run (JavaScript) for web code, in Debian's
Chromium: the code runs in a frame with an opaque origin and a policy that loads nothing,
so it cannot read the reader's cookie, reach the app's routes, move the page or touch the
network, while it still draws its page; a script that never ends is stopped and the page
stays responsive."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest
from flask.testing import FlaskClient

from tests.conftest import Server
from tests.fake_upstream import ANSWERS, FakeUpstream
from tests.helpers import submit, wait_idle
from tests.web.test_page import serious_violations

pytestmark = pytest.mark.browser
DESKTOP = {"width": 1100, "height": 900}
PHONE = {"width": 390, "height": 740}

# Canned answers for the fake upstream (it runs in this process and reads this table).
ANSWERS.update(
    {
        # A page that tries everything it must not do, and draws its heading anyway.
        "preview_hostile": (
            "A page:\n\n```html\n<!doctype html>\n<html><head><title>Tries</title></head><body>\n"
            '<h1 id="drawn">Drawn here</h1>\n<p id="tries"></p>\n'
            '<img id="remote" src="http://example.com/x.png" alt="remote">\n'
            "<script>\nconst tries = document.getElementById('tries');\n"
            "const say = (t) => { tries.textContent += t + '; '; };\n"
            "try { say('cookie ' + JSON.stringify(document.cookie)); }"
            " catch (e) { say('cookie refused'); }\n"
            "fetch('/answers').then(() => say('app reached'), () => say('app refused'));\n"
            "fetch('http://example.com/').then(() => say('network reached'),"
            " () => say('network refused'));\n"
            "try { top.location = '/x'; say('top moved'); } catch (e) { say('top refused'); }\n"
            "</script>\n</body></html>\n```\n"
        ),
        "preview_styled": (
            '```html\n<h1 id="title">Styled</h1>\n<p>Text</p>\n```\n\n'
            "```css\nh1 { color: rgb(200, 0, 0); }\n```\n"
        ),
        "preview_svg": (
            '```xml\n<svg xmlns="http://www.w3.org/2000/svg" width="120" height="120">'
            '<circle id="dot" cx="60" cy="60" r="50" fill="teal"/></svg>\n```\n'
        ),
        # A page in three files: its stylesheet and script come from the other blocks.
        "preview_three_files": (
            '```html\n<link rel="stylesheet" href="style.css">\n<p id="count">0</p>\n'
            '<script src="app.js"></script>\n```\n\n'
            "```css\n#count { font-size: 40px; }\n```\n\n"
            "```javascript\ndocument.getElementById('count').textContent = String(6 * 7);\n```\n"
        ),
        "preview_html_loop": "```html\n<h1>Loop</h1>\n<script>while (true) {}</script>\n```\n",
        "run_js": (
            "```javascript\nconsole.log('hi', 1 + 1, { a: 1 });\n"
            "setTimeout(() => console.log('later'), 100);\n```\n"
        ),
        "run_js_error": "```js\nconsole.log('before');\nnull.x;\n```\n",
        "run_js_loop": "```js\nwhile (true) {}\n```\n",
    }
)


@pytest.fixture()
def open_page(chromium: Any, server: Server) -> Iterator[Any]:
    """A page at `size`, with every request it made recorded: (url, answered or not)."""
    contexts: list[Any] = []

    def make(size: str = "desktop") -> Any:
        context = chromium.new_context(viewport=DESKTOP if size == "desktop" else PHONE)
        contexts.append(context)
        page = context.new_page()
        page.requests = []
        page.answered = []
        page.on("request", lambda r: page.requests.append(r.url))
        page.on("response", lambda r: page.answered.append(r.url))
        page.goto(server.url + "/")
        return page

    yield make
    for context in contexts:
        context.close()


def answer_with(page: Any, answer: str) -> None:
    submit(page, f"Web code please [[fake answer={answer}]]")
    wait_idle(page)


def text_when(page: Any, selector: str, needle: str, timeout: float = 10.0) -> str:
    deadline = time.monotonic() + timeout
    while True:
        text: str = page.inner_text(selector)
        if needle in text or time.monotonic() > deadline:
            return text
        time.sleep(0.1)


@pytest.mark.parametrize("size", ["desktop", "phone"])
def test_a_preview_draws_its_page_while_cookie_app_top_and_network_are_refused(
    open_page: Any, server: Server, fake: FakeUpstream, size: str
) -> None:
    page = open_page(size)
    answer_with(page, "preview_hostile")
    assert page.context.cookies(), "the reader has a session cookie the preview must not read"
    sent_before = len(page.requests)
    page.click("#answer button.preview")
    frame = page.frame_locator("#answer div.preview iframe")
    assert frame.locator("#drawn").inner_text(timeout=10_000) == "Drawn here"
    tries = frame.locator("#tries")
    deadline = time.monotonic() + 10
    while tries.inner_text().count(";") < 4 and time.monotonic() < deadline:
        time.sleep(0.1)
    said = tries.inner_text()
    for refused in ("cookie refused", "app refused", "network refused", "top refused"):
        assert refused in said
    assert "reached" not in said and "moved" not in said
    assert page.url.startswith(server.url + "/")
    assert "/x" not in page.url
    box = page.query_selector("#answer div.preview iframe").bounding_box()
    assert box["height"] > 100 and box["x"] + box["width"] <= page.viewport_size["width"]
    # What the preview loaded: its own document and script, nothing else answered.
    made = page.requests[sent_before:]
    answered = [url for url in page.answered if url in made]
    static = server.url + "/static/"
    assert answered == [static + "preview.html", static + "preview-frame.js"]
    assert not [url for url in made if "/answers" in url or url.endswith("/x")]
    # The remote image was refused by the policy before it left the browser.
    assert [url for url in made if not url.startswith(server.url)] in (
        [],
        ["http://example.com/x.png"],
    )
    assert frame.locator("#remote").evaluate("img => img.naturalWidth") == 0
    assert serious_violations(page) == []
    # Closing the preview removes its frame.
    page.click("#answer button.preview")
    assert page.query_selector("#answer div.preview") is None
    assert page.inner_text("#answer button.preview") == "Preview"


def test_css_and_javascript_blocks_join_the_html_beside_them_and_an_svg_draws_alone(
    open_page: Any, fake: FakeUpstream
) -> None:
    page = open_page()
    answer_with(page, "preview_styled")
    buttons = page.query_selector_all("#answer button.preview")
    assert len(buttons) == 2  # the HTML block's and the CSS block's
    buttons[1].click()
    title = page.frame_locator("#answer div.preview iframe").locator("#title")
    assert title.evaluate("h => getComputedStyle(h).color", timeout=10_000) == "rgb(200, 0, 0)"
    answer_with(page, "preview_three_files")
    page.click("#answer button.preview")  # the HTML block's (the JavaScript's is Run)
    count = page.frame_locator("#answer div.preview iframe").locator("#count")
    assert count.inner_text(timeout=10_000) == "42"
    assert count.evaluate("p => getComputedStyle(p).fontSize") == "40px"
    page.click("#answer button.preview")
    answer_with(page, "preview_svg")
    page.click("#answer button.preview")
    dot = page.frame_locator("#answer div.preview iframe").locator("#dot")
    assert dot.evaluate("c => c.getBoundingClientRect().width", timeout=10_000) == 100


def test_javascript_runs_with_its_console_shown_and_its_errors_told(
    open_page: Any, fake: FakeUpstream
) -> None:
    page = open_page()
    answer_with(page, "run_js")
    page.click("#answer button.run-js")
    out = text_when(page, "pre.run-output", "later")
    assert out == 'hi 2 {"a":1}\nlater\n'
    assert page.inner_text("#answer button.run-js") == "Run"  # it ended by itself
    answer_with(page, "run_js_error")
    page.click("#answer button.run-js")
    out = text_when(page, "pre.run-output", "TypeError")
    assert out.startswith("before\n") and "TypeError" in out
    assert page.query_selector("pre.run-output .run-error") is not None


@pytest.mark.parametrize("size", ["desktop", "phone"])
def test_a_script_that_never_ends_is_stopped_and_the_page_still_responds(
    open_page: Any, fake: FakeUpstream, size: str
) -> None:
    page = open_page(size)
    answer_with(page, "run_js_loop")
    page.click("#answer button.run-js")
    time.sleep(1)
    assert page.inner_text("#answer button.run-js") == "Stop"
    page.fill("#prompt", "still typing")  # the page's own thread is free
    assert page.input_value("#prompt") == "still typing"
    out = text_when(page, "pre.run-output", "Stopped", timeout=10)
    assert "Stopped: the run passed 5 s." in out
    assert page.inner_text("#answer button.run-js") == "Run"
    # Stop, before the limit.
    page.click("#answer button.run-js")
    time.sleep(0.5)
    page.click("#answer button.run-js")
    assert page.inner_text("pre.run-output").endswith("Stopped.")
    assert page.query_selector("iframe[title='JavaScript runner']") is None
    # A page whose script never ends: the browser runs it apart, and it is removed.
    answer_with(page, "preview_html_loop")
    page.click("#answer button.preview")
    time.sleep(1)
    page.fill("#prompt", "typing again")
    assert page.input_value("#prompt") == "typing again"
    note = text_when(page, "#answer .preview-note", "stopped", timeout=10)
    assert "stopped responding" in note
    assert page.query_selector("#answer div.preview iframe") is None


def test_a_stored_answer_has_preview_too(
    open_page: Any, server: Server, fake: FakeUpstream
) -> None:
    page = open_page()
    answer_with(page, "preview_styled")
    page.click("#saved-link")
    page.wait_for_selector("#answer button.preview")
    page.click("#answer button.preview")
    title = page.frame_locator("#answer div.preview iframe").locator("#title")
    assert title.inner_text(timeout=10_000) == "Styled"


def test_the_preview_document_is_sandboxed_and_loads_nothing(client: FlaskClient) -> None:
    response = client.get("/static/preview.html")
    response.close()  # a static file's stream
    policy = response.headers["Content-Security-Policy"]
    for rule in (
        "sandbox allow-scripts;",
        "default-src 'none'",
        "connect-src 'none'",
        "img-src data: blob:",
        "form-action 'none'",
        "frame-ancestors 'self'",
    ):
        assert rule in policy
    assert "allow-same-origin" not in policy
    assert response.headers["X-Frame-Options"] == "SAMEORIGIN"
    # The app's own pages may not be framed, so the preview cannot show one.
    assert client.get("/answers").headers["X-Frame-Options"] == "DENY"
