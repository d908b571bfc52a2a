"""The history on the page, in real Chromium: find an answer after a reload,
refine it into versions and compare them, share and revoke, Continue a cut
answer, download its code; with the script and without it; and two browsers
that never see each other's answers."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from functools import partial
from typing import Any

import pytest

from tests.conftest import Server
from tests.fake_upstream import ANSWERS, FakeUpstream
from tests.helpers import wait_idle
from tests.web.test_page import DESKTOP, PHONE, SHOTS, serious_violations, wait_until

pytestmark = pytest.mark.browser


@pytest.fixture(params=["sqlite", "postgresql"])
def server(request: pytest.FixtureRequest, serve: Any, fake: FakeUpstream) -> Server:
    """The page on both history databases: SQLite in DATA_DIR, and a database of
    this module's on the real PostgreSQL server."""
    if request.param == "sqlite":
        found: Server = serve()
        return found
    import psycopg

    cluster: str = request.getfixturevalue("postgres_server")
    with psycopg.connect(cluster.replace("+psycopg", ""), autocommit=True) as connection:
        exists = connection.execute("SELECT 1 FROM pg_database WHERE datname = 'pages'").fetchone()
        if not exists:
            connection.execute("CREATE DATABASE pages")
    found = serve(DATABASE_URL=cluster.rsplit("/", 1)[0] + "/pages")
    return found


@pytest.fixture()
def context_for(chromium: Any, server: Server) -> Iterator[Any]:
    """Fresh browser contexts (each its own cookies: its own owner)."""
    contexts = []
    foreign: list[str] = []

    def make(**options: Any) -> Any:
        context = chromium.new_context(**options)
        context.on(
            "request", lambda r: None if r.url.startswith(server.url) else foreign.append(r.url)
        )
        contexts.append(context)
        return context

    yield make
    for context in contexts:
        context.close()
    assert foreign == [], f"requests to other origins: {foreign}"


def ask(page: Any, text: str, max_tokens: str | None = None) -> None:
    """Send the form with the script (Ctrl+Enter) and wait for the whole answer: on the
    form, its saved answer's link; on an answer's page (Refine), the new version's page,
    which follows it to its end."""
    page.fill("#prompt", text)
    if max_tokens is not None:
        page.fill("#max_tokens", max_tokens)
    before = page.url
    page.press("#prompt", "Control+Enter")
    if "/a/" in before:
        page.wait_for_url(lambda url: url != before)
        wait_answered(page)
        return
    wait_idle(page)
    page.wait_for_selector("#saved-link")


def wait_answered(page: Any) -> None:
    """On an answer's page: until the answer it follows (if it was running) has ended."""
    page.wait_for_selector("#answer:not([data-running])", state="attached")
    wait_idle(page)


def cut_without_javascript(context_for: Any, server: Server, text: str) -> Any:
    """A page with no script, its answer (t0 to t7) cut at 5 tokens: the page is back."""
    page = context_for(java_script_enabled=False).new_page()
    page.goto(server.url + "/")
    page.fill("#prompt", f"{text} [[fake tokens=8 obey_max=1]]")
    page.fill("#max_tokens", "5")
    page.click("#generate")
    page.wait_for_selector(".saved a")
    return page


def open_saved(page: Any) -> str:
    """The answer's own page (a Refine is on its page already): its id."""
    if not re.search(r"/a/[\w-]+$", page.url):
        page.click("#saved-link")
        page.wait_for_url(re.compile(r"/a/[\w-]+$"))
    return str(page.url.rsplit("/", 1)[1])


def test_an_answer_is_found_in_the_history_after_a_reload(
    context_for: Any, server: Server, fake: FakeUpstream
) -> None:
    page = context_for().new_page()
    page.goto(server.url + "/")
    ask(page, "Palindrome for the history [[fake answer=code]]")
    page.reload()
    page.fill("#history-q", "palindrome for the")
    page.press("#history-q", "Enter")
    page.wait_for_selector("#history-clear")  # filtered (in place)
    entries = page.locator(".history-list a")
    assert entries.count() == 1
    entries.first.click()
    page.wait_for_url(re.compile(r"/a/[\w-]+$"))
    assert "def is_palindrome" in page.inner_text("#answer figure.codeblock pre.highlight")
    assert page.query_selector("#answer strong").inner_text() == "normalises"
    page.fill("#history-q", "nothing like this")
    page.press("#history-q", "Enter")
    page.wait_for_selector(".history p:has-text('No answer matches')")


def test_a_new_answer_joins_the_history_without_a_reload(
    context_for: Any, server: Server, fake: FakeUpstream
) -> None:
    page = context_for().new_page()
    page.goto(server.url + "/")
    assert "Your answers will be listed here" in page.inner_text(".history")
    ask(page, "First <b>one</b> [[fake tokens=2]]")
    ask(page, "Second one [[fake tokens=2]]")
    entries = page.locator(".history-list a")
    assert entries.all_inner_texts() == [
        "Second one [[fake tokens=2]]",
        "First <b>one</b> [[fake tokens=2]]",
    ]
    assert "Your answers will be listed here" not in page.inner_text(".history")
    entries.nth(1).click()
    page.wait_for_url(re.compile(r"/a/[\w-]+$"))
    assert page.inner_text("h2.asked").endswith("First <b>one</b> [[fake tokens=2]]")


def test_refine_twice_then_compare_three_versions(
    context_for: Any, server: Server, fake: FakeUpstream
) -> None:
    page = context_for().new_page()
    page.goto(server.url + "/")
    ask(page, "Sum a range [[fake answer=runnable]]")
    open_saved(page)
    assert page.query_selector("#answer figure.codeblock button.run")  # stored, still runnable
    ask(page, "Now make it raise [[fake answer=raising]]")
    assert "def parse" in page.inner_text("#answer")  # the new version streamed in
    open_saved(page)
    ask(page, "Back to the palindrome [[fake answer=code]]")
    open_saved(page)
    versions = page.locator("nav.versions li")
    assert versions.count() == 3
    assert page.inner_text("nav.versions [aria-current=page]") == "Version 3"
    # The follow-up carried the conversation: the third request held both earlier answers.
    sent = fake.records_for("Back to the palindrome")[-1].body["messages"]
    assert [m["role"] for m in sent] == ["system", "user", "assistant", "user", "assistant", "user"]
    page.select_option("form.compare select[name=a]", label="Version 1")
    page.click("#compare")
    page.wait_for_url(re.compile(r"/compare\?"))
    diff = page.inner_text("#diff")
    assert "--- version 1" in diff and "+++ version 3" in diff
    assert "-print(sum(range(10)))" in diff
    assert "+def is_palindrome(text: str) -> bool:" in diff
    assert page.query_selector("#diff span.add") and page.query_selector("#diff span.del")


def test_share_opens_without_cookies_and_revoking_makes_it_404(
    context_for: Any, server: Server, fake: FakeUpstream
) -> None:
    page = context_for().new_page()
    page.goto(server.url + "/")
    ask(page, "A markdown answer to share [[fake answer=markdown]]")
    open_saved(page)
    page.click("#share-button")
    link = page.get_attribute("#share-url", "href")
    assert link and "/s/" in link
    stranger = context_for().new_page()
    response = stranger.goto(link)
    assert response.status == 200
    assert response.headers["cache-control"] == "no-store"
    assert "slugify" in stranger.inner_text("main")
    assert stranger.query_selector("meta[name=robots][content*=noindex]")
    assert not stranger.query_selector("#prompt-form")  # read-only: nothing to send
    page.click("#unshare")
    assert page.query_selector("#share-button")
    assert stranger.goto(link).status == 404


def test_continue_joins_a_cut_answer_with_no_seam(
    context_for: Any, server: Server, fake: FakeUpstream
) -> None:
    page = context_for().new_page()
    page.goto(server.url + "/")
    ask(page, "Count for me [[fake tokens=8 obey_max=1 id=seam]]", max_tokens="5")
    assert page.inner_text("#answer").strip() == "t0 t1 t2 t3 t4"
    assert "Max tokens" in page.inner_text("#stats")
    open_saved(page)
    page.click("#continue")
    page.wait_for_selector("#stats:not([hidden]):has-text('First token')")
    wait_idle(page)
    assert page.inner_text("#answer").split() == [f"t{i}" for i in range(8)]
    assert page.is_hidden("#continue-form")  # it ended on its own this time
    page.reload()  # the stored answer is the whole, once
    assert page.inner_text("#answer").split() == [f"t{i}" for i in range(8)]
    assert not page.query_selector("#continue")


def test_continue_on_the_live_page_right_after_the_cut(
    context_for: Any, server: Server, fake: FakeUpstream
) -> None:
    page = context_for().new_page()
    page.goto(server.url + "/")
    ask(page, "Count for me [[fake tokens=8 obey_max=1 id=live]]", max_tokens="5")
    assert page.inner_text("#answer").strip() == "t0 t1 t2 t3 t4"
    assert "Continue carries it on" in page.inner_text("#stats")
    page.click("#continue-live")
    wait_idle(page)
    page.wait_for_selector("#saved-link")
    assert page.inner_text("#answer").split() == [f"t{i}" for i in range(8)]
    assert not page.query_selector("#continue-live")  # it ended on its own this time
    open_saved(page)  # stored once, whole
    assert page.inner_text("#answer").split() == [f"t{i}" for i in range(8)]


def test_continue_right_after_the_cut_without_javascript(
    context_for: Any, server: Server, fake: FakeUpstream
) -> None:
    page = cut_without_javascript(context_for, server, "No script, cut here")
    assert "Continue carries it on" in page.inner_text(".stats")
    page.click("#continue")
    page.wait_for_selector(".saved a")
    assert page.inner_text(".rendered").split() == [f"t{i}" for i in range(8)]
    assert not page.query_selector("#continue")


def test_download_a_code_block(context_for: Any, server: Server, fake: FakeUpstream) -> None:
    page = context_for(accept_downloads=True).new_page()
    page.goto(server.url + "/")
    ask(page, "Code to download [[fake answer=code]]")
    open_saved(page)
    with page.expect_download() as info:
        page.click(".downloads a[download]")
    download = info.value
    assert download.suggested_filename == "snippet-1.py"
    with open(download.path()) as saved:
        content = saved.read()
    expected = ANSWERS["code"].split("```python\n")[1].split("```")[0]
    assert content == expected


def test_two_browsers_never_see_each_others_answers(
    context_for: Any, server: Server, fake: FakeUpstream
) -> None:
    mine = context_for().new_page()
    mine.goto(server.url + "/")
    ask(mine, "Only mine to see [[fake tokens=3]]")
    answer_id = open_saved(mine)
    theirs = context_for().new_page()
    theirs.goto(server.url + "/")
    assert "Only mine to see" not in theirs.inner_text("body")
    assert theirs.goto(f"{server.url}/a/{answer_id}").status == 404
    assert theirs.goto(f"{server.url}/a/{answer_id}/download/1").status == 404
    theirs.goto(server.url + "/")
    token = theirs.get_attribute("input[name=csrf_token]", "value")
    for action in ("delete", "share"):
        refused = theirs.request.post(
            f"{server.url}/a/{answer_id}/{action}", form={"csrf_token": token}
        )
        assert refused.status == 404
    assert mine.goto(f"{server.url}/a/{answer_id}").status == 200


def test_the_history_works_without_javascript(
    context_for: Any, server: Server, fake: FakeUpstream
) -> None:
    page = context_for(java_script_enabled=False).new_page()
    page.goto(server.url + "/")
    page.fill("#prompt", "No script, first version [[fake answer=runnable]]")
    page.click("#generate")
    page.wait_for_selector(".saved a")
    page.click(".saved a")
    page.wait_for_url(re.compile(r"/a/[\w-]+$"))
    page.fill("#prompt", "No script, refined [[fake answer=code]]")
    page.click("#generate")
    page.wait_for_selector(".saved a")
    page.click(".saved a")
    assert page.locator("nav.versions li").count() == 2
    page.click("#compare")
    assert "+def is_palindrome" in page.inner_text("#diff")
    page.go_back()
    page.click("#share-button")
    link = page.get_attribute("#share-url", "href")
    assert link and context_for().new_page().goto(link).status == 200
    page.click("#delete-conversation")
    page.click("#confirm-delete")
    page.wait_for_url(server.url + "/")
    assert "No script, first version" not in page.inner_text(".history")


@pytest.mark.parametrize("scheme", ["light", "dark"])
@pytest.mark.parametrize("size", ["desktop", "phone"])
def test_the_history_pages_pass_the_audit(
    context_for: Any, server: Server, fake: FakeUpstream, scheme: str, size: str
) -> None:
    viewport = DESKTOP if size == "desktop" else PHONE
    page = context_for(color_scheme=scheme, viewport=viewport).new_page()
    page.goto(server.url + "/")
    ask(page, "Slugs, audited [[fake answer=markdown]]")
    assert serious_violations(page) == [], "the form with a saved answer"
    open_saved(page)
    ask(page, "Shorter, audited [[fake answer=code]]")
    open_saved(page)
    page.click("#share-button")
    assert serious_violations(page) == [], "an answer's page"
    page.screenshot(path=str(SHOTS / f"history-answer-{size}-{scheme}.png"), full_page=True)
    link = page.get_attribute("#share-url", "href")
    page.click("#compare")
    assert serious_violations(page) == [], "the compare page"
    page.screenshot(path=str(SHOTS / f"history-compare-{size}-{scheme}.png"), full_page=True)
    page.goto(link)
    assert serious_violations(page) == [], "a shared answer"
    assert page.evaluate("document.documentElement.scrollWidth") <= viewport["width"]


def test_escape_stops_the_answer_and_the_upstream(
    context_for: Any, server: Server, fake: FakeUpstream
) -> None:
    page = context_for().new_page()
    page.goto(server.url + "/")
    page.fill("#prompt", "forever [[fake forever=1 delay=0.05 id=esc]]")
    page.press("#prompt", "Control+Enter")
    page.wait_for_selector("#stop:not([hidden])")
    wait_until(page, "document.querySelector('#answer').textContent.length > 10")
    page.keyboard.press("Escape")
    wait_idle(page)
    assert page.inner_text("#stats").startswith("Stopped.")
    closed = fake.wait_closed(1, timeout=3)
    assert closed and closed[0].how == "client_closed"


def test_continue_and_a_trimmed_follow_up_without_javascript(
    context_for: Any, server: Server, fake: FakeUpstream
) -> None:
    page = cut_without_javascript(context_for, server, "No script, cut")
    assert "Max tokens" in page.inner_text(".stats")
    page.click(".saved a")
    page.click("#continue")
    page.wait_for_selector(".saved a")
    assert page.inner_text(".rendered").split() == [f"t{i}" for i in range(8)]
    page.click(".saved a")
    assert page.inner_text("#answer").split() == [f"t{i}" for i in range(8)]
    assert not page.query_selector("#continue")


@pytest.fixture()
def short_grace(serve: Any, fake: FakeUpstream) -> Server:
    """A server that ends an answer 2 s after its last reader left (RESUME_GRACE=2)."""
    found: Server = serve(RESUME_GRACE="2")
    return found


@pytest.mark.parametrize("size", ["desktop", "phone"])
def test_an_answers_page_follows_it_live_with_stop_and_never_cuts_it(
    chromium: Any, short_grace: Server, fake: FakeUpstream, size: str
) -> None:
    viewport = DESKTOP if size == "desktop" else PHONE
    context = chromium.new_context(viewport=viewport)
    try:
        page = context.new_page()
        page.goto(short_grace.url + "/")
        page.fill("#prompt", f"Long, {size} [[fake tokens=80 delay=0.05]]")
        page.press("#prompt", "Control+Enter")
        wait_until(page, "document.getElementById('answer').innerText.includes('t3')")
        # To its own page, mid-stream (the history's link, as it is listed at once).
        page.goto(short_grace.url + page.get_attribute(".history-list li:first-child a", "href"))
        # Live there: Stop in reach, and the text grows to the end, well past the grace.
        stop = page.wait_for_selector("#stop:not([hidden])").bounding_box()
        assert stop["y"] >= 0 and stop["y"] + stop["height"] <= viewport["height"]
        wait_until(page, "document.getElementById('answer').innerText.includes('t60')")
        wait_answered(page)
        whole = [f"t{i}" for i in range(80)]
        assert page.inner_text("#answer").split() == whole
        assert page.is_hidden("#stop")
        page.reload()  # as stored: whole, not cut when the first page was left
        assert page.inner_text("#answer").split() == whole
        assert page.is_hidden("#stats"), page.inner_text("#stats")
        # An endless one: its page's Stop stops it, and the upstream with it.
        page.goto(short_grace.url + "/")
        page.fill("#prompt", f"Endless, {size} [[fake forever=1 delay=0.05]]")
        page.press("#prompt", "Control+Enter")
        wait_until(page, "document.getElementById('answer').innerText.includes('t3')")
        page.goto(short_grace.url + page.get_attribute(".history-list li:first-child a", "href"))
        page.click("#stop")
        wait_answered(page)
        assert page.inner_text("#stats").startswith("Stopped.")
        closed = fake.wait_closed(2, timeout=3)
        assert [c.how for c in closed][-1] == "client_closed", closed
        page.reload()
        assert "ended early: stopped" in page.inner_text("#stats")
    finally:
        context.close()


def test_refine_opens_the_new_version_whose_actions_act_on_it(
    context_for: Any, server: Server, fake: FakeUpstream
) -> None:
    for viewport in (DESKTOP, PHONE):
        page = context_for(viewport=viewport, accept_downloads=True).new_page()
        page.goto(server.url + "/")
        ask(page, "First version [[fake answer=runnable]]")
        first = open_saved(page)
        page.fill("#prompt", "Second version [[fake answer=code delay=0.05]]")
        page.press("#prompt", "Control+Enter")
        # The new version's own page, while it streams.
        page.wait_for_url(re.compile(rf"/a/(?!{first}$)[\w-]+$"))
        assert page.inner_text("h2.asked").startswith("Version 2: Second version")
        assert page.inner_text("nav.versions [aria-current=page]") == "Version 2"
        wait_answered(page)
        assert "def is_palindrome" in page.inner_text("#answer")
        with page.expect_download() as info:  # version 2's code, not version 1's
            page.click(".downloads a[download]")
        with open(info.value.path()) as saved:
            assert saved.read().startswith("def is_palindrome")
        page.click("#share-button")
        stranger = context_for().new_page()
        stranger.goto(page.get_attribute("#share-url", "href"))
        assert "def is_palindrome" in stranger.inner_text("main")
        page.once("dialog", lambda dialog: dialog.accept())
        page.click("#delete-answer")  # the version shown: version 1 stays
        page.wait_for_url(f"**/a/{first}")
        assert page.locator("nav.versions li").count() == 1
        assert "print(sum(range(10)))" in page.inner_text("#answer")


def test_an_answer_being_written_is_followed_and_stopped_without_javascript(
    chromium: Any, short_grace: Server, fake: FakeUpstream
) -> None:
    scripted = chromium.new_context()
    plain = chromium.new_context(java_script_enabled=False)
    try:
        page = scripted.new_page()
        page.goto(short_grace.url + "/")
        for directive in ("tokens=80 delay=0.05", "forever=1 delay=0.05"):
            # Begun with the script, then read in a browser without it (the same owner).
            page.goto(short_grace.url + "/")
            page.fill("#prompt", f"Read without the script [[fake {directive}]]")
            page.press("#prompt", "Control+Enter")
            wait_until(page, "document.getElementById('answer').innerText.includes('t3')")
            link = page.get_attribute(".history-list li:first-child a", "href")
            plain.add_cookies(scripted.cookies())
            reader = plain.new_page()
            reader.goto(short_grace.url + link)
            reader.click("#follow-live")
            reader.wait_for_selector("#noscript-answer:has-text('t6')")
            page.goto(short_grace.url + "/docs")  # the page that began it is gone
            if directive.startswith("tokens"):
                reader.wait_for_selector(".rendered", timeout=15_000)
                whole = [f"t{i}" for i in range(80)]
                assert reader.inner_text(".rendered").split() == whole
                reader.click("#answer-page")
                assert reader.inner_text("#answer").split() == whole  # never cut
                assert reader.is_hidden("#stats")
            else:
                reader.click("#stop-live")
                reader.wait_for_url(f"**{link}")
                assert "ended early: stopped" in reader.inner_text("#stats")
                closed = fake.wait_closed(2, timeout=3)
                assert [c.how for c in closed][-1] == "client_closed", closed
            reader.close()
    finally:
        scripted.close()
        plain.close()


def test_filtering_the_history_keeps_the_prompt_and_can_be_cleared(
    context_for: Any, server: Server, fake: FakeUpstream
) -> None:
    for viewport in (DESKTOP, PHONE):
        page = context_for(viewport=viewport).new_page()
        page.goto(server.url + "/")
        ask(page, "Alpha to find [[fake tokens=2]]")
        ask(page, "Beta to find [[fake tokens=3]]")
        page.fill("#prompt", "A draft still being typed")
        page.fill("#temperature", "0.9")
        page.fill("#history-q", "alpha")
        page.press("#history-q", "Enter")
        wait_until(page, "document.querySelectorAll('.history-list li').length === 1")
        assert page.inner_text(".history-list").startswith("Alpha to find")
        assert page.input_value("#prompt") == "A draft still being typed"
        assert page.input_value("#temperature") == "0.9"
        assert page.inner_text("#answer").split() == ["t0", "t1", "t2"]  # still shown
        assert "q=alpha" in page.url  # a reload lists the same
        page.click("#history-clear")
        wait_until(page, "document.querySelectorAll('.history-list li').length === 2")
        assert "q=" not in page.url and not page.query_selector("#history-clear")
        assert page.input_value("#prompt") == "A draft still being typed"
    # Without the script the filter is part of the prompt form: the page comes back with
    # the list filtered and the prompt being typed still there; Clear lists everything.
    plain = context_for(java_script_enabled=False).new_page()
    for text in ("Gamma, no script [[fake tokens=2]]", "Delta, no script [[fake tokens=2]]"):
        plain.goto(server.url + "/")
        plain.fill("#prompt", text)
        plain.click("#generate")
        plain.wait_for_selector(".saved a")
    plain.goto(server.url + "/")
    plain.fill("#prompt", "A draft without the script")
    plain.fill("#temperature", "0.9")
    plain.fill("#history-q", "gamma")
    plain.press("#history-q", "Enter")
    plain.wait_for_selector("#history-clear")
    assert plain.locator(".history-list li").count() == 1
    assert plain.input_value("#prompt") == "A draft without the script"
    assert plain.input_value("#temperature") == "0.9"
    plain.click("#history-clear")
    plain.wait_for_selector("#history-clear", state="detached")
    assert plain.locator(".history-list li").count() == 2
    assert plain.input_value("#prompt") == "A draft without the script"
    plain.fill("#history-q", "delta")
    plain.click("#history-filter")  # the button, as Enter
    plain.wait_for_selector("#history-clear")
    assert plain.inner_text(".history-list").startswith("Delta, no script")
    assert plain.input_value("#prompt") == "A draft without the script"
    # On an answer's page too, its Refine box kept; and Enter elsewhere still generates.
    plain.click(".history-list a")
    plain.wait_for_url(re.compile(r"/a/[\w-]+$"))
    plain.fill("#prompt", "A refinement being typed")
    plain.fill("#history-q", "gamma")
    plain.press("#history-q", "Enter")
    plain.wait_for_selector("#history-clear")
    assert plain.inner_text("h2.asked").startswith("Version 1: Delta")
    assert plain.input_value("#prompt") == "A refinement being typed"
    assert plain.inner_text(".history-list").startswith("Gamma, no script")
    plain.goto(server.url + "/")
    plain.fill("#prompt", "Sent by Enter, no script [[fake tokens=2]]")
    plain.press("#max_tokens", "Enter")
    plain.wait_for_selector(".saved a")
    assert plain.inner_text(".rendered").split() == ["t0", "t1"]


def answer_dialog(asked: list[str], accept: bool) -> Callable[[Any], None]:
    """A dialog handler that notes the question, then accepts or declines."""

    def on_dialog(dialog: Any) -> None:
        asked.append(dialog.message)
        dialog.accept() if accept else dialog.dismiss()

    return on_dialog


def test_delete_asks_first_and_says_what_it_did(
    context_for: Any, server: Server, fake: FakeUpstream
) -> None:
    for viewport in (DESKTOP, PHONE):
        page = context_for(viewport=viewport).new_page()
        page.goto(server.url + "/")
        ask(page, "Keep or delete [[fake tokens=2]]")
        first = open_saved(page)
        ask(page, "The second of two [[fake tokens=2]]")
        asked: list[str] = []
        answer = partial(answer_dialog, asked)
        page.once("dialog", answer(False))
        page.click("#delete-answer")  # asked, and declined: nothing goes
        assert asked == ["Delete version 2? This cannot be undone."]
        page.reload()
        assert page.locator("nav.versions li").count() == 2
        page.once("dialog", answer(True))
        page.click("#delete-answer")
        page.wait_for_url(f"**/a/{first}")
        assert (
            page.inner_text("#done")
            == "Version 2 (“The second of two [[fake tokens=2]]”) was deleted."
        )
        assert page.locator("nav.versions li").count() == 1
        page.once("dialog", answer(True))
        page.click("#delete-conversation")
        page.wait_for_url(server.url + "/")
        assert asked[-1] == "Delete this conversation (1 version)? This cannot be undone."
        assert (
            page.inner_text("#done")
            == "The conversation “Keep or delete [[fake tokens=2]]” (1 version) was deleted."
        )
        assert "Keep or delete" not in page.inner_text(".history")
        assert serious_violations(page) == [], "the page that says what was deleted"
        page.reload()
        assert not page.query_selector("#done")  # said once
        ask(page, "To be asked about [[fake tokens=2]]")
        page.goto(
            server.url + f"/a/{open_saved(page)}/delete"
        )  # where the Delete button goes without the script
        assert serious_violations(page) == [], "the page that asks"
    # Without the script: a page asks, and Cancel keeps it.
    plain = context_for(java_script_enabled=False).new_page()
    plain.goto(server.url + "/")
    plain.fill("#prompt", "Deleted without the script [[fake tokens=2]]")
    plain.click("#generate")
    plain.click(".saved a")
    plain.wait_for_url(re.compile(r"/a/[\w-]+$"))
    kept = plain.url
    plain.click("#delete-answer")
    assert plain.inner_text("h2") == "Delete version 1?"
    plain.click("#cancel-delete")
    plain.wait_for_url(kept)
    plain.click("#delete-conversation")
    assert plain.inner_text("h2") == "Delete this conversation (1 version)?"
    plain.click("#confirm-delete")
    plain.wait_for_url(server.url + "/")
    assert "Deleted without the script" in plain.inner_text("#done")
    assert "Deleted without the script" not in plain.inner_text(".history")
