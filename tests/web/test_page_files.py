"""Attached files on the page, in Debian's Chromium: picked, dropped on the prompt, or a
long paste turned into a file; each shown with its name, size and tokens and removable;
the bounds said before sending and the server's refusals said in words; without the
script, the same form posts them as multipart."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from tests.conftest import Server
from tests.fake_upstream import FakeUpstream
from tests.helpers import submit, wait_idle
from tests.web.test_page import serious_violations, wait_until

pytestmark = pytest.mark.browser
DESKTOP = {"width": 1100, "height": 900}
PHONE = {"width": 390, "height": 740}
CALC = "def add(a, b):\n    return a + b\n"


@pytest.fixture()
def open_page(chromium: Any, server: Server) -> Iterator[Any]:
    contexts: list[Any] = []

    def make(path: str = "/", size: str = "desktop", **options: Any) -> Any:
        viewport = DESKTOP if size == "desktop" else PHONE
        context = chromium.new_context(viewport=viewport, **options)
        contexts.append(context)
        page = context.new_page()
        page.goto(server.url + path)
        return page

    yield make
    for context in contexts:
        context.close()


def pick(page: Any, *files: tuple[str, bytes]) -> None:
    page.set_input_files(
        "#files", files=[{"name": n, "mimeType": "text/plain", "buffer": b} for n, b in files]
    )


def chips(page: Any) -> list[str]:
    texts: list[str] = page.eval_on_selector_all(
        "#attachments li", "items => items.map((li) => li.innerText.replace(/\\s+/g, ' ').trim())"
    )
    return texts


def wait_chips(page: Any, count: int) -> list[str]:
    wait_until(page, f"document.querySelectorAll('#attachments li').length === {count}")
    return chips(page)


def sent_files(fake: FakeUpstream) -> str:
    """What the model was shown: the last request's user message."""
    return str(fake.records[-1].body["messages"][-1]["content"])


@pytest.mark.parametrize("size", ["desktop", "phone"])
def test_a_picked_file_is_shown_removable_and_sent_to_the_model(
    open_page: Any, fake: FakeUpstream, size: str
) -> None:
    page = open_page(size=size)
    pick(page, ("calc.py", CALC.encode()), ("notes.txt", b"remember the edge cases\n"))
    shown = wait_chips(page, 2)
    assert shown[0].startswith("calc.py 32 bytes · about ") and "tokens" in shown[0]
    assert shown[1].startswith("notes.txt 24 bytes")
    # Each is removable by a button named for it; focus stays on the list.
    page.get_by_role("button", name="Remove notes.txt").click()
    assert wait_chips(page, 1)[0].startswith("calc.py")
    assert page.evaluate("document.activeElement.getAttribute('aria-label')") == "Remove calc.py"
    assert serious_violations(page) == []
    chip = page.query_selector("#attachments li").bounding_box()
    assert chip["x"] + chip["width"] <= page.viewport_size["width"]
    # The counter counts the file with the prompt.
    page.fill("#prompt", "Add type hints")
    assert "with its files" in page.inner_text("#prompt-size")
    page.press("#prompt", "Control+Enter")
    wait_idle(page)
    seen = sent_files(fake)
    assert "File `calc.py`:" in seen and "def add(a, b):" in seen
    assert "notes.txt" not in seen
    assert page.input_value("#files") == ""  # the list holds them, not the input


def test_a_file_dropped_on_the_prompt_is_attached(open_page: Any, fake: FakeUpstream) -> None:
    page = open_page()
    # What a drop of a file from the desktop delivers (Playwright cannot drag from outside).
    transfer = page.evaluate_handle(
        """() => {
            const transfer = new DataTransfer();
            transfer.items.add(new File(["x = 1\\n"], "dropped.py", { type: "text/x-python" }));
            return transfer;
        }"""
    )
    page.dispatch_event("#prompt", "dragover", {"dataTransfer": transfer})
    assert "dropping" in page.get_attribute("#prompt", "class")
    page.dispatch_event("#prompt", "drop", {"dataTransfer": transfer})
    assert wait_chips(page, 1)[0].startswith("dropped.py 6 bytes")
    assert "dropping" not in (page.get_attribute("#prompt", "class") or "")
    assert page.input_value("#prompt") == ""  # the file, not its text, went in
    submit(page, "Explain it [[fake tokens=3]]")
    wait_idle(page)
    assert "File `dropped.py`:" in sent_files(fake)


def test_a_long_paste_becomes_a_file_and_the_servers_refusal_names_it(
    open_page: Any, fake: FakeUpstream
) -> None:
    page = open_page(permissions=["clipboard-read", "clipboard-write"])
    page.select_option("select[name=language]", "Python")
    code = "".join(f"value_{n} = {n}\n" for n in range(60))  # 60 lines
    page.evaluate("(text) => navigator.clipboard.writeText(text)", code)
    page.fill("#prompt", "Sum these: ")
    page.focus("#prompt")
    page.keyboard.press("End")
    page.keyboard.press("Control+V")
    assert wait_chips(page, 1)[0].startswith("pasted-1.py")
    assert page.input_value("#prompt") == "Sum these: "
    assert "pasted-1.py" in page.inner_text("#files-note")
    # A short paste stays text.
    page.evaluate("() => navigator.clipboard.writeText('and more')")
    page.keyboard.press("Control+V")
    assert page.input_value("#prompt") == "Sum these: and more"
    # Its tokens pass the server's limit (200 here): the page says so first...
    assert "over the limit of 200" in page.inner_text("#prompt-size")
    page.click("#generate")
    # ... and the server's refusal names the file, in words, marking the file input.
    page.wait_for_selector("#error:not([hidden])")
    error = page.inner_text("#error")
    assert error.startswith("The file “pasted-1.py”: the prompt and its files are")
    assert "limit of 200" in error
    assert page.get_attribute("#files", "aria-invalid") == "true"
    assert fake.records == []


def test_binary_too_large_and_too_many_files_are_refused_before_sending(
    open_page: Any, fake: FakeUpstream
) -> None:
    page = open_page()
    pick(page, ("logo.png", b"\x89PNG\r\n\x1a\n\x00\x00\xff\xfe"))
    wait_until(page, "document.getElementById('files-note').classList.contains('over')")
    assert page.inner_text("#files-note") == (
        "“logo.png” is not a text file (UTF-8): only text files can be attached."
    )
    assert chips(page) == []
    pick(page, ("big.py", b"x" * 100_001))
    wait_until(page, "document.getElementById('files-note').innerText.includes('big.py')")
    assert "“big.py” is 100 KB, over the limit of 100 KB per file." in page.inner_text(
        "#files-note"
    )
    pick(page, *[(f"f{n}.py", b"x = 1\n") for n in range(9)])
    assert len(wait_chips(page, 8)) == 8
    assert "“f8.py” was not attached: at most 8 files." in page.inner_text("#files-note")
    # One of the same name replaces its chip instead of adding one.
    pick(page, ("f0.py", b"x = 2  # again\n"))
    wait_until(page, "document.querySelector('#attachments li').innerText.includes('15 bytes')")
    assert len(chips(page)) == 8
    assert fake.records == []


@pytest.mark.parametrize("size", ["desktop", "phone"])
def test_without_javascript_the_form_posts_the_files(
    open_page: Any, fake: FakeUpstream, size: str
) -> None:
    page = open_page(size=size, java_script_enabled=False)
    assert page.is_visible("#files") and "Up to 8 text files, 100 KB each." in page.inner_text(
        "#files-note"
    )
    assert not page.is_visible("#files-note .js-only")
    pick(page, ("calc.py", CALC.encode()))
    page.fill("#prompt", "Add type hints [[fake answer=edit]]")
    page.click("#generate")
    page.wait_for_selector(".rendered")
    assert "File `calc.py`:" in sent_files(fake)
    # A binary file: the form again, with the refusal in words and the picker marked.
    page.goto(page.url.split("?")[0])
    pick(page, ("logo.png", b"\x89PNG\x00\xff"))
    page.fill("#prompt", "Describe it")
    page.click("#generate")
    page.wait_for_selector("#error:not([hidden])")
    assert page.inner_text("#error").startswith(
        "The file “logo.png”: this is not UTF-8 text; only text files can be attached."
    )
    assert page.get_attribute("#files", "aria-invalid") == "true"
    assert page.input_value("#prompt") == "Describe it"
    assert len(fake.records) == 1


def test_a_reload_before_the_answer_is_named_brings_the_files_back(
    open_page: Any, fake: FakeUpstream
) -> None:
    page = open_page()
    pick(page, ("calc.py", CALC.encode()))
    wait_chips(page, 1)
    # A request remembered in the tab, as the page keeps one until its answer is named.
    pending = {"p": {"prompt": "Never sent", "files": [{"name": "calc.py", "content": CALC}]}}
    page.evaluate(
        "(pending) => sessionStorage.setItem('scg-pending-request', JSON.stringify("
        "{...pending, page: location.pathname, sentAt: Date.now()}))",
        pending,
    )
    page.reload()
    assert wait_chips(page, 1)[0].startswith("calc.py 32 bytes")
    assert page.input_value("#prompt") == "Never sent"
    assert json.loads(page.evaluate("JSON.stringify(window.attachments.files())")) == [
        {"name": "calc.py", "content": CALC}
    ]


def test_with_attaching_turned_off_there_is_no_picker_and_the_counter_still_counts(
    chromium: Any, serve: Callable[..., Server], fake: FakeUpstream
) -> None:
    server = serve(MAX_FILES="0")
    context = chromium.new_context()
    try:
        page = context.new_page()
        page.goto(server.url + "/")
        assert page.query_selector("#files") is None
        page.fill("#prompt", "one two three")
        wait_until(
            page, "document.getElementById('prompt-size').textContent === 'About 3 of 200 tokens.'"
        )
    finally:
        context.close()
