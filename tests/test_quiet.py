"""Work done in the worker's quiet moments (webapp/quiet.py): waiting for one,
values made ahead in them, full garbage collections moved to them."""

from __future__ import annotations

import itertools
import os
import subprocess
import sys
import textwrap
import time

import gevent
import pytest

from tests.conftest import ROOT
from webapp.ids import random_id
from webapp.quiet import Stock, until_quiet


def busy(order: list[str], rounds: int) -> None:
    """Keeps the loop busy: a greenlet ready to run at every turn of it."""
    for _ in range(rounds):
        order.append("busy")
        gevent.sleep(0)


def test_work_that_waits_for_quiet_runs_after_the_busy_greenlets() -> None:
    order: list[str] = []

    def patient() -> None:
        order.append("quiet" if until_quiet(5.0) else "gave up")

    gevent.joinall([gevent.spawn(patient), gevent.spawn(busy, order, 50)])
    assert order == ["busy"] * 50 + ["quiet"]


def test_the_wait_for_quiet_is_bounded() -> None:
    order: list[str] = []
    keeps_busy = gevent.spawn(busy, order, 10**9)
    try:
        began = time.monotonic()
        assert until_quiet(0.1) is False
        assert time.monotonic() - began < 2.0  # it gave up, near its bound
    finally:
        keeps_busy.kill()


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


def test_a_worker_collects_its_garbage_in_quiet_moments() -> None:
    """collect_when_quiet (wsgi.py): the interpreter's own full collections only as a
    backstop; one runs after FULL_AFTER young ones, when the loop is quiet, and not
    while it is busy. In a process of its own: it changes the process's collector."""
    script = textwrap.dedent(
        """
        import gc, time, gevent
        from webapp import quiet
        gc.freeze()
        quiet.collect_when_quiet()
        assert gc.get_threshold()[2] == quiet.BACKSTOP
        full = lambda: gc.get_stats()[2]["collections"]
        before = full()
        def cycles(n):
            for _ in range(n):
                a = []; a.append(a)
        # Busy for over two of the collector's looks: young collections pile up
        # (~15, between FULL_AFTER and the backstop), and the loop is never quiet.
        busy_until = time.monotonic() + 1.2
        for _ in range(150):
            cycles(gc.get_threshold()[0])
            gevent.sleep(0)
        while time.monotonic() < busy_until:
            gevent.sleep(0)
        busy_count = gc.get_count()[2]
        assert full() == before, "a full collection ran while the loop was busy"
        assert quiet.FULL_AFTER <= busy_count < quiet.BACKSTOP, busy_count
        gevent.sleep(1.5)  # quiet
        assert full() == before + 1, full() - before
        print("ok")
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert done.stdout.strip() == "ok", done.stderr
