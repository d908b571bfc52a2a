"""Stored answers as files and diffs: code blocks to download, versions to compare.

Pure functions over text (no Flask, no store), so the page and the tests use
the same ones. A file's name comes from its block's language; an unknown one
is `.txt`. Several blocks download as one zip.
"""

from __future__ import annotations

import difflib
import io
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


def unified_diff(old: list[str], new: list[str], old_name: str, new_name: str) -> list[DiffLine]:
    """difflib's unified diff, each line tagged for the page to colour (and escape)."""
    found = []
    for line in difflib.unified_diff(old, new, old_name, new_name, lineterm="", n=3):
        if line.startswith(("---", "+++")):
            kind = "file"
        elif line.startswith("@@"):
            kind = "hunk"
        elif line.startswith("+"):
            kind = "add"
        elif line.startswith("-"):
            kind = "del"
        else:
            kind = "same"
        found.append(DiffLine(kind, line))
    return found
