"""The edit task of `make eval` (`--task edit`): change an attached file, keep what it does.

Each HumanEval problem's canonical solution (its prompt, then its body) is attached
as `solution.py`, and the prompt asks for one named change that must not change
behaviour (EDIT_REQUEST). An answer passes when its version of `solution.py`
differs from the attachment (the diff is not empty) and still passes the
problem's tests, run alone: the file is the whole program, so a version that
drops an import or a helper fails.

Which block is the new `solution.py`: the one the app attributed to it
(`code_blocks[i].file`: its fence names the file, or it is the longest Python
block), else the first Python block. The bare model (`--direct`) gets the user
message the app builds (its own `build_messages`), and its answer goes through
the app's own attribution and diff (`attachments.changes`), so both sides are
judged by one rule.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from bench.sandbox import Outcome, run_program
from webapp import diffs
from webapp.relay.attachments import Attachment, changes
from webapp.relay.codeblocks import extract_code_blocks
from webapp.relay.generation import build_messages

NAME = "solution.py"
EDIT_REQUEST = (
    f"In {NAME}, add type hints to every parameter and return value that lacks one, "
    "and a short comment before each step of every function body. "
    "Do not change what the code does."
)
PYTHON_TAGS = ("", "python", "py", "python3")
# An added line in a body that is a comment, or a variable given a type (`total: int = 0`).
ASKED_FOR = re.compile(r"[ \t]+(#|[A-Za-z_]\w*[ \t]*:[^=\n]+=[^=])")


def attachment(problem: dict[str, Any]) -> str:
    """The file attached for a problem: the canonical solution, whole (without the blank
    lines some start or end with, which an answer's block would drop: not an edit)."""
    return str(problem["prompt"] + problem["canonical_solution"]).strip("\n") + "\n"


def user_message(prompt: str, files: dict[str, str], language: str | None) -> str:
    """The user message the app builds for `prompt` with `files` attached (name: content)."""
    attached = [Attachment(name, content) for name, content in files.items()]
    return build_messages(prompt, language, "", files=attached)[-1]["content"]


def answered(text: str, files: dict[str, str]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """An answer's code blocks and changed files as the app's `done` event lists them."""
    blocks: list[dict[str, Any]] = list(extract_code_blocks(text))
    attached = [Attachment(name, content) for name, content in files.items()]
    return blocks, changes(text, blocks, attached)


def new_version(blocks: list[dict[str, Any]], name: str = NAME) -> tuple[str | None, bool]:
    """(the code judged as the new file, whether the answer named it as that file)."""
    for block in blocks:
        if block.get("file") == name:
            return block["code"], True
    for block in blocks:
        if str(block.get("language", "")).lower() in PYTHON_TAGS:
            return block["code"], False
    return None, False


@dataclass(frozen=True)
class EditVerdict:
    """How an edit ended: `passed`, `unchanged` (no diff, or one of blank lines and
    trailing spaces only), `no_code_block`, `error` (the API refused or failed), or how
    its file ran (`syntax_error`, `wrong_answer`, `timeout`).
    `named`: the answer's block was attributed to the file (a diff the app shows)."""

    kind: str
    detail: str = ""
    named: bool = False
    diff: str = ""


def judge_edit(
    problem: dict[str, Any],
    blocks: list[dict[str, Any]],
    files: list[dict[str, Any]],
) -> EditVerdict:
    """The verdict on one answer's `code_blocks` and `files`, as the `done` event lists
    them (or `answered` finds them in a bare model's text)."""
    code, named = new_version(blocks)
    if code is None:
        return EditVerdict("no_code_block")
    if named:  # the app's own diff (an unchanged file is left out of `files`)
        entry = next((f for f in files if f.get("name") == NAME), None)
        diff = "" if entry is None else str(entry.get("diff") or entry.get("error") or "changed")
    else:  # a block the app shows no diff for: compared here, the same way
        diff = diffs.unified(attachment(problem), code + "\n", f"a/{NAME}", f"b/{NAME}")
    if not diff.strip() or only_blanks(attachment(problem), code):
        return EditVerdict("unchanged", named=named, diff=diff)
    outcome = run_file(problem, code)
    return EditVerdict(outcome.kind, outcome.detail, named, diff)


def only_blanks(old: str, new: str) -> bool:
    """Whether two versions differ only in blank lines and trailing spaces: a diff, but
    not the change asked for."""

    def lines(text: str) -> list[str]:
        return [line.rstrip() for line in text.splitlines() if line.strip()]

    return lines(old) == lines(new)


def as_asked(diff: str) -> bool:
    """Whether a diff looks like the change asked for: it adds a comment or an annotated
    variable inside a function body, or changes a `def` line (its type hints). A
    heuristic, reported beside the pass rate: any diff that keeps the tests passing
    counts as an edit."""
    added = [line[1:] for line in diff.splitlines() if line[:1] == "+" and line[:3] != "+++"]
    return any(ASKED_FOR.match(line) or line.lstrip().startswith("def ") for line in added)


def run_file(problem: dict[str, Any], code: str) -> Outcome:
    """The edited file alone, then the problem's tests."""
    return run_program(f"{code}\n\n\n{problem['test']}\n\ncheck({problem['entry_point']})\n")
