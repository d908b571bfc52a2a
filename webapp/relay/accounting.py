"""What an answer used and cost: token counts and the price estimate.

Run once per answer, at its end, never per chunk. The upstream's own usage is
trusted when it covers the whole answer; otherwise the text is counted here
(it is bounded: see `Relay.answer_bound`).
"""

from __future__ import annotations

from collections.abc import Callable

Usage = dict[str, int]


def usage_of(
    reported: Usage | None,
    text: str,
    *,
    prompt_tokens: int,
    count_tokens: Callable[[str], int],
    whole: bool = True,
) -> Usage:
    """Prompt, completion and total tokens. `reported` is the upstream's count;
    with `whole=False` (a resumed answer: it covers the last segment only) it is
    ignored and the text is counted."""
    usage = dict(reported or {}) if whole else {}
    if "completion_tokens" not in usage:
        usage["completion_tokens"] = count_tokens(text)
    usage.setdefault("prompt_tokens", prompt_tokens)
    usage["total_tokens"] = usage["prompt_tokens"] + usage["completion_tokens"]
    return usage


def cost_of(usage: Usage, price: tuple[float, float] | None) -> float | None:
    """USD for `usage` at `price` (per million prompt / completion tokens)."""
    if price is None:
        return None
    prompt, completion = price
    spent = usage["prompt_tokens"] * prompt + usage["completion_tokens"] * completion
    return round(spent / 1e6, 8)
