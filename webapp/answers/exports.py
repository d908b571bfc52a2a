"""Stored answers as files and diffs: code blocks to download, versions to compare.

Functions over text (no Flask, no store), so the page and the tests use the
same ones. A file's name comes from its block's language; an unknown one is
`.txt`. Several blocks download as one zip. Diffs come from GNU diff in a child
process, bounded in lines and time: difflib is quadratic on some inputs (two
12,000-line versions took 9 s, holding the event loop), and a child can be
killed where a thread cannot.
"""

from __future__ import annotations

import io
import subprocess
import tempfile
import zipfile
from dataclasses import dataclass

EXTENSIONS = {
    "python": "py", "py": "py", "python3": "py",
    "javascript": "js", "js": "js", "jsx": "jsx", "typescript": "ts", "ts": "ts", "tsx": "tsx",
    "go": "go", "golang": "go", "rust": "rs", "rs": "rs", "java": "java", "kotlin": "kt",
    "swift": "swift", "c": "c", "h": "h", "cpp": "cpp", "c++": "cpp", "cc": "cpp",
    "csharp": "cs", "c#": "cs", "cs": "cs", "ruby": "rb", "rb": "rb", "php": "php",
    "bash": "sh", "sh": "sh", "shell": "sh", "zsh": "sh", "powershell": "ps1",
    "sql": "sql", "html": "html", "css": "css", "json": "json", "yaml": "yaml", "yml": "yaml",
    "toml": "toml", "xml": "xml", "markdown": "md", "md": "md", "dockerfile": "Dockerfile",
    "makefile": "mk", "r": "r", "lua": "lua", "perl": "pl", "scala": "scala", "dart": "dart",
    "haskell": "hs", "elixir": "ex", "erlang": "erl", "julia": "jl", "zig": "zig",
}  # fmt: skip
# A zip of an answer: an answer has at most MAX_ANSWER_CHARS of text, so this bounds it too.
ZIP_NAME = "answer-{id}.zip"


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


# Bounds on a comparison: lines on each side, and the child's time.
MAX_DIFF_LINES = 50_000
DIFF_TIMEOUT = 2.0


class DiffUnavailable(Exception):
    """The versions could not be compared within the bounds; the message says why."""


def unified_diff(
    old: list[str],
    new: list[str],
    old_name: str,
    new_name: str,
    *,
    timeout: float = DIFF_TIMEOUT,
) -> list[DiffLine]:
    """A unified diff (3 lines of context), each line tagged for the page to colour
    (and escape). Raises DiffUnavailable past MAX_DIFF_LINES or `timeout` s. Under
    gevent the wait yields, so the worker serves others meanwhile."""
    if max(len(old), len(new)) > MAX_DIFF_LINES:
        raise DiffUnavailable(
            f"These versions are too long to compare here (over {MAX_DIFF_LINES:,} lines)."
        )
    with tempfile.TemporaryDirectory(prefix="codegen-diff-") as folder:
        paths = []
        for number, lines in enumerate((old, new)):
            path = f"{folder}/{number}"
            with open(path, "w", encoding="utf-8", errors="replace") as file:
                file.writelines(line + "\n" for line in lines)
            paths.append(path)
        try:
            done = subprocess.run(
                ["diff", "-U3", "--label", old_name, "--label", new_name, *paths],
                capture_output=True,
                timeout=timeout,
                check=False,
            )
        except subprocess.TimeoutExpired:  # run() has killed it
            raise DiffUnavailable(
                f"These versions took too long to compare (over {timeout:g} s)."
            ) from None
        except FileNotFoundError:
            raise DiffUnavailable("Comparing needs GNU diff (diffutils) on the server.") from None
    if done.returncode > 1:
        raise DiffUnavailable("These versions could not be compared.")
    return [_tagged(line) for line in done.stdout.decode("utf-8", "replace").splitlines()]


def _tagged(line: str) -> DiffLine:
    if line.startswith(("--- ", "+++ ")):
        return DiffLine("file", line)
    kind = {"@": "hunk", "+": "add", "-": "del"}.get(line[:1], "same")
    return DiffLine(kind, line)
