"""bench/ab.py's pooling: the rounds of saved runs as one sample, with the
distribution-free interval for their median (run as a user runs it)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests.conftest import ROOT


def test_saved_runs_are_pooled_round_by_round(tmp_path: Path) -> None:
    # 12 rounds in all: the median's 95% interval is the 3rd and the 10th smallest.
    runs = [[(1.0 + i / 100, float(i)) for i in range(6)],
            [(1.0 + i / 100, float(i)) for i in range(6, 12)]]  # fmt: skip
    paths = []
    for n, pairs in enumerate(runs):
        path = tmp_path / f"run{n}.json"
        path.write_text(json.dumps({"argv": [".", "--rounds", "6"], "pairs": pairs, "whole": {}}))
        paths.append(str(path))
    out = subprocess.run(
        [sys.executable, "-m", "bench.ab", "--pool", *paths],
        cwd=ROOT, capture_output=True, text=True, timeout=60, check=True,
    ).stdout  # fmt: skip
    assert "6 rounds of . --rounds 6" in out
    assert (
        "paired by round (12): CPU B/A median 1.055 (95% interval 1.020 to 1.090), "
        "TTFT p50 B-A median +5.5 ms (95% interval +2.0 to +9.0)"
    ) in out
