"""Which block is which file, and the diffs: pure functions, no server."""

from __future__ import annotations

import pytest

from webapp.relay.attachments import (
    MAX_CHANGED_FILES,
    Attachment,
    changes,
    fenced,
    with_files,
)
from webapp.relay.codeblocks import extract_code_blocks

CALC = Attachment("calc.py", "def add(a, b):\n    return a + b\n")


def files_of(text: str, files: list[Attachment]) -> tuple[list[dict[str, str]], list[dict]]:
    blocks = extract_code_blocks(text)
    return blocks, changes(text, blocks, files)


@pytest.mark.parametrize(
    "text",
    [
        "```python calc.py\ndef add(a, b):\n    return b + a\n```\n",
        '```python title="calc.py"\ndef add(a, b):\n    return b + a\n```\n',
        "```calc.py\ndef add(a, b):\n    return b + a\n```\n",
        "**calc.py**\n```python\ndef add(a, b):\n    return b + a\n```\n",
        "`calc.py`:\n```python\ndef add(a, b):\n    return b + a\n```\n",
    ],
)
def test_a_block_names_its_file_on_its_fence_or_the_line_before(text: str) -> None:
    other = Attachment("other.py", "x = 1\n")
    blocks, found = files_of(text, [CALC, other])
    assert blocks[0]["file"] == "calc.py"
    assert [(f["name"], f["status"]) for f in found] == [("calc.py", "changed")]
    assert "+    return b + a\n" in found[0]["diff"]


def test_with_one_attachment_the_longest_block_in_its_language_is_it() -> None:
    text = (
        "```python\nprint(add(1, 2))\n```\n"
        "```python\ndef add(a, b):\n    '''Sum.'''\n    return a + b\n```\n"
        "```bash\npython calc.py\n```\n"
    )
    blocks, found = files_of(text, [CALC])
    assert [b.get("file") for b in blocks] == [None, "calc.py", None]
    assert found[0]["status"] == "changed"


def test_an_unchanged_file_is_not_listed_and_with_two_files_no_guess_is_made() -> None:
    same = "```python calc.py\ndef add(a, b):\n    return a + b\n```\n"
    assert files_of(same, [CALC])[1] == []
    unnamed = "```python\ndef add(a, b):\n    return b + a\n```\n"
    blocks, found = files_of(unnamed, [CALC, Attachment("b.py", "")])
    assert found == [] and "file" not in blocks[0]


def test_an_answer_naming_many_files_lists_at_most_the_bound() -> None:
    text = "".join(f"```python f{n}.py\nx = {n}\n```\n" for n in range(MAX_CHANGED_FILES + 50))
    text += "```python calc.py\ndef add(a, b):\n    return b + a\n```\n"
    _, found = files_of(text, [CALC])
    assert len(found) == MAX_CHANGED_FILES
    assert found[0]["name"] == "calc.py"  # the attached file is diffed first
    assert found[1] == {
        "name": "f0.py",
        "status": "new",
        "diff": "--- /dev/null\n+++ b/f0.py\n@@ -0,0 +1,1 @@\n+x = 0\n",
    }


def test_a_file_holding_fences_gets_a_longer_fence() -> None:
    notes = Attachment("notes.md", "Run:\n```sh\nmake\n```\n")
    shown = fenced(notes)
    assert shown.startswith("File `notes.md`:\n````markdown notes.md\n")
    assert shown.endswith("\n````")
    assert "Attached files:" in with_files("Fix the notes", [notes])
    assert with_files("no files", []) == "no files"
