"""Decode speed of llama.cpp builds, side by side in one run (how the portable build was chosen).

    python -m bench.builds avx2=DIR avx512=DIR native=DIR [--model qwen2.5-coder-1.5b]

Each DIR holds a llama_cpp_python wheel (e.g. from `python -m webapp.providers.runtime install`,
which keeps them under MODEL_CACHE_DIR/wheels/). Each build is installed into a
scratch venv of its own and measured in a child process: the same model file,
prompt, greedy sampling, threads and token count; rounds alternate between the
builds so that drift on a shared machine hits them alike. Reports the median
tokens/s of each build and its ratio to the first one named (the baseline).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import venv
from pathlib import Path

from webapp.config import Config
from webapp.providers.models import model_file

CHILD = r"""
import json, sys, time
from llama_cpp import Llama
path, threads, tokens = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
llama = Llama(model_path=path, n_ctx=2048, n_threads=threads, verbose=False)
prompt = "Write a Python function that checks whether a string is a palindrome, then explain it."
messages = [{"role": "user", "content": prompt}]
llama.create_chat_completion(messages, max_tokens=8, temperature=0.0)  # warm up
first = None
count = 0
for chunk in llama.create_chat_completion(
    messages, max_tokens=tokens, temperature=0.0, stream=True
):
    if chunk["choices"][0]["delta"].get("content"):
        count += 1
        if first is None:
            first = time.perf_counter()
end = time.perf_counter()
print(json.dumps({"tokens": count, "rate": (count - 1) / (end - first)}))
"""


def scratch_venv(name: str, wheel_dir: Path, root: Path) -> Path:
    folder = root / name
    venv.create(folder, with_pip=True)
    python = folder / "bin" / "python"
    wheels = [str(p) for p in wheel_dir.glob("*.whl")]
    subprocess.run([python, "-m", "pip", "install", "-q", "--no-deps", *wheels], check=True)
    deps = ["numpy==2.4.6", "diskcache==5.6.3", "jinja2", "typing_extensions"]
    subprocess.run([python, "-m", "pip", "install", "-q", *deps], check=True)
    return python


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("builds", nargs="+", help="NAME=DIR with a llama_cpp_python wheel")
    parser.add_argument("--model", default="qwen2.5-coder-1.5b")
    parser.add_argument("--tokens", type=int, default=200)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    path = model_file(Config.from_env({"LOCAL_MODEL": args.model}))
    builds = dict(b.split("=", 1) for b in args.builds)
    cpuinfo = Path("/proc/cpuinfo").read_text().splitlines()
    cpu = next((line.split(":", 1)[1].strip() for line in cpuinfo if "model name" in line), "?")
    rates: dict[str, list[float]] = {name: [] for name in builds}
    with tempfile.TemporaryDirectory() as tmp:
        pythons = {n: scratch_venv(n, Path(d), Path(tmp)) for n, d in builds.items()}
        for round_ in range(args.rounds):
            order = list(builds) if round_ % 2 == 0 else list(reversed(builds))
            for name in order:
                out = subprocess.run(
                    [pythons[name], "-c", CHILD, str(path), str(args.threads), str(args.tokens)],
                    capture_output=True,
                    text=True,
                    check=False,
                )
                if out.returncode != 0:
                    print(f"{name}: failed ({out.returncode}): {out.stderr[-300:]}")
                    continue
                rates[name].append(json.loads(out.stdout.strip().splitlines()[-1])["rate"])
                print(f"round {round_ + 1} {name}: {rates[name][-1]:.1f} tokens/s", flush=True)
    baseline = next(iter(builds))
    base = statistics.median(rates[baseline]) if rates[baseline] else None
    print(f"\n{args.model}, {args.tokens} tokens, greedy, {args.threads} threads, CPU: {cpu}")
    print("| build | tokens/s (median) | vs " + baseline + " |\n| --- | --- | --- |")
    for name, values in rates.items():
        if not values:
            print(f"| {name} | failed | |")
            continue
        median = statistics.median(values)
        ratio = f"{median / base:.2f}x" if base else "?"
        print(f"| {name} | {median:.1f} | {ratio} |")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
