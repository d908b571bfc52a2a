"""Unguessable ids (answers, conversations, anonymous owners), cheaply.

`secrets.token_urlsafe` makes one `getrandom` call per id: ~4 us each inside
a busy worker, and an answer with history on needs three (its owner, its
conversation, itself) on the way to its first token. Here the same kernel
randomness is read 4 KiB at a time and handed out in slices, never twice.
A forked worker starts with an empty buffer, so no two workers share bytes.

Stored rows take `sortable_id`s: the same random part after the time, so the
database's indexes take new rows at their end, not anywhere.
"""

from __future__ import annotations

import binascii
import os
import time

_READ = 4096
_URLSAFE = bytes.maketrans(b"+/", b"-_")


class _Pool:
    """Kernel random bytes, read in blocks; each byte is handed out once."""

    __slots__ = ("at", "data")

    def __init__(self) -> None:
        self.data = b""
        self.at = 0

    def take(self, count: int) -> bytes:
        if self.at + count > len(self.data):
            self.data, self.at = os.urandom(max(_READ, count)), 0
        taken = self.data[self.at : self.at + count]
        self.at += count
        return taken

    def forget(self) -> None:
        self.data, self.at = b"", 0


_pool = _Pool()
os.register_at_fork(after_in_child=_pool.forget)


def random_id(nbytes: int) -> str:
    """`nbytes` random bytes as unpadded base64url, like `secrets.token_urlsafe`, except
    that it never begins with "-": on a command line (`api_client.py --follow-up ID`)
    such an id is taken for an option. One first character in 64 becomes "A" instead,
    which costs the id about 0.03 bits."""
    made = b64url(_pool.take(nbytes))
    return "A" + made[1:] if made.startswith("-") else made


def b64url(data: bytes) -> str:
    """Unpadded base64url, as `secrets.token_urlsafe` and itsdangerous write it."""
    return binascii.b2a_base64(data, newline=False).rstrip(b"=").translate(_URLSAFE).decode()


def sortable_id(nbytes: int) -> str:
    """`random_id(nbytes)` after the time in whole seconds as 8 hex digits (until 2106).

    Ids made together sort together, so an index on them takes each new row on its
    last few pages, which stay in memory. Random ids land anywhere, a page each to
    read and to write to the WAL, more so as the history grows: with 18,000 answers
    stored, inserting an answer cost 26-29 µs of CPU against 56-68 with random ids
    (`python -m bench.history_writes`). Everything that makes the id unguessable is
    in the random part; the prefix says when it was made, to the second, which its
    owner sees anyway."""
    return f"{int(time.time()):08x}{random_id(nbytes)}"


def made_at(sortable: str) -> int | None:
    """When a `sortable_id` was made (whole seconds), or None if it is not one."""
    prefix = sortable[:8]
    if len(prefix) < 8 or not all(c in "0123456789abcdef" for c in prefix):
        return None
    return int(prefix, 16)
