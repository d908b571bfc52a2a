"""Files a person attaches: checked, shown to the model, and diffed against the answer.

One format for every provider (the embedded model and any OpenAI-compatible
server): after the prompt, each file fenced with its name on the opening line,
and a request to answer a changed file with its whole new content the same way.
When the answer ends, `changes` finds each block that is a version of a file
(its opening line names it; or, with one attachment, the one block in its
language) and diffs it against the attachment (a name not attached is a new file).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from webapp import diffs
from webapp.errors import BadRequest
from webapp.relay.codeblocks import EXTENSIONS, FENCE


@dataclass(frozen=True, slots=True)
class Attachment:
    """One attached text file: a bare name (no folders) and its UTF-8 content."""

    name: str
    content: str


# A name is one path segment: no folders, no control characters, not `.` or `..`.
_BAD_NAME = re.compile(r"[/\\\x00-\x1f\x7f]")
MAX_NAME_CHARS = 255
# Files one answer's `done` lists at most: an answer could name thousands of blocks.
MAX_CHANGED_FILES = 32
ASK = (
    "To change an attached file, answer with its whole new content in one fenced code "
    "block whose opening line names the file, for example ```{language} {name}"
)
# A file name as the model writes it after a fence's language, or alone.
_NAMED = re.compile(r"[\w][\w.+-]*\.[\w+-]+")
_LANGUAGE_OF = {extension: language for language, extension in reversed(EXTENSIONS.items())}


def checked(files: Sequence[Any], *, max_files: int, max_file_bytes: int) -> tuple[Attachment, ...]:
    """The request's `files` as Attachments, or a BadRequest that names the file and
    the bound it passed (nothing reaches the model then)."""
    if len(files) > max_files:
        if max_files == 0:
            raise BadRequest("files: attaching files is turned off here.", code="too_many_files")
        raise BadRequest(
            f"files: {len(files)} files is over the limit of {max_files} per request.",
            code="too_many_files",
        )
    seen: set[str] = set()
    kept = []
    for number, file in enumerate(files):
        name, content = file.name, file.content
        where = f"files[{number}] {name!r}"
        if not name or name in (".", "..") or len(name) > MAX_NAME_CHARS or _BAD_NAME.search(name):
            bare = re.split(r"[/\\]", name)[-1] if name else ""
            hint = f' (send "{bare}")' if bare and bare not in (".", "..") else ""
            raise BadRequest(
                f"{where}: a file's name must be one plain name, without folders or control "
                f"characters, at most {MAX_NAME_CHARS} characters{hint}.",
                code="file_invalid",
            )
        if name in seen:
            raise BadRequest(f"{where}: two files have this name.", code="file_invalid")
        seen.add(name)
        if "\x00" in content:
            raise BadRequest(
                f"{where}: this looks like a binary file; only text files can be attached.",
                code="file_invalid",
            )
        size = len(content.encode("utf-8", "surrogatepass"))
        if size > max_file_bytes:
            raise BadRequest(
                f"{where}: {size:,} bytes is over the limit of {max_file_bytes:,} bytes per file.",
                code="file_too_large",
            )
        kept.append(Attachment(name, content))
    return tuple(kept)


def decoded(name: str, raw: bytes, number: int) -> str:
    """An uploaded file's bytes as text, or the BadRequest that names it."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise BadRequest(
            f"files[{number}] {name!r}: this is not UTF-8 text; only text files can be attached.",
            code="file_invalid",
        ) from None
    return text.removeprefix("\ufeff")


def language_of(name: str) -> str:
    """The fence tag for a file's name: `python` for `calc.py`, else its extension."""
    extension = name.rsplit(".", 1)[-1].lower() if "." in name else ""
    return _LANGUAGE_OF.get(extension, extension)


def fenced(file: Attachment) -> str:
    """The file as the model sees it: a fence longer than any run of backticks inside."""
    longest = max((len(run) for run in re.findall(r"`{3,}", file.content)), default=2)
    fence = "`" * max(3, longest + 1)
    body = file.content if file.content.endswith("\n") else file.content + "\n"
    return f"File `{file.name}`:\n{fence}{language_of(file.name)} {file.name}\n{body}{fence}"


def with_files(user: str, files: Sequence[Attachment]) -> str:
    """The user's message with the files after it, and how to answer with a new version."""
    if not files:
        return user
    first = files[0]
    ask = ASK.format(language=language_of(first.name), name=first.name)
    shown = "\n\n".join(fenced(file) for file in files)
    return f"{user}\n\nAttached files:\n\n{shown}\n\n{ask}."


def tag_blocks(text: str, blocks: list[dict[str, str]], files: Sequence[Attachment]) -> None:
    """Add `file` to each block that is a version of a named file: its opening line (or
    the line before it) names the file; else, with one attachment, the longest block
    in that file's language. `blocks` are extract_code_blocks(text), in order."""
    names = {file.name for file in files}
    for block, match in zip(blocks, FENCE.finditer(text), strict=False):
        line_end = text.find("\n", match.start())
        opening = text[match.start() + 3 : line_end if line_end >= 0 else len(text)]
        before = text[max(0, text.rfind("\n", 0, max(0, match.start() - 1)) + 1) : match.start()]
        name = _named(opening, names) or _named_alone(before, names)
        if name is not None:
            block["file"] = name
    if len(files) == 1 and not any("file" in block for block in blocks):
        only = files[0]
        extension = only.name.rsplit(".", 1)[-1].lower() if "." in only.name else ""
        alike = [
            block
            for block in blocks
            if EXTENSIONS.get(block.get("language", "").lower(), "") == extension
            or (not block.get("language") and not extension)
        ]
        if alike:
            max(alike, key=lambda block: len(block.get("code", "")))["file"] = only.name


def _named(opening: str, names: set[str]) -> str | None:
    """The file an opening fence line names (```python calc.py, ```calc.py,
    ```python title="calc.py"), attached or new."""
    words = re.split(r"[\s:=\"'`]+", opening.strip())
    for word in words:
        if word in names:
            return word
    for word in words[1:] if len(words) > 1 else words:
        if _NAMED.fullmatch(word) and "." in word and not word.startswith("."):
            return word
    return None


def _named_alone(line: str, names: set[str]) -> str | None:
    """An attached file named on the line before a block (`calc.py`:, **calc.py**)."""
    bare = line.strip().strip("*`#:_ ").removeprefix("File").strip().strip("*`:_ ")
    return bare if bare in names else None


def changes(
    text: str, blocks: list[dict[str, str]], files: Sequence[Attachment]
) -> list[dict[str, Any]]:
    """Per file the answer gives a new version of: its name, `changed` or `new`, and a
    unified diff `git apply` accepts. Tags `blocks` (see `tag_blocks`); unchanged files
    are left out, a later block for the same file wins, and past MAX_CHANGED_FILES
    files the rest are not diffed (each attached file is, first)."""
    tag_blocks(text, blocks, files)
    attached = {file.name: file.content for file in files}
    latest: dict[str, str] = {}
    for block in blocks:
        if "file" in block:
            latest[block["file"]] = block.get("code", "")
    named = [name for name in latest if name in attached]
    named += [name for name in latest if name not in attached][: MAX_CHANGED_FILES - len(named)]
    found: list[dict[str, Any]] = []
    for name in named:
        old, code = attached.get(name), latest[name]
        new = code + "\n" if old is None or old.endswith("\n") or not old else code
        if old == new:
            continue
        if old is None:  # a new file: its diff needs no diff program
            found.append({"name": name, "status": "new", "diff": _created(name, new)})
            continue
        entry: dict[str, Any] = {"name": name, "status": "changed"}
        try:
            entry["diff"] = diffs.unified(old, new, f"a/{name}", f"b/{name}")
        except diffs.DiffUnavailable as exc:
            entry["diff"], entry["error"] = None, str(exc)
        found.append(entry)
    return found


def _created(name: str, content: str) -> str:
    """The unified diff that creates `content` (which ends with a newline)."""
    lines = content.splitlines(keepends=True)
    body = "".join("+" + line for line in lines)
    return f"--- /dev/null\n+++ b/{name}\n@@ -0,0 +1,{len(lines)} @@\n{body}"


def new_versions(blocks: list[dict[str, str]], files: Sequence[Attachment]) -> list[Attachment]:
    """The files as the answer leaves them: each attachment, replaced by the answer's
    last version of it, then the new files (a follow-up builds on these)."""
    latest = {block["file"]: block.get("code", "") for block in blocks if "file" in block}
    out = []
    for file in files:
        code = latest.pop(file.name, None)
        if code is None:
            out.append(file)
        else:
            ending = "\n" if file.content.endswith("\n") or not file.content else ""
            out.append(Attachment(file.name, code + ending))
    out.extend(Attachment(name, code + "\n") for name, code in latest.items())
    return out
