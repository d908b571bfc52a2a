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
from tests.fake_upstream import ANSWERS, FakeUpstream
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
    # Room for the block and what follows it, so the page need not scroll under the press.
    page = open_page(permissions=["clipboard-read", "clipboard-write"], viewport=DESKTOP)
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
        assert page.inner_text(f"{root} h2") == "Overview"  # after the page's h1
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


# Links whose centre is on screen but under something else (the fixed Stop, say).
COVERED_LINKS = """() => [...document.querySelectorAll("a[href]")].filter((a) => {
    const box = a.getBoundingClientRect();
    const x = box.left + box.width / 2, y = box.top + box.height / 2;
    if (!box.width || x < 0 || y < 0 || x >= innerWidth || y >= innerHeight) return false;
    const top = document.elementFromPoint(x, y);
    return !(top && (top === a || a.contains(top)));
}).map((a) => a.textContent.trim() || a.href)"""
# The share of the screen the history box takes, and where the answer's end is.
ON_SCREEN = """() => {
    const aside = document.querySelector("aside.history").getBoundingClientRect();
    const shown = Math.max(0, Math.min(aside.bottom, innerHeight) - Math.max(aside.top, 0));
    const end = document.getElementById("answer").getBoundingClientRect().bottom;
    const stop = document.getElementById("stop").getBoundingClientRect();
    return { history: shown / innerHeight, end, stopTop: stop.top, height: innerHeight };
}"""


def test_stop_stays_on_screen_and_the_page_follows_on_a_phone(
    open_page: Any, fake: FakeUpstream
) -> None:
    phone = {"width": 390, "height": 844}
    page = open_page(viewport=phone, has_touch=True, is_mobile=True)
    for n in range(3):  # links in the history box, under the answer on a phone
        submit(page, f"Listed {n}, a prompt long enough to fill a line or two [[fake tokens=2]]")
        page.wait_for_selector("#saved-link")
    assert page.is_hidden("kbd")  # no Enter/Esc on a touch screen to press as told
    submit(page, "Endless [[fake forever=1 delay=0.005 pad=6]]")
    wait_until(page, "document.documentElement.scrollHeight > 2 * window.innerHeight")
    for _ in range(5):  # while it follows the stream
        time.sleep(0.3)
        box = page.query_selector("#stop").bounding_box()
        assert box["y"] >= 0 and box["y"] + box["height"] <= phone["height"]
        seen = page.evaluate(ON_SCREEN)
        # The streaming text's end is in view, above Stop; not the page's bottom.
        assert 0 < seen["end"] <= seen["stopTop"], seen
        assert seen["history"] < 0.15, seen
        assert page.evaluate(COVERED_LINKS) == []
    page.screenshot(path=str(SHOTS / "page-phone-streaming.png"))
    # Read down to the history while it streams: Stop covers none of its links.
    page.evaluate("window.scrollTo(0, document.documentElement.scrollHeight)")
    time.sleep(0.3)
    assert page.is_visible(".history-list a")
    assert page.evaluate(COVERED_LINKS) == []
    page.click("#stop")
    wait_idle(page)
    assert page.evaluate(COVERED_LINKS) == []


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


def audit(page: Any, rules: list[str]) -> list[str]:
    """axe-core's findings of any impact for these rules only."""
    if not page.evaluate("typeof window.axe !== 'undefined'"):
        page.evaluate(axe_source())
    found: list[str] = page.evaluate(
        """async (rules) => {
            const result = await axe.run(document, {runOnly: rules, resultTypes: ["violations"]});
            return result.violations.map((v) => v.id + ": " + v.nodes.map((n) => n.target));
        }""",
        rules,
    )
    return found


def test_example_prompts_fill_the_form_with_and_without_javascript(
    open_page: Any, fake: FakeUpstream
) -> None:
    for scripted in (True, False):
        for viewport in (DESKTOP, PHONE):
            page = open_page(java_script_enabled=scripted, viewport=viewport)
            example = page.query_selector("a.example")
            text = example.inner_text().strip()
            assert example.is_visible() and len(page.query_selector_all("a.example")) >= 3
            example.click()
            if scripted:  # filled in place: nothing typed elsewhere is lost
                wait_until(page, "document.activeElement.id === 'prompt'")
                assert "example" not in page.url
                # Offered only while the box is empty: a click never replaces typed text.
                page.wait_for_selector(".examples", state="hidden")
                page.fill("#prompt", "")
                page.wait_for_selector(".examples", state="visible")
                page.fill("#prompt", text)
            else:
                page.wait_for_url("**/?example=0")
            assert page.input_value("#prompt") == text
    page = open_page()
    page.query_selector_all("a.example")[1].click()
    page.keyboard.press("End")
    page.keyboard.type(" [[fake]]")
    page.press("#prompt", "Enter")  # and off it goes
    page.wait_for_selector("#stats:not([hidden]) #saved-link")


def test_enter_sends_and_shift_enter_adds_a_line(open_page: Any, fake: FakeUpstream) -> None:
    page = open_page()
    page.fill("#prompt", "First line [[fake]]")
    page.press("#prompt", "Shift+Enter")
    page.type("#prompt", "second line")
    assert page.input_value("#prompt") == "First line [[fake]]\nsecond line"
    assert page.inner_text("#answer") == ""  # nothing was sent
    page.press("#prompt", "Enter")
    page.wait_for_selector("#stats:not([hidden]) #saved-link")
    assert "t0 t1" in page.inner_text("#answer")
    assert page.input_value("#prompt") == "First line [[fake]]\nsecond line"  # no newline added
    page.fill("#temperature", "0.3")
    page.press("#temperature", "Control+Enter")  # Ctrl+Enter still sends, from any field
    wait_until(page, "document.querySelectorAll('.history-list li').length === 2")
    wait_idle(page)
    # On a touch screen the keyboard's Enter is a new line: its send is the button.
    phone = open_page(viewport=PHONE, has_touch=True, is_mobile=True)
    phone.fill("#prompt", "On a phone [[fake]]")
    phone.press("#prompt", "Enter")
    assert phone.input_value("#prompt") == "On a phone [[fake]]\n"
    assert phone.is_enabled("#generate") and phone.inner_text("#answer") == ""


def test_copy_on_a_block_that_just_opened_copies_what_is_there(
    open_page: Any, fake: FakeUpstream
) -> None:
    for stall, expected in ((9, None), (11, "def is_palindrome(text:")):
        page = open_page(permissions=["clipboard-read", "clipboard-write"])
        page.evaluate("navigator.clipboard.writeText('before')")
        submit(page, f"Just opened [[fake answer=code stall_after={stall} delay=0.02]]")
        figure = page.wait_for_selector("#answer figure.codeblock.streaming")
        wait_until(page, "document.querySelector('figcaption span').textContent === 'python'")
        figure.query_selector("button.copy").click()
        if expected is None:  # nothing arrived in it yet: the clipboard is left alone
            page.wait_for_selector("button.copy:has-text('Nothing to copy yet')")
            assert page.evaluate("navigator.clipboard.readText()") == "before"
        else:
            page.wait_for_selector("button.copy:has-text('Copied')")
            assert page.evaluate("navigator.clipboard.readText()") == expected
        wait_idle(page)
    # Where the clipboard refuses, the button says so (never "Copied") and selects the code.
    page = open_page()
    page.add_init_script("navigator.clipboard.writeText = () => Promise.reject(new Error('no'))")
    page.reload()
    submit(page, "Refused [[fake answer=code]]")
    wait_idle(page)
    page.click("figure.codeblock button.copy")
    page.wait_for_selector("button.copy:has-text('Copy failed')")
    assert page.evaluate("getSelection().toString()").startswith("def is_palindrome(")


def test_focus_stays_when_a_block_is_highlighted_and_when_the_answer_ends(
    open_page: Any, fake: FakeUpstream
) -> None:
    for viewport in (DESKTOP, PHONE):
        page = open_page(viewport=viewport)
        submit(page, "Keyboard reader [[fake answer=code delay=0.08]]")
        page.wait_for_selector("#answer figure.codeblock.streaming")
        page.focus("#answer figure.codeblock pre")
        page.wait_for_selector("#answer figure.codeblock:not(.streaming) pre.highlight")
        focused = "document.activeElement.matches('#answer figure.codeblock pre.highlight')"
        assert page.evaluate(focused), page.evaluate("document.activeElement.outerHTML")
        page.keyboard.press("Shift+Tab")  # to the block's Copy, while the prose streams on
        assert page.evaluate("document.activeElement.matches('#answer button.copy')")
        wait_idle(page)
        page.wait_for_selector("#stats:not([hidden]) #saved-link")
        assert page.evaluate("document.activeElement.matches('#answer button.copy')"), (
            page.evaluate("document.activeElement.outerHTML")
        )
        page.keyboard.press("Enter")  # and it still works from the keyboard
        page.wait_for_selector(
            "button.copy:has-text('Copied'), button.copy:has-text('Copy failed')"
        )


def test_answer_headings_never_skip_a_level_nor_shrink_below_the_text(
    open_page: Any, fake: FakeUpstream, server: Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(
        ANSWERS, "qwen", "```python\nprint(1)\n```\n\n### Explanation:\n\nIt prints one.\n"
    )
    for answer in ("markdown", "qwen"):
        for scripted in (True, False):
            page = open_page()
            root = "#answer" if scripted else ".rendered"
            if scripted:
                submit(page, f"Headings [[fake answer={answer}]]")
                wait_idle(page)
            else:  # the no-script result page, as the server sends it after a form post
                session = requests.Session()
                token = csrf_token_of(session.get(server.url + "/", timeout=5).text)
                form = {"csrf_token": token, "prompt": f"Headings [[fake answer={answer}]]"}
                page.set_content(session.post(server.url + "/", data=form, timeout=30).text)
            page.wait_for_selector(f"{root} h2")
            assert audit(page, ["heading-order"]) == [], (answer, scripted)
            sizes = page.evaluate(
                f"""() => [...document.querySelectorAll("{root} h2, {root} h3, {root} p")]
                    .map((e) => [e.tagName, parseFloat(getComputedStyle(e).fontSize)])"""
            )
            body = max(size for tag, size in sizes if tag == "P")
            assert all(size > body for tag, size in sizes if tag != "P"), sizes
        # The answer's own page, under its "Version 1" heading.
        page = open_page()
        submit(page, f"Headings again [[fake answer={answer}]]")
        wait_idle(page)
        page.click("#saved-link")
        page.wait_for_selector("#answer h2")
        assert audit(page, ["heading-order"]) == [], answer


def test_the_prompt_size_shows_before_sending_and_errors_are_in_words(
    open_page: Any, fake: FakeUpstream
) -> None:
    page = open_page()
    streams: list[str] = []
    page.on("request", lambda r: streams.append(r.url) if "/ui/stream" in r.url else None)
    assert page.inner_text("#prompt-size") == "Up to 200 tokens."
    page.fill("#prompt", "A function that adds two numbers")
    wait_until(page, "document.getElementById('prompt-size').textContent.startsWith('About')")
    assert page.inner_text("#prompt-size") == "About 6 of 200 tokens."
    page.fill("#prompt", "word " * 400)
    wait_until(page, "document.getElementById('prompt-size').className.includes('over')")
    assert "over the limit of 200" in page.inner_text("#prompt-size")
    limit = int(page.get_attribute("#prompt", "data-max-bytes"))  # MAX_BODY_BYTES
    page.fill("#prompt", "long " * (limit // 5 + 2_000))  # over the server's body limit
    page.press("#prompt", "Enter")
    page.wait_for_selector("#error:not([hidden])")
    message = page.inner_text("#error")
    room = -(-(limit - 1024) // 1024)  # KB, rounded up: the body's other fields take 1 KB
    assert f"over this server's limit of {room} KB: shorten it" in message, message
    assert "request body" not in message and "bytes" not in message
    assert streams == []  # refused before sending
    assert page.get_attribute("#prompt", "aria-invalid") == "true"
    page.fill("#prompt", "Fine [[fake]]")
    page.fill("#temperature", "5")
    page.press("#prompt", "Enter")
    page.wait_for_selector("#temperature[aria-invalid=true]")
    assert page.inner_text("#error").startswith("Temperature must be at most 2.")
    assert page.evaluate("document.activeElement.id") == "temperature"


def test_offline_says_nothing_was_sent_and_no_status_goes_stale(
    open_page: Any, fake: FakeUpstream
) -> None:
    page = open_page()
    page.context.set_offline(True)
    page.fill("#prompt", "Sent while offline [[fake]]")
    page.press("#prompt", "Control+Enter")
    page.wait_for_selector("#error:not([hidden])")
    wait_idle(page)
    message = page.inner_text("#error")
    assert "offline, so nothing was sent" in message and "What arrived" not in message
    assert page.input_value("#prompt") == "Sent while offline [[fake]]"
    assert not page.is_visible("#stats")
    assert "Waiting" not in page.inner_text("#status")
    page.context.set_offline(False)
    page.press("#prompt", "Control+Enter")
    page.wait_for_selector("#stats:not([hidden]) #saved-link")


def test_reconnecting_that_fails_says_so(open_page: Any, fake: FakeUpstream) -> None:
    page = open_page()
    # The stream breaks off after a word, and the answer cannot be picked up again.
    page.route(
        "**/ui/stream",
        lambda route: route.fulfill(
            status=200,
            headers={"Content-Type": "application/x-ndjson", "X-Answer-ID": "gone"},
            body='{"type":"delta","text":"Half an ","seq":8}\n',
        ),
    )
    submit(page, "Breaks off [[fake]]")
    page.wait_for_selector("#error:not([hidden])", timeout=20_000)
    wait_idle(page)
    assert "Reconnecting…" not in page.inner_text("#stats")
    assert page.inner_text("#stats").startswith("Reconnecting failed.")
    assert page.inner_text("#status") == "Reconnecting failed."
    assert "Half an" in page.inner_text("#answer")


def test_after_stop_the_saved_answer_is_a_link_away(open_page: Any, fake: FakeUpstream) -> None:
    page = open_page()
    submit(page, "Endless [[fake forever=1 delay=0.05]]")
    wait_until(page, "document.getElementById('answer').innerText.length > 20")
    page.click("#stop")
    wait_idle(page)
    link = page.wait_for_selector("#stats a#saved-link")
    assert page.inner_text("#stats").startswith("Stopped.")
    link.click()
    page.wait_for_selector("#answer .rendered")
    assert "/a/" in page.url and "t0 t1" in page.inner_text("#answer")


SETTLED = """() => {
    const shown = [];
    for (const el of document.querySelectorAll("#answer > *:not(.tail), #answer > .tail > *")) {
        if (el.matches("figure")) break;
        const link = el.querySelector("a");
        shown.push([el.tagName, el.innerText.trim(), link ? link.getAttribute("href") : null]);
    }
    return shown;
}"""


def test_streaming_prose_is_markdown_by_the_final_rules(
    open_page: Any, fake: FakeUpstream, monkeypatch: pytest.MonkeyPatch
) -> None:
    # While it streams (it never ends), the prose before the code block is what it will be.
    page = open_page()
    submit(page, "Slugs [[fake answer=markdown forever=1 delay=0.02]]")
    page.wait_for_selector("#answer figure.codeblock:not(.streaming)")
    assert page.evaluate("document.getElementById('generate').disabled")  # still streaming
    streaming = page.evaluate(SETTLED)
    text = page.inner_text("#answer")
    assert "## Overview" not in text and "[the docs](" not in text and "| ---" not in text, text
    assert page.inner_text("#answer h2") == "Overview"
    link = page.query_selector('#answer a[href="https://example.com/slug"]')
    assert link and link.get_attribute("rel") == "noopener noreferrer"
    assert page.query_selector('#answer a[href^="javascript"]') is None
    page.click("#stop")
    wait_idle(page)
    # The same answer, ended: the server's HTML, which the page then shows.
    done = open_page()
    submit(done, "Slugs [[fake answer=markdown]]")
    wait_idle(done)
    done.wait_for_selector("#stats #saved-link")
    assert streaming == done.evaluate(SETTLED)
    # The growing paragraph is Markdown too: a heading that has not settled yet is one.
    monkeypatch.setitem(ANSWERS, "heading", "Intro.\n\n### Steps")
    growing = open_page()
    submit(growing, "Heading [[fake answer=heading forever=1 delay=0.3]]")
    growing.wait_for_selector("#answer h2")
    assert growing.inner_text("#answer h2").startswith("Steps")
    growing.click("#stop")
    wait_idle(growing)
    # And model text stays text while it streams, as in the end.
    hostile = open_page()
    submit(hostile, "show me [[fake answer=xss forever=1 delay=0.02]]")
    hostile.wait_for_selector("#answer figure.codeblock:not(.streaming)")
    text = hostile.inner_text("#answer")
    assert "<script>window.__pwned = 1</script>" in text
    assert '<img src=x onerror="window.__pwned = 2">' in text
    assert hostile.query_selector("#answer img, #answer script") is None
    assert hostile.evaluate("window.__pwned") is None
    hostile.click("#stop")
    wait_idle(hostile)


@pytest.mark.parametrize("scheme", ["light", "dark"])
@pytest.mark.parametrize("size", ["desktop", "phone"])
def test_the_page_and_an_answers_page_have_no_audit_finding_of_any_impact(
    open_page: Any, fake: FakeUpstream, scheme: str, size: str
) -> None:
    page = open_page(color_scheme=scheme, viewport=DESKTOP if size == "desktop" else PHONE)
    everything = ["wcag2a", "wcag2aa", "wcag21a", "wcag21aa", "best-practice"]
    assert audit(page, everything) == []
    submit(page, "Slugs [[fake answer=markdown delay=0.05]]")
    page.wait_for_selector("#answer figure.codeblock")
    assert audit(page, everything) == [], "during the stream"
    wait_idle(page)
    assert audit(page, everything) == [], "after the answer"
    page.click("#saved-link")
    page.wait_for_selector("#answer h2")
    assert audit(page, everything) == [], "the answer's page"


def test_a_reload_before_the_first_token_or_mid_stream_keeps_the_answer_and_the_form(
    open_page: Any, fake: FakeUpstream
) -> None:
    for viewport in (DESKTOP, PHONE):
        for when, directive in (("before", "first_delay=1.5 tokens=4"), ("mid", "tokens=40")):
            page = open_page(viewport=viewport)
            sent = f"Reload {when} [[fake {directive} delay=0.05]]"
            page.fill("#prompt", sent)
            page.select_option("#language", "Go")
            page.fill("#temperature", "0.7")
            page.fill("#max_tokens", "300")
            page.press("#prompt", "Control+Enter")
            # The answer is named in the address at once, before its first token.
            wait_until(page, "location.search.includes('answer=')", timeout=1.0)
            if when == "mid":
                wait_until(page, "document.getElementById('answer').innerText.includes('t3')")
            else:
                assert page.inner_text("#answer") == ""
            page.reload()
            assert page.input_value("#prompt") == sent  # Regenerate has it to send again
            assert page.input_value("#language") == "Go"
            assert page.input_value("#temperature") == "0.7"
            assert page.input_value("#max_tokens") == "300"
            page.wait_for_selector("#stats:not([hidden]):has-text('First token')")
            wait_idle(page)
            count = 4 if when == "before" else 40
            assert page.inner_text("#answer").split() == [f"t{i}" for i in range(count)]
            assert "answer=" not in page.url


# The page's request, sent for real, whose response never reaches the page's script:
# as when the page is reloaded before the answer's id arrives, whatever the timing.
HOLD_STREAM = """() => {
    const original = window.fetch;
    window.fetch = (url, options) => {
        if (url !== "/ui/stream") return original(url, options);
        if (window.__send) original(url, options).catch(() => {});
        return new Promise(() => {});
    };
}"""


def test_a_reload_before_the_answers_id_arrived_keeps_the_request(
    open_page: Any, fake: FakeUpstream
) -> None:
    for viewport in (DESKTOP, PHONE):
        marker = f"early{viewport['width']}"
        page = open_page(viewport=viewport)
        sent = f"Reload at once [[fake first_delay=1 tokens=4 delay=0.05 id={marker}]]"
        page.evaluate(HOLD_STREAM)
        page.evaluate("window.__send = true")
        page.fill("#prompt", sent)
        page.select_option("#language", "Go")
        page.fill("#temperature", "0.7")
        page.press("#prompt", "Control+Enter")
        deadline = time.monotonic() + 5
        while not fake.records_for(marker):  # the server began it; the page knows no id
            assert time.monotonic() < deadline, "the request never reached the upstream"
            time.sleep(0.02)
        assert "answer=" not in page.url
        page.reload()
        assert page.input_value("#prompt") == sent
        assert page.input_value("#language") == "Go"
        assert page.input_value("#temperature") == "0.7"
        wait_until(page, "location.search.includes('answer=')")
        page.wait_for_selector("#stats:not([hidden]):has-text('First token')")
        wait_idle(page)
        assert page.inner_text("#answer").split() == [f"t{i}" for i in range(4)]
        # A request that never reached the server: its prompt and settings come back.
        page.goto(page.url.split("?")[0])
        page.evaluate(HOLD_STREAM)
        page.fill("#prompt", "Never sent")
        page.fill("#temperature", "0.3")
        page.press("#prompt", "Control+Enter")
        page.wait_for_selector("#stop:not([hidden])")
        page.reload()
        assert page.input_value("#prompt") == "Never sent"
        assert page.input_value("#temperature") == "0.3"
        page.wait_for_selector("#notice:has-text('send it again')", timeout=5000)
        assert page.is_enabled("#generate")
