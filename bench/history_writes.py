"""What the history's batched writes cost the database's caller, per row.

    python -m bench.history_writes [--stored 18000] [--batch 300] [--rounds 10]

A fresh SQLite history (in a temporary directory) is filled with `--stored`
answers, made (by their ids and times) a batch every 10 s over the past hours;
then each round writes `--batch` new answers, saves their text once and writes
their ends, as the recorder's writer does, timing each write's CPU. It runs
twice, with the ids the store makes (`sortable_id`: the time, then 96 random
bits) and with purely random ones (`random_id`, as before), and prints CPU µs
per row, medians over the rounds. Each answer gets a new owner, as each request
of a script without a cookie does (a fixed owner would flatter the indexes).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from unittest import mock

from webapp import history, ids
from webapp.history import FinishedAnswer, NewAnswer, Store

TEXT = "tok " * 100


def answers(count: int) -> list[NewAnswer]:
    return [
        Store.new_answer(
            ids.random_id(16),
            prompt="write a function that reverses a string",
            language=None,
            model="bench",
            temperature=0.2,
            max_tokens=100,
        )
        for _ in range(count)
    ]


def ends(new: list[NewAnswer]) -> list[FinishedAnswer]:
    usage = {"prompt_tokens": 20, "completion_tokens": 100, "total_tokens": 120}
    return [
        FinishedAnswer(a.id, TEXT, [], "length", "ok", usage, None, {"ttft_s": 0.2}) for a in new
    ]


def measure(make_id: Callable[[], str], stored: int, batch: int, rounds: int) -> dict[str, float]:
    history.new_id = make_id  # what Store.new_answer calls for each id
    store = Store.open(f"sqlite:///{tempfile.mkdtemp(prefix='codegen-bench-')}/history.db")
    # The stored answers were made over the past hours, a batch every 10 s, not in
    # the second this takes: their ids say so, as a real history's would.
    batches, now = stored // batch, time.time()
    for i in range(batches):
        with mock.patch.object(time, "time", return_value=now - 10 * (batches - i)):
            new = answers(batch)
        store.write(new, [])
        store.write([], ends(new))
    spent: dict[str, list[float]] = {"insert": [], "save": [], "end": []}
    for _ in range(rounds):
        new = answers(batch)
        started = time.process_time()
        store.write(new, [])
        spent["insert"].append(time.process_time() - started)
        started = time.process_time()
        store.save_growth([(a.id, 0, TEXT[:200]) for a in new])
        spent["save"].append(time.process_time() - started)
        started = time.process_time()
        store.write([], ends(new))
        spent["end"].append(time.process_time() - started)
    store.close()
    return {k: statistics.median(v) / batch * 1e6 for k, v in spent.items()}


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--stored", type=int, default=18000)
    parser.add_argument("--batch", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=10)
    args = parser.parse_args()
    made = history.new_id
    try:
        kinds = {
            "sortable_id (time, then random)": lambda: ids.sortable_id(12),
            "random_id (random only)": lambda: ids.random_id(12),
        }
        print(f"{args.stored} answers stored, {args.batch} a batch, CPU µs a row (median)")
        print("| ids | insert (answer and conversation) | save the text | end |")
        print("| --- | --- | --- | --- |")
        for name, make_id in kinds.items():
            cost = measure(make_id, args.stored, args.batch, args.rounds)
            print(f"| {name} | {cost['insert']:.1f} | {cost['save']:.1f} | {cost['end']:.1f} |")
    finally:
        history.new_id = made
    return 0


if __name__ == "__main__":
    sys.exit(main())
