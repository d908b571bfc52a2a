"""Local model benchmark: tokens/s through the app vs llama-cpp-python directly.

    make bench-local       (python -m bench.local [--model smollm2-135m] [--tokens 128])

Same model file, prompt, max_tokens and greedy sampling on both sides. The
direct run happens in this process; the app runs under gunicorn from
gunicorn.conf.py, and is measured with the direct run's model unloaded so
both get the machine's cores. The ratio is app / direct.
"""

from __future__ import annotations

from gevent import monkey

# bench.relay's helpers patch for gevent when imported: patch first, before
# requests imports ssl.
monkey.patch_all()

import argparse  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402

import requests  # noqa: E402

from bench.relay import APP, ROOT, free_port, start, wait_port  # noqa: E402
from webapp.config import Config  # noqa: E402
from webapp.providers.models import model_file  # noqa: E402
from webapp.relay.generation import build_messages  # noqa: E402

PROMPT = "Write a Python function that checks whether a string is a palindrome, then explain it."


def direct(path: str, tokens: int, runs: int) -> list[float]:
    from llama_cpp import Llama

    llama = Llama(model_path=path, n_ctx=4096, n_threads=os.cpu_count() or 1, verbose=False)
    messages = build_messages(PROMPT, None, Config().system_prompt)
    rates = []
    for _ in range(runs + 1):  # the first run warms up
        first = None
        count = 0
        for chunk in llama.create_chat_completion(
            messages, max_tokens=tokens, temperature=0.0, stream=True
        ):
            if chunk["choices"][0]["delta"].get("content"):
                count += 1
                first = first or time.monotonic()
        if first is not None and count > 1:
            rates.append((count - 1) / (time.monotonic() - first))
    del llama
    return rates[1:]


def through_app(model: str, tokens: int, runs: int) -> list[float]:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OPENAI_", "PROVIDER"))}
    env.update(
        {
            "PROVIDER": "local",
            "LOCAL_MODEL": model,
            "PORT": str(port),
            "LOG_LEVEL": "WARNING",
            "RATE_LIMIT": "off",
            "TOTAL_TIMEOUT": "600",
            "FIRST_TOKEN_TIMEOUT": "120",
        }
    )
    app = start(APP, env)
    rates = []
    try:
        wait_port(port)
        for _ in range(runs + 1):
            with requests.post(
                f"http://127.0.0.1:{port}/generate-code/",
                json={"prompt": PROMPT, "max_tokens": tokens, "temperature": 0.0},
                headers={"Accept": "application/x-ndjson"},
                stream=True,
                timeout=600,
            ) as response:
                first = None
                count = 0
                for line in response.iter_lines():
                    event = json.loads(line)
                    if event["type"] == "delta":
                        first = first or time.monotonic()
                    elif event["type"] == "done":
                        count = event["usage"]["completion_tokens"]
                        end = time.monotonic()
            if first is not None and count > 1:
                rates.append((count - 1) / (end - first))
    finally:
        app.terminate()
        app.wait(15)
    return rates[1:]


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    path = str(model_file(Config.from_env({"LOCAL_MODEL": args.model})))
    d = direct(path, args.tokens, args.runs)
    a = through_app(args.model, args.tokens, args.runs)
    dm, am = statistics.median(d), statistics.median(a)
    print(
        "\n| model | direct llama-cpp-python | through the app | ratio |"
        "\n| --- | --- | --- | --- |"
        f"\n| {args.model} | {dm:.1f} tok/s | {am:.1f} tok/s | {am / dm:.2f} |"
    )
    (ROOT / "bench" / "results-local.json").write_text(
        json.dumps(
            {"model": args.model, "direct_tok_s": d, "app_tok_s": a, "ratio": am / dm}, indent=2
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
