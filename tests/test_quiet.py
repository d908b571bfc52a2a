"""Work done in the worker's quiet moments (webapp/quiet.py): values made ahead in them."""

from __future__ import annotations

import itertools
import os
import time

import gevent
import pytest

from webapp.ids import random_id
from webapp.quiet import Stock


def test_a_stock_fills_in_idle_time_and_hands_each_value_out_once() -> None:
    made = itertools.count()
    stock = Stock(lambda: next(made), size=100, batch=10, fresh=60.0)
    assert stock.take() is None  # nothing made yet: take() never makes one itself
    gevent.sleep(0.05)  # the loop idles: a batch per idle moment, until full
    assert len(stock) == 100
    taken = [stock.take() for _ in range(100)]
    assert sorted(taken) == list(range(100))  # type: ignore[type-var]
    assert stock.take() is None  # emptied by a burst, it refills in the next quiet
    gevent.sleep(0.05)
    assert len(stock) == 100 and stock.take() not in taken


def test_a_stock_never_hands_out_a_value_older_than_fresh(monkeypatch: pytest.MonkeyPatch) -> None:
    stock = Stock(lambda: time.time(), size=10, batch=10, fresh=60.0)
    stock.take()
    gevent.sleep(0.02)
    assert len(stock) == 10
    now = time.time()
    monkeypatch.setattr(time, "time", lambda: now + 61)
    assert stock.take() is None  # all of it was made over 60 s ago: dropped
    gevent.sleep(0.02)
    fresh = stock.take()
    assert fresh is not None and fresh >= now + 61


def test_a_forked_worker_starts_with_its_stocks_empty() -> None:
    stock = Stock(lambda: random_id(12), size=10, batch=10, fresh=60.0)
    stock.take()
    gevent.sleep(0.02)
    assert len(stock) == 10
    read, write = os.pipe()
    child = os.fork()
    if child == 0:  # pragma: no cover - runs in the child
        os.write(write, str(len(stock)).encode())
        os._exit(0)
    os.close(write)
    os.waitpid(child, 0)
    in_child = os.read(read, 64).decode()
    os.close(read)
    assert in_child == "0" and len(stock) == 10


def test_a_stock_that_cannot_make_values_logs_it_and_leaves_them_to_the_caller(
    caplog: pytest.LogCaptureFixture,
) -> None:
    calls = itertools.count()

    def broken() -> str:
        next(calls)
        raise OSError("no randomness today")

    stock = Stock(broken, size=10, batch=10, fresh=60.0)
    for _ in range(2):
        assert stock.take() is None
        gevent.sleep(0.02)
    assert "making values ahead failed" in caplog.text
    # One attempt for each take() that found the stock empty, not one per idle moment.
    assert next(calls) == 2
