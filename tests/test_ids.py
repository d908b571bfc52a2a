"""Ids: kernel randomness handed out once, never shared with a forked worker."""

from __future__ import annotations

import base64
import itertools
import os
import re
import secrets
import time

import pytest

from webapp.answers.store import ID_FRESH, may_be_new
from webapp.ids import b64url, made_at, random_id, sortable_id


def test_ids_look_like_token_urlsafe_and_never_repeat() -> None:
    ids = [random_id(12) for _ in range(5000)]  # past several 4 KiB reads
    assert len(set(ids)) == len(ids)
    assert all(re.fullmatch(r"[A-Za-z0-9_-]{16}", i) for i in ids)
    assert len(random_id(16)) == len(secrets.token_urlsafe(16)) == 22
    # One in 64 would begin with "-" (5000 ids: all but certain), which a command line
    # takes for an option.
    assert not any(i.startswith("-") for i in ids)


def test_base64url_is_the_unpadded_urlsafe_alphabet() -> None:
    for data in (b"", b"\xfb\xff", b"\xfb\xff\xbf", bytes(range(256))):
        expected = base64.urlsafe_b64encode(data).rstrip(b"=").decode()
        assert b64url(data) == expected


def test_a_forked_worker_does_not_hand_out_its_parents_bytes() -> None:
    random_id(12)  # the parent now holds a buffer of unused bytes
    read, write = os.pipe()
    child = os.fork()
    if child == 0:  # pragma: no cover - runs in the child
        os.write(write, random_id(12).encode())
        os._exit(0)
    os.close(write)
    _, status = os.waitpid(child, 0)
    from_child = os.read(read, 64).decode()
    os.close(read)
    # A child that failed wrote nothing, and "" differs from any id: check it made one.
    assert os.waitstatus_to_exitcode(status) == 0
    assert re.fullmatch(r"[A-Za-z0-9_-]{16}", from_child), from_child
    assert from_child != random_id(12)


def test_sortable_ids_sort_by_the_second_they_were_made_in(monkeypatch: pytest.MonkeyPatch) -> None:
    made = []
    for second in (1_795_000_000, 1_795_000_001, 1_795_000_300, 4_000_000_000):
        monkeypatch.setattr(time, "time", lambda second=second: second + 0.5)
        made += [sortable_id(12) for _ in range(50)]
    by_second = [made[i : i + 50] for i in range(0, 200, 50)]
    # Every id of a second sorts before every id of a later one (the prefix is
    # lower-case hex, which any collation orders alike); the rest is random_id's.
    assert all(max(a) < min(b) for a, b in itertools.pairwise(by_second))
    assert made[0].startswith(f"{1_795_000_000:08x}") and made[-1].startswith("ee6b2800")
    assert all(re.fullmatch(r"[0-9a-f]{8}[A-Za-z0-9_-]{16}", i) for i in made)
    assert len(set(made)) == len(made)


def test_a_sortable_id_says_when_it_was_made_and_whether_its_row_may_be_new() -> None:
    made = sortable_id(12)
    assert abs(made_at(made) - time.time()) <= 1  # type: ignore[operator]
    assert made_at("not-hex!" + random_id(12)) is None
    assert made_at("abc") is None
    assert may_be_new(made, within=1.0)
    # Made ahead (a stock keeps ids up to ID_FRESH s): still maybe new.
    ahead = f"{int(time.time() - ID_FRESH + 5):08x}" + random_id(12)
    assert may_be_new(ahead, within=1.0)
    old = f"{int(time.time() - ID_FRESH - 30):08x}" + random_id(12)
    assert not may_be_new(old, within=1.0)
    assert not may_be_new("zzzzzzzz" + random_id(12), within=1.0)
