"""Stored answers as files and diffs: code blocks to download, versions to compare.

Functions over text (no Flask, no store), so the page and the tests use the
same ones. A file's name comes from its block's language; an unknown one is
`.txt`. Several blocks download as one zip. Diffs come from GNU diff in a child
process, bounded in lines and time (webapp/diffs.py).
"""

from __future__ import annotations

import io
import zipfile
from dataclasses import dataclass
from typing import Any

from webapp import diffs
from webapp.diffs import DIFF_TIMEOUT as DIFF_TIMEOUT
from webapp.diffs import MAX_DIFF_LINES as MAX_DIFF_LINES
from webapp.diffs import DiffUnavailable as DiffUnavailable
from webapp.relay.codeblocks import EXTENSIONS

# A zip of an answer: an answer has at most MAX_ANSWER_CHARS of text, so this bounds it too.
ZIP_NAME = "answer-{id}.zip"


PATCH_NAME = "changes.patch"


@dataclass(frozen=True, slots=True)
class CodeFile:
    name: str
    content: str


def file_name(language: str, number: int) -> str:
    """`snippet-2.py` for the second block, tagged python; `.txt` when unknown."""
    extension = EXTENSIONS.get(language.strip().lower(), "txt")
    if extension == "Dockerfile":
        return "Dockerfile" if number == 1 else f"Dockerfile.{number}"
    return f"snippet-{number}.{extension}"


def code_files(blocks: list[dict[str, str]]) -> list[CodeFile]:
    return [
        CodeFile(file_name(block.get("language", ""), number), block.get("code", "") + "\n")
        for number, block in enumerate(blocks, start=1)
    ]


def zip_of(files: list[CodeFile]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for file in files:
            archive.writestr(file.name, file.content)
    return buffer.getvalue()


def patch_of(changes: list[dict[str, Any]]) -> str:
    """An answer's file changes as one patch (`git apply` takes it at the files' folder)."""
    return "".join(entry.get("diff") or "" for entry in changes)


def changes_zip(new_versions: list[CodeFile], changes: list[dict[str, Any]]) -> bytes:
    """The files an answer changed or made, as they now are, and `changes.patch`."""
    return zip_of([*new_versions, CodeFile(PATCH_NAME, patch_of(changes))])


def comparable_code(text: str, blocks: list[dict[str, str]]) -> list[str]:
    """What a version's diff compares: its code blocks, one after another (the
    whole text when it has none)."""
    if not blocks:
        return text.splitlines()
    lines: list[str] = []
    for number, block in enumerate(blocks, start=1):
        if len(blocks) > 1:
            lines.append(f"# --- block {number} ({block.get('language') or 'code'}) ---")
        lines.extend(block.get("code", "").splitlines())
    return lines


@dataclass(frozen=True, slots=True)
class DiffLine:
    kind: str  # "add", "del", "hunk", "file" or "same"
    text: str


def unified_diff(
    old: list[str],
    new: list[str],
    old_name: str,
    new_name: str,
    *,
    timeout: float = DIFF_TIMEOUT,
) -> list[DiffLine]:
    """A unified diff (3 lines of context) of two versions' lines, each line tagged
    for the page to colour (and escape). Raises DiffUnavailable past the bounds
    (webapp/diffs.py)."""
    if max(len(old), len(new)) > MAX_DIFF_LINES:
        raise DiffUnavailable(
            f"These versions are too long to compare here (over {MAX_DIFF_LINES:,} lines)."
        )
    text = diffs.unified(
        "".join(line + "\n" for line in old),
        "".join(line + "\n" for line in new),
        old_name,
        new_name,
        timeout=timeout,
    )
    return tagged_lines(text)


def tagged_lines(diff: str) -> list[DiffLine]:
    """A unified diff's lines, each tagged for the page to colour (and escape)."""
    return [_tagged(line) for line in diff.splitlines()]


def _tagged(line: str) -> DiffLine:
    if line.startswith(("--- ", "+++ ")):
        return DiffLine("file", line)
    kind = {"@": "hunk", "+": "add", "-": "del"}.get(line[:1], "same")
    return DiffLine(kind, line)
