"""The pages around an answer, in Chromium (issue 35): a shared answer (`/s/<id>`) has
Copy, Run and downloads of its code and a way to try the app; a shared answer and the
compare page that show an answer still being written follow it live, with and without
the script, and never cut it."""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import pytest

from tests.conftest import IN_CI, ROOT, Server
from tests.fake_upstream import FakeUpstream
from tests.helpers import wait_idle
from tests.web.test_page import DESKTOP, PHONE, SHOTS, audit, wait_until

pytestmark = pytest.mark.browser


@pytest.fixture()
def short_grace(serve: Any, fake: FakeUpstream) -> Server:
    """A server that ends an answer 2 s after its last reader left (RESUME_GRACE=2), and
    lets one run 30 s (a page followed through its row is up to 2 s behind)."""
    found: Server = serve(RESUME_GRACE="2", TOTAL_TIMEOUT="30")
    return found


@pytest.fixture()
def context_for(chromium: Any) -> Iterator[Any]:
    """Fresh browser contexts (each its own cookies: its own owner)."""
    contexts: list[Any] = []

    def make(**options: Any) -> Any:
        context = chromium.new_context(**options)
        contexts.append(context)
        return context

    yield make
    for context in contexts:
        context.close()


def pyodide_installed() -> bool:
    if list((ROOT / "static" / "pyodide").glob("*/pyodide.asm.wasm")):
        return True
    if IN_CI:
        pytest.fail("Pyodide is not installed in static/ (make test copies it from npm)")
    return False


def start(page: Any, server: Server, text: str) -> str:
    """Send `text` from the form and wait until its answer is listed: its own page's path."""
    page.goto(server.url + "/")
    page.fill("#prompt", text)
    page.press("#prompt", "Control+Enter")
    page.wait_for_selector(".history-list li:first-child a")
    return str(page.get_attribute(".history-list li:first-child a", "href"))


def share(page: Any, server: Server, answer_path: str) -> str:
    """The answer's share link, made on its page."""
    page.goto(server.url + answer_path)
    page.click("#share-button")
    return str(page.get_attribute("#share-url", "href"))


def test_a_shared_answer_has_copy_run_download_and_a_way_in(
    context_for: Any, short_grace: Server, fake: FakeUpstream
) -> None:
    owner = context_for().new_page()
    path = start(owner, short_grace, "Sum it [[fake answer=runnable]]")
    wait_idle(owner)
    link = share(owner, short_grace, path)
    for viewport in (DESKTOP, PHONE):
        stranger = context_for(
            viewport=viewport,
            accept_downloads=True,
            permissions=["clipboard-read", "clipboard-write"],
        ).new_page()
        stranger.goto(link)
        stranger.click("figure.codeblock button.copy")
        wait_until(stranger, "navigator.clipboard.readText().then(t => t.length > 0)")
        assert stranger.evaluate("navigator.clipboard.readText()").startswith(
            "print(sum(range(10)))"
        )
        with stranger.expect_download() as info:
            stranger.click(".downloads a[download]")
        with open(info.value.path()) as saved:
            assert saved.read() == "print(sum(range(10)))\nprint('done')\n"
        if pyodide_installed():
            stranger.click("figure.codeblock button.run")
            stranger.wait_for_selector("pre.run-output:has-text('done')", timeout=60_000)
            assert "45\ndone" in stranger.inner_text("pre.run-output")
        else:
            assert not stranger.query_selector("button.run")  # no Pyodide, no Run
        box = stranger.query_selector("#try-it").bounding_box()
        assert box["width"] > 0 and box["x"] + box["width"] <= viewport["width"]
        assert "Try" in stranger.inner_text("#try-it")
        stranger.click("#try-it")
        stranger.wait_for_url(short_grace.url + "/")
        assert stranger.query_selector("#prompt-form")
    # Without the script: the download and the way in still work; no dead buttons.
    plain = context_for(java_script_enabled=False, accept_downloads=True).new_page()
    plain.goto(link)
    assert not plain.is_visible("figure.codeblock button.copy")
    assert not plain.query_selector("button.run")
    with plain.expect_download() as info:
        plain.click(".downloads a[download]")
    with open(info.value.path()) as saved:
        assert saved.read().startswith("print(sum(range(10)))")
    plain.click("#try-it")
    plain.wait_for_url(short_grace.url + "/")


def text_of(page: Any, selector: str) -> str:
    found = page.query_selector(selector)
    return str(found.text_content()) if found else ""


def grows(page: Any, selector: str) -> None:
    """The text under `selector` is seen short of its end, then longer."""
    wait_until(page, f"(document.querySelector({selector!r}) || {{}}).textContent?.includes('t5')")
    first = len(text_of(page, selector))
    assert "t199" not in text_of(page, selector)
    wait_until(
        page,
        f"document.querySelector({selector!r}).textContent.length > {first}",
        timeout=15,
    )


WHOLE = [f"t{i}" for i in range(200)]


@pytest.mark.parametrize("size", ["desktop", "phone"])
def test_a_shared_answer_still_being_written_is_followed_live_and_never_cut(
    context_for: Any, short_grace: Server, fake: FakeUpstream, size: str
) -> None:
    viewport = DESKTOP if size == "desktop" else PHONE
    owner = context_for(viewport=viewport).new_page()
    path = start(owner, short_grace, f"Shared live, {size} [[fake tokens=200 delay=0.04]]")
    link = share(owner, short_grace, path)
    stranger = context_for(viewport=viewport).new_page()
    plain = context_for(viewport=viewport, java_script_enabled=False).new_page()
    for reader in (stranger, plain):
        reader.goto(link, wait_until="commit")
    owner.goto(link, wait_until="commit")  # the owner leaves their page for the link
    for reader in (owner, stranger, plain):
        grows(reader, "#live-answer")
    for name, reader in (("owner", owner), ("stranger", stranger), ("plain", plain)):
        reader.wait_for_selector("#answer .rendered", timeout=20_000)
        assert reader.inner_text("#answer .rendered").split() == WHOLE, name
        assert reader.is_hidden("#live-note")
        assert reader.is_hidden("#live-answer")
    owner.goto(short_grace.url + path)  # as stored: whole
    assert owner.inner_text("#answer").split() == WHOLE
    assert owner.is_hidden("#stats"), owner.inner_text("#stats")


@pytest.mark.parametrize("size", ["desktop", "phone"])
def test_the_compare_page_follows_a_version_being_written_then_compares(
    context_for: Any, short_grace: Server, fake: FakeUpstream, size: str
) -> None:
    viewport = DESKTOP if size == "desktop" else PHONE
    for script in (True, False):
        page = context_for(viewport=viewport).new_page()
        path = start(page, short_grace, f"First, {size} [[fake answer=runnable]]")
        wait_idle(page)
        page.goto(short_grace.url + path)
        page.fill("#prompt", f"Second, {size} [[fake tokens=200 delay=0.04]]")
        page.press("#prompt", "Control+Enter")
        page.wait_for_url(re.compile(rf"/a/(?!{path.rsplit('/', 1)[1]}$)[\w-]+$"))
        wait_until(page, "document.getElementById('answer').innerText.includes('t3')")
        compare = page.get_attribute("form.compare", "action")
        if script:
            reader = page  # the same tab leaves the answer's page for the comparison
        else:
            plain = context_for(viewport=viewport, java_script_enabled=False)
            plain.add_cookies(page.context.cookies())
            reader = plain.new_page()
        reader.goto(short_grace.url + compare, wait_until="commit")
        if not script:
            page.goto(short_grace.url + "/docs")  # the page that began it is gone
        grows(reader, "#live-version")
        reader.wait_for_selector("#diff", timeout=20_000)
        assert reader.is_hidden("#live-version") and reader.is_hidden("#live-note")
        diff = reader.inner_text("#diff")
        assert "-print(sum(range(10)))" in diff and "+t0 t1" in diff and "t199" in diff
        reader.goto(short_grace.url + path)
        reader.click("nav.versions a:has-text('Version 2')")
        reader.wait_for_selector("#answer:not([data-running])", state="attached")
        assert reader.inner_text("#answer").split() == WHOLE, "never cut"


EVERYTHING = ["wcag2a", "wcag2aa", "wcag21a", "wcag21aa", "best-practice"]


@pytest.mark.parametrize("scheme", ["light", "dark"])
@pytest.mark.parametrize("size", ["desktop", "phone"])
def test_shared_compare_and_docs_have_no_audit_finding_of_any_impact(
    context_for: Any, short_grace: Server, fake: FakeUpstream, scheme: str, size: str
) -> None:
    viewport = DESKTOP if size == "desktop" else PHONE
    options = {"color_scheme": scheme, "viewport": viewport}
    docs = context_for(**options).new_page()
    docs.goto(short_grace.url + "/docs")
    assert audit(docs, EVERYTHING) == [], "the API docs"
    owner = context_for(**options).new_page()
    path = start(owner, short_grace, f"Slugs, audited {size} {scheme} [[fake answer=markdown]]")
    wait_idle(owner)
    owner.goto(short_grace.url + path)
    owner.fill("#prompt", "Shorter, audited [[fake answer=code delay=0.1]]")
    owner.press("#prompt", "Control+Enter")
    owner.wait_for_url(re.compile(rf"/a/(?!{path.rsplit('/', 1)[1]}$)[\w-]+$"))
    owner.click("#share-button")
    link = owner.get_attribute("#share-url", "href")
    compare = owner.context.new_page()
    action = owner.get_attribute("form.compare", "action")
    compare.goto(short_grace.url + action, wait_until="commit")
    shared = context_for(**options).new_page()
    shared.goto(link, wait_until="commit")
    # During the answer: each page shows it as it comes.
    compare.wait_for_selector("#live-version")
    assert audit(compare, EVERYTHING) == [], "the compare page, during"
    shared.wait_for_selector("#live-answer")
    assert audit(shared, EVERYTHING) == [], "a shared answer, during"
    # After it: the comparison, and the answer with its Copy, Run and downloads.
    compare.wait_for_selector("#diff", timeout=20_000)
    assert audit(compare, EVERYTHING) == [], "the compare page, after"
    shared.wait_for_selector("#answer .rendered", timeout=20_000)
    assert audit(shared, EVERYTHING) == [], "a shared answer, after"
    shared.reload()  # as it is stored, with the script's buttons
    shared.wait_for_selector("figure.codeblock button.copy")
    assert audit(shared, EVERYTHING) == [], "a shared answer, stored"
    assert shared.evaluate("document.documentElement.scrollWidth") <= viewport["width"]
    shared.screenshot(path=str(SHOTS / f"history-shared-{size}-{scheme}.png"), full_page=True)
    compare.reload()
    assert audit(compare, EVERYTHING) == [], "the compare page, stored"
    compare.screenshot(path=str(SHOTS / f"history-compare-{size}-{scheme}.png"), full_page=True)
