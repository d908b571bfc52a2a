"""An answer's changes to attached files on the page, in Debian's Chromium: each changed
file as a coloured unified diff with its status, the new file and its patch to download,
all of them as a zip or one patch that `git apply` takes; the same without the script;
an answer's page lists what it was given; Refine twice diffs against the version before."""

from __future__ import annotations

import io
import subprocess
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import Server, require_binary
from tests.fake_upstream import FakeUpstream
from tests.helpers import wait_idle
from tests.web.test_page import SHOTS, serious_violations

pytestmark = pytest.mark.browser
DESKTOP = {"width": 1100, "height": 900}
PHONE = {"width": 390, "height": 740}
CALC = "def add(a, b):\n    return a + b\n"
EDITED = 'def add(a: int, b: int) -> int:\n    """Return the sum of a and b."""\n    return a + b\n'


@pytest.fixture()
def open_page(chromium: Any, server: Server) -> Iterator[Any]:
    contexts: list[Any] = []

    def make(size: str = "desktop", script: bool = True) -> Any:
        viewport = DESKTOP if size == "desktop" else PHONE
        context = chromium.new_context(
            viewport=viewport, java_script_enabled=script, accept_downloads=True
        )
        contexts.append(context)
        page = context.new_page()
        page.goto(server.url + "/")
        return page

    yield make
    for context in contexts:
        context.close()


def ask(page: Any, prompt: str, files: dict[str, str] | None = None, script: bool = True) -> None:
    """Send the form (the page's own or an answer's Refine) and wait for its answer."""
    if files:
        page.set_input_files(
            "#files",
            files=[
                {"name": name, "mimeType": "text/plain", "buffer": text.encode()}
                for name, text in files.items()
            ],
        )
        if script:
            page.wait_for_selector(f"#attachments li:nth-child({len(files)})")
    page.fill("#prompt", prompt)
    page.click("#generate")
    if script:
        wait_idle(page)
    else:
        page.wait_for_selector(".rendered")


def diff_lines(page: Any, name: str) -> list[tuple[str, str]]:
    lines: list[tuple[str, str]] = page.eval_on_selector_all(
        f'article.change[data-file="{name}"] pre.diff span',
        "spans => spans.map((s) => [s.className, s.textContent])",
    )
    return [tuple(line) for line in lines]  # type: ignore[misc]


def download(page: Any, selector: str, folder: Path) -> Path:
    with page.expect_download() as waiting:
        page.click(selector)
    target = folder / waiting.value.suggested_filename
    waiting.value.save_as(target)
    return target


@pytest.mark.parametrize(
    ("size", "script"), [("desktop", True), ("phone", True), ("desktop", False), ("phone", False)]
)
def test_an_edit_shows_its_diff_and_the_downloaded_patch_applies(
    open_page: Any, fake: FakeUpstream, tmp_path: Path, size: str, script: bool
) -> None:
    git = require_binary("git")
    page = open_page(size, script)
    ask(page, "Add type hints [[fake answer=edit]]", {"calc.py": CALC}, script)
    page.wait_for_selector("article.change")
    titles = page.eval_on_selector_all(
        "article.change h3", "hs => hs.map((h) => h.textContent.replace(/\\s+/g, ' ').trim())"
    )
    assert titles == ["calc.py changed", "test_calc.py new file"]
    lines = diff_lines(page, "calc.py")
    assert lines[:3] == [
        ("file", "--- a/calc.py"),
        ("file", "+++ b/calc.py"),
        ("hunk", lines[2][1]),
    ]
    assert ("del", "-def add(a, b):") in lines
    assert ("add", "+def add(a: int, b: int) -> int:") in lines
    assert ("same", "     return a + b") in lines
    assert ("file", "--- /dev/null") in diff_lines(page, "test_calc.py")
    # Red and green are the compare page's (and escaped text: no markup came through).
    colours = page.eval_on_selector_all(
        'article.change[data-file="calc.py"] pre.diff span.add, '
        'article.change[data-file="calc.py"] pre.diff span.del',
        "spans => [...new Set(spans.map((s) => getComputedStyle(s).color))]",
    )
    assert len(colours) == 2
    diff_box = page.query_selector('article.change[data-file="calc.py"] pre.diff').bounding_box()
    assert diff_box["x"] + diff_box["width"] <= page.viewport_size["width"]
    # The whole patch applies to the original file with git.
    work = tmp_path / "work"
    work.mkdir()
    (work / "calc.py").write_text(CALC)
    patch = download(page, "#changes-patch", tmp_path)
    subprocess.run([git, "init", "-q"], cwd=work, check=True)
    subprocess.run([git, "apply", str(patch)], cwd=work, check=True)
    assert (work / "calc.py").read_text() == EDITED
    assert (work / "test_calc.py").read_text().startswith("from calc import add\n")
    # One file's patch, its new version and all of it as a zip.
    one = download(page, 'article.change[data-file="calc.py"] a.file-patch', tmp_path)
    assert one.name == "calc.py.patch" and one.read_text().startswith("--- a/calc.py\n")
    new = download(page, 'article.change[data-file="calc.py"] a.new-file', tmp_path)
    assert new.read_text() == EDITED
    bundle = zipfile.ZipFile(io.BytesIO(download(page, "#changes-zip", tmp_path).read_bytes()))
    assert sorted(bundle.namelist()) == ["calc.py", "changes.patch", "test_calc.py"]
    if script and size == "desktop":
        assert serious_violations(page) == []
        page.screenshot(path=str(SHOTS / "page-files.png"), full_page=True)


def refine(page: Any, prompt: str, script: bool) -> None:
    """The answer's page's Refine, then the new version's page as it ended."""
    before = page.url
    page.fill("#prompt", prompt)
    page.click("#generate")
    if not script:
        page.wait_for_selector(".saved a")  # the answer streamed into this page
        page.click(".saved a")
    page.wait_for_url(lambda url: url != before)
    page.wait_for_selector("#changes article.change")
    if script:
        wait_idle(page)


@pytest.mark.parametrize("script", [True, False])
def test_an_answers_page_lists_its_files_and_refine_twice_diffs_against_the_last(
    open_page: Any, fake: FakeUpstream, server: Server, tmp_path: Path, script: bool
) -> None:
    page = open_page("desktop", script)
    ask(page, "Look at this [[fake tokens=3]]", {"calc.py": CALC}, script)
    assert page.query_selector("article.change") is None  # nothing changed
    page.click("#saved-link" if script else ".saved a")
    page.wait_for_selector("#attached")
    assert page.inner_text("#attached h3") == "Files attached"
    assert page.inner_text("#attached li") == "calc.py 32 bytes"
    attached = download(page, "#attached a", tmp_path)
    assert attached.read_text() == CALC
    # Refine 1: the attached file changes.
    refine(page, "Add type hints [[fake answer=edit]]", script)
    assert "Version 2" in page.inner_text("h2.asked")
    assert ("add", "+def add(a: int, b: int) -> int:") in diff_lines(page, "calc.py")
    assert page.inner_text("#attached h3") == "Files it worked on"
    # Refine 2: diffed against version 2's calc.py, not the attachment.
    refine(page, "Add sub [[fake answer=edit2]]", script)
    assert "Version 3" in page.inner_text("h2.asked")
    lines = diff_lines(page, "calc.py")
    assert ("same", '     """Return the sum of a and b."""') in lines
    assert ("add", "+def sub(a: int, b: int) -> int:") in lines
    assert not [text for kind, text in lines if kind == "del"]
    assert page.query_selector('article.change[data-file="test_calc.py"]') is None
    names = page.eval_on_selector_all("#attached li code", "cs => cs.map((c) => c.textContent)")
    assert names == ["calc.py", "test_calc.py"]  # version 2's files, which it worked on


def test_with_the_history_off_the_diff_shows_without_downloads(
    chromium: Any, serve: Callable[..., Server], fake: FakeUpstream
) -> None:
    server = serve(HISTORY="off")
    context = chromium.new_context()
    try:
        page = context.new_page()
        page.goto(server.url + "/")
        ask(page, "Add type hints [[fake answer=edit]]", {"calc.py": CALC})
        page.wait_for_selector("article.change")
        assert ("add", "+def add(a: int, b: int) -> int:") in diff_lines(page, "calc.py")
        assert page.query_selector("#changes a") is None  # nothing stored to download
    finally:
        context.close()
