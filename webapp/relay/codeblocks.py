"""Fenced code blocks in model output: found once, here, for every layer that needs them.

Pure text functions (no I/O, no imports from the app): the relay lists an
answer's blocks in its `done` event, the page highlights each as it closes,
and the API separates code from explanation.
"""

from __future__ import annotations

import re

# A code block's language tag -> the extension of a file holding it.
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

# Groups: the language tag, the code, and the closing fence (None while the
# block is still open: it then runs to the end of the text).
FENCE = re.compile(r"^```[ \t]*([\w+#.-]*)[^\n]*\n(.*?)(?:^(```)[ \t]*$|\Z)", re.M | re.S)


def extract_code_blocks(text: str) -> list[dict[str, str]]:
    return [{"language": m.group(1), "code": m.group(2).rstrip("\n")} for m in FENCE.finditer(text)]


def explanation_of(text: str) -> str:
    return re.sub(r"\n{3,}", "\n\n", FENCE.sub("", text)).strip()
