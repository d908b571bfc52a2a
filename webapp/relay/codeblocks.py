"""Fenced code blocks in model output: found once, here, for every layer that needs them.

Pure text functions (no I/O, no imports from the app): the relay lists an
answer's blocks in its `done` event, the page highlights each as it closes,
and the API separates code from explanation.
"""

from __future__ import annotations

import re

# Groups: the language tag, the code, and the closing fence (None while the
# block is still open: it then runs to the end of the text).
FENCE = re.compile(r"^```[ \t]*([\w+#.-]*)[^\n]*\n(.*?)(?:^(```)[ \t]*$|\Z)", re.M | re.S)


def extract_code_blocks(text: str) -> list[dict[str, str]]:
    return [{"language": m.group(1), "code": m.group(2).rstrip("\n")} for m in FENCE.finditer(text)]


def explanation_of(text: str) -> str:
    return re.sub(r"\n{3,}", "\n\n", FENCE.sub("", text)).strip()
