"""Deadlines: what is due next, with a clock that is just numbers (no gevent, no waiting)."""

from __future__ import annotations

from webapp.relay.deadlines import FIRST_TOKEN, IDLE, PING, TOTAL, Deadlines


def deadlines(started: float = 100.0) -> Deadlines:
    return Deadlines(
        started, first_token_timeout=30, idle_timeout=5, total_timeout=300, heartbeat=10
    )


def test_before_the_first_token_the_first_token_bound_and_keep_alives_apply() -> None:
    d = deadlines()
    assert d.next_due(100.0) == (110.0, PING)  # a keep-alive is owed 10 s after the request
    assert d.due(109.9) is None and d.due(110.0) == PING
    d.last_sent = 125.0
    assert d.next_due(125.0) == (130.0, FIRST_TOKEN)
    assert d.due(130.0) == FIRST_TOKEN
    assert d.next_at() == 130.0


def test_once_text_flows_the_idle_bound_follows_the_last_upstream_text() -> None:
    d = deadlines()
    d.got_text, d.last_upstream, d.last_sent = True, 150.0, 150.0
    assert d.next_due(150.0) == (155.0, IDLE)
    d.last_upstream = 158.0
    assert d.next_at() == 160.0  # now the keep-alive comes first
    assert d.due(160.0) == PING and d.due(163.0) == IDLE


def test_the_total_deadline_wins_over_everything() -> None:
    d = deadlines()
    d.got_text, d.last_upstream, d.last_sent = True, 398.0, 398.0
    assert d.next_due(398.0) == (400.0, TOTAL)
    assert d.due(400.0) == TOTAL
    assert d.due(10_000.0) == TOTAL
