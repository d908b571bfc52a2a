"""A bounded unified diff of two texts, from GNU diff in a child process.

A leaf: the relay diffs an answer's files against their attachments, the
history pages diff versions. GNU diff, not difflib: difflib is quadratic on
some inputs (two 12,000-line versions took 9 s, holding the event loop), and
a child can be killed where a thread cannot. Under gevent the wait yields.
"""

from __future__ import annotations

import subprocess
import tempfile

# Bounds on a comparison: lines on each side, and the child's time.
MAX_DIFF_LINES = 50_000
DIFF_TIMEOUT = 2.0


class DiffUnavailable(Exception):
    """The texts could not be compared within the bounds; the message says why."""


def unified(
    old: str, new: str, old_label: str, new_label: str, *, timeout: float = DIFF_TIMEOUT
) -> str:
    """`diff -U3` of the two texts, byte for byte (a missing final newline shows as
    `\\ No newline at end of file`, so `git apply` rebuilds the exact file). Empty
    when they are equal. Raises DiffUnavailable past MAX_DIFF_LINES or `timeout`."""
    if max(old.count("\n"), new.count("\n")) > MAX_DIFF_LINES:
        raise DiffUnavailable(
            f"These versions are too long to compare here (over {MAX_DIFF_LINES:,} lines)."
        )
    with tempfile.TemporaryDirectory(prefix="codegen-diff-") as folder:
        paths = []
        for number, text in enumerate((old, new)):
            path = f"{folder}/{number}"
            with open(path, "w", encoding="utf-8", errors="replace", newline="") as file:
                file.write(text)
            paths.append(path)
        try:
            done = subprocess.run(
                ["diff", "-U3", "--label", old_label, "--label", new_label, *paths],
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
    return done.stdout.decode("utf-8", "replace")
