"""The embedded model, loaded for real (SmolLM2-135M, the smallest), under gunicorn."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import platform
import re
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.conftest import IN_CI, Server, require_binary
from webapp import runtime
from webapp.config import Config
from webapp.models import SPECS, ModelFileError, join_parts, model_file

PROMPT = "Write a Python function that adds two numbers."


def smollm2_path() -> Path:
    try:
        return model_file(Config.from_env({"LOCAL_MODEL": "smollm2-135m"}))
    except ModelFileError as exc:
        if IN_CI:
            pytest.fail(str(exc))
        pytest.skip(f"{exc} (make test installs it)")


def local_env(**extra: str) -> dict[str, str]:
    if importlib.util.find_spec("llama_cpp") is None:  # imported only by the server
        message = "llama-cpp-python is not installed (make test installs it)"
        if IN_CI:
            pytest.fail(message)
        pytest.skip(message)
    smollm2_path()
    return {
        "PROVIDER": "local",
        "LOCAL_MODEL": "smollm2-135m",
        "OPENAI_API_KEY": "",
        "FIRST_TOKEN_TIMEOUT": "30",
        "IDLE_TIMEOUT": "30",
        "TOTAL_TIMEOUT": "120",
        "MAX_OUTPUT_TOKENS": "400",
        **extra,
    }


@pytest.fixture(scope="module")
def local_server(serve: Any) -> Server:
    server: Server = serve(**local_env())
    return server


def health(server: Server) -> dict[str, Any]:
    body: dict[str, Any] = requests.get(server.url + "/healthz", timeout=5).json()
    return body


@pytest.mark.local_model
def test_the_local_model_streams_tokens_through_the_api(local_server: Server) -> None:
    started = time.monotonic()
    with requests.post(
        local_server.url + "/generate-code/",
        json={"prompt": PROMPT, "max_tokens": 60},
        headers={"Accept": "application/x-ndjson"},
        stream=True,
        timeout=120,
    ) as response:
        assert response.status_code == 200
        arrivals = []
        events = []
        for line in response.iter_lines():
            events.append(json.loads(line))
            arrivals.append(time.monotonic() - started)
    deltas = [e for e in events if e["type"] == "delta"]
    assert len(deltas) >= 5  # token by token, not one blob
    assert arrivals[len(deltas) - 1] > arrivals[0]
    done = events[-1]
    assert done["type"] == "done"
    assert done["usage"]["completion_tokens"] == len(deltas)
    assert done["usage"]["prompt_tokens"] > 0
    info = health(local_server)
    assert info["provider"] == "local" and info["model"] == "smollm2-135m"
    assert info["model_state"] == "loaded"


@pytest.mark.local_model
def test_the_page_and_the_api_offer_the_local_model(local_server: Server) -> None:
    session = requests.Session()
    page = session.get(local_server.url + "/").text
    assert '<option selected value="smollm2-135m">' in page or 'value="smollm2-135m"' in page
    token = page.split('name="csrf_token" type="hidden" value="')[1].split('"')[0]
    streamed = session.post(
        local_server.url + "/ui/stream",
        json={"prompt": PROMPT, "model": "smollm2-135m", "max_tokens": 20},
        headers={"X-CSRFToken": token},
        timeout=120,
    )
    assert streamed.status_code == 200 and '"type":"done"' in streamed.text
    api = requests.post(
        local_server.url + "/generate-code/",
        json={"prompt": PROMPT, "model": "smollm2-135m", "max_tokens": 20, "stream": False},
        timeout=120,
    )
    assert api.status_code == 200 and api.json()["model"] == "smollm2-135m"
    wrong = requests.post(
        local_server.url + "/generate-code/",
        json={"prompt": PROMPT, "model": "gpt-4o-mini"},
        timeout=30,
    )
    assert wrong.status_code == 400 and "smollm2-135m" in wrong.json()["error"]["message"]


@pytest.mark.local_model
@pytest.mark.parametrize("cut", [13, 40])
def test_continue_with_the_real_model_gives_the_answer_it_would_have_given_whole(
    local_server: Server, cut: int
) -> None:
    """The model carries its own reply on (no "please continue" turn, after which
    small models restate the answer from the top): greedy, cut at `cut` tokens
    and continued, the answer is the one it gives in one go."""
    session = requests.Session()

    def ask(**body: Any) -> requests.Response:
        response = session.post(
            local_server.url + "/generate-code/",
            json={"temperature": 0, "stream": False, **body},
            timeout=120,
        )
        assert response.status_code == 200, response.text
        return response

    prompt = "Write a Python function that checks whether a string is a palindrome."
    first = ask(prompt=prompt, max_tokens=cut)
    assert first.json()["finish_reason"] == "length"
    answer_id = first.headers["X-Answer-ID"]
    ask(continue_answer=answer_id, max_tokens=120)
    whole = ask(prompt=prompt, max_tokens=cut + 120).json()["text"]
    stored = session.get(f"{local_server.url}/answers/{answer_id}", timeout=10).json()["text"]
    assert stored.startswith(first.json()["text"])
    assert stored == whole


@pytest.mark.local_model
def test_health_answers_promptly_while_the_model_generates(local_server: Server) -> None:
    finished = threading.Event()

    def generate() -> None:
        requests.post(
            local_server.url + "/generate-code/",
            json={"prompt": PROMPT, "max_tokens": 300},
            timeout=120,
        )
        finished.set()

    worker = threading.Thread(target=generate)
    worker.start()
    deadline = time.monotonic() + 30
    while not health(local_server)["generating"] and time.monotonic() < deadline:
        time.sleep(0.02)
    latencies = []
    while not finished.is_set() and len(latencies) < 20:
        started = time.monotonic()
        assert health(local_server)["generating"] in (True, False)
        latencies.append(time.monotonic() - started)
        time.sleep(0.05)
    worker.join()
    assert len(latencies) >= 5, "the generation ended before the health checks could run"
    # Responsiveness, not speed: a frozen event loop would take a whole generation.
    assert max(latencies) < 0.1, latencies


@pytest.mark.local_model
def test_a_cancelled_request_stops_generation(local_server: Server) -> None:
    with requests.post(
        local_server.url + "/generate-code/",
        json={"prompt": PROMPT + " Explain at length.", "max_tokens": 400},
        stream=True,
        timeout=120,
    ) as response:
        chunks = response.iter_content(chunk_size=None)
        for _ in range(3):
            next(chunks)
        response.raw._fp.fp.raw._sock.shutdown(2)
    deadline = time.monotonic() + 2
    while health(local_server)["generating"] and time.monotonic() < deadline:
        time.sleep(0.02)
    stopped = health(local_server)
    assert stopped["generating"] is False
    time.sleep(0.3)
    assert health(local_server)["tokens_generated"] == stopped["tokens_generated"]


@pytest.mark.local_model
def test_corrupt_or_truncated_weights_are_refused(serve: Any, tmp_path: Path) -> None:
    original = smollm2_path()
    truncated = tmp_path / "truncated.gguf"
    with original.open("rb") as src, truncated.open("wb") as dst:
        dst.write(src.read(5_000_000))
    server = serve(
        **local_env(
            LOCAL_MODEL_PATH=str(truncated), LOCAL_MODEL_SHA256=SPECS["smollm2-135m"].sha256
        )
    )
    response = requests.post(server.url + "/generate-code/", json={"prompt": PROMPT}, timeout=60)
    assert response.status_code == 503
    error = response.json()["error"]
    assert error["code"] == "local_model_invalid"
    assert "corrupt" in error["message"] and "make run" in error["message"]
    assert str(tmp_path) not in response.text  # paths stay in the log
    assert str(tmp_path) not in requests.get(server.url + "/healthz", timeout=5).text
    assert health(server)["model_state"] == "error"


@pytest.mark.local_model
def test_a_file_that_is_not_gguf_is_refused_clearly(serve: Any, tmp_path: Path) -> None:
    garbage = tmp_path / "garbage.gguf"
    garbage.write_bytes(b"not a model" * 1000)
    server = serve(**local_env(LOCAL_MODEL_PATH=str(garbage)))
    response = requests.post(server.url + "/generate-code/", json={"prompt": PROMPT}, timeout=60)
    assert response.status_code == 503
    assert response.json()["error"]["code"] == "local_model_invalid"
    assert "Traceback" not in response.text


def test_joining_parts_is_atomic_and_verified(tmp_path: Path) -> None:
    parts = []
    for i, payload in enumerate([b"alpha" * 1000, b"beta" * 1000, b"gamma"]):
        part = tmp_path / f"part{i}.bin"
        part.write_bytes(payload)
        parts.append(part)
    whole = b"".join(p.read_bytes() for p in parts)
    target = tmp_path / "cache" / "model.gguf"
    with pytest.raises(ModelFileError, match="do not match"):
        join_parts(parts, target, "0" * 64, "test")
    assert not target.exists()
    assert list(target.parent.iterdir()) == []  # no half-written file left behind
    join_parts(parts, target, hashlib.sha256(whole).hexdigest(), "test")
    assert target.read_bytes() == whole


def test_a_missing_weight_package_says_what_to_do(tmp_path: Path) -> None:
    config = Config.from_env(
        {"LOCAL_MODEL": "qwen2.5-coder-0.5b", "MODEL_CACHE_DIR": str(tmp_path)}
    )
    if all(importlib.util.find_spec(p) for p in SPECS["qwen2.5-coder-0.5b"].packages):
        pytest.skip("the 0.5B weights are installed here")
    with pytest.raises(ModelFileError, match="make run"):
        model_file(config)


@pytest.mark.local_model
def test_the_model_loads_once_at_start_up(serve: Any) -> None:
    server: Server = serve(**local_env(INSTANCE="warm"))
    assert health(server)["model_state"] in ("loading", "loaded")
    response = requests.post(
        server.url + "/generate-code/", json={"prompt": PROMPT, "max_tokens": 5}, timeout=120
    )
    assert response.status_code == 200
    assert health(server)["model_state"] == "loaded"
    assert server.logs().count("local model loaded") == 1  # warm-up and request share one load


# -- the runtime's build and its probe (webapp/runtime.py) ----------------------

# A Sapphire Rapids Xeon, as a fresh cloud VM reports it: AMX and AVX-512.
XEON_AMX = (
    "flags\t\t: fpu sse sse2 ssse3 sse4_1 sse4_2 avx f16c fma bmi1 bmi2 avx2 avx512f avx512dq "
    "avx512cd avx512bw avx512vl avx512vbmi avx512_vnni avx512_bf16 amx_tile amx_int8 amx_bf16\n"
)
HASWELL = "flags\t\t: fpu sse sse2 ssse3 sse4_1 sse4_2 avx f16c fma bmi1 bmi2 avx2\n"
OLD_X86 = "flags\t\t: fpu sse sse2 ssse3 sse4_1 sse4_2\n"


def test_the_build_for_each_cpu_names_its_instructions_and_never_amx() -> None:
    xeon = runtime.choose(runtime.cpu_flags(XEON_AMX), machine="x86_64")
    assert xeon.name == "avx512"
    haswell = runtime.choose(runtime.cpu_flags(HASWELL), machine="x86_64")
    assert haswell.name == "avx2"
    assert runtime.choose(runtime.cpu_flags(OLD_X86), machine="x86_64").name == "baseline"
    assert runtime.choose(frozenset(), machine="aarch64").name == "baseline"
    for variant in runtime.VARIANTS:
        assert "-DGGML_NATIVE=OFF" in variant.cmake
        assert not any("AMX" in flag for flag in variant.cmake)
    # Native only when asked for: it is the build that crashed on AMX machines.
    native = runtime.choose(runtime.cpu_flags(XEON_AMX), native=True, machine="x86_64")
    assert "-DGGML_NATIVE=ON" in native.cmake
    # Each build has its own cache folder: no wheel built with other flags comes back.
    keys = {runtime.Build.of(v).key for v in (*runtime.VARIANTS, runtime.NATIVE)}
    assert len(keys) == len(runtime.VARIANTS) + 1


def test_the_installed_runtime_is_the_portable_build() -> None:
    """Catches a regression on any machine, AMX or not: the record says what was
    compiled, and llama.cpp's own report of its compiled features must agree."""
    if importlib.util.find_spec("llama_cpp") is None:
        message = "llama-cpp-python is not installed (make test installs it)"
        if IN_CI:
            pytest.fail(message)
        pytest.skip(message)
    config = Config.from_env()
    build = runtime.installed()
    if build is None:
        pytest.fail("the venv has no llama-build.json: install with `make test`")
    assert build == runtime.wanted(config), "the venv holds another build than this CPU gets"
    if not config.llama_native:
        assert "-DGGML_NATIVE=OFF" in build.cmake_args
        assert "AMX" not in build.cmake_args
    features = subprocess.run(  # in a child: llama_cpp leaves files open at exit
        [sys.executable, "-c", "import llama_cpp; print(llama_cpp.llama_print_system_info())"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    if not config.llama_native:
        assert "AMX_INT8 = 1" not in features, features
        if build.variant != "avx512":
            assert "AVX512 = 1" not in features, features


AMX_MNEMONIC = re.compile(
    r"\s(ldtilecfg|tileloadd\w*|tdpb[su][su]d|tdpbf16ps|tilezero|tilestored)\b"
)
AMX_SNIPPET = """
#include <immintrin.h>
void f(void *cfg, void *a, void *b, void *c) {
    _tile_loadconfig(cfg); _tile_loadd(1, a, 64); _tile_loadd(2, b, 64);
    _tile_dpbssd(0, 1, 2); _tile_stored(0, c, 64);
}
"""


def amx_instructions(library: Path) -> list[str]:
    listing = subprocess.run(
        ["objdump", "-d", "--no-show-raw-insn", str(library)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return AMX_MNEMONIC.findall(listing)


def test_the_runtime_holds_no_amx_instruction(tmp_path: Path) -> None:
    """Whatever CPU runs this, the AMX crash cannot happen in a library that has no
    AMX code: its disassembly is searched, and the search is first shown to find
    AMX in a library compiled with it."""
    if importlib.util.find_spec("llama_cpp") is None or platform.machine() != "x86_64":
        pytest.skip("needs llama-cpp-python on x86-64")
    if Config.from_env().llama_native:
        pytest.skip("LLAMA_NATIVE=1 asked for a native build")
    require_binary("objdump")
    compiler = require_binary("gcc")
    source, probe_lib = tmp_path / "amx.c", tmp_path / "amx.so"
    source.write_text(AMX_SNIPPET)
    amx_flags = ["-O2", "-mamx-tile", "-mamx-int8", "-shared", "-fPIC"]
    subprocess.run([compiler, *amx_flags, str(source), "-o", str(probe_lib)], check=True)
    assert len(amx_instructions(probe_lib)) >= 4  # the search works
    spec = importlib.util.find_spec("llama_cpp")
    assert spec is not None and spec.origin is not None
    libraries = sorted(Path(spec.origin).parent.glob("lib/lib*.so"))
    assert any("ggml-cpu" in lib.name for lib in libraries)
    for library in libraries:
        assert amx_instructions(library) == [], library.name


@pytest.mark.local_model
def test_a_runtime_that_crashes_is_a_clear_error_not_a_crash_loop(serve: Any) -> None:
    server = serve(**local_env(LOCAL_RUNTIME_FAULT="crash", INSTANCE="crash"))
    for _ in range(2):
        response = requests.post(
            server.url + "/generate-code/", json={"prompt": PROMPT, "max_tokens": 5}, timeout=120
        )
        assert response.status_code == 503
        error = response.json()["error"]
        assert error["code"] == "local_model_invalid"
        assert "crashed (SIGSEGV)" in error["message"] and "make run" in error["message"]
    page = requests.Session()
    token = page.get(server.url + "/").text.split('name="csrf_token" type="hidden" value="')[1]
    streamed = page.post(
        server.url + "/ui/stream",
        json={"prompt": PROMPT, "max_tokens": 5},
        headers={"X-CSRFToken": token.split('"')[0]},
        timeout=120,
    )
    assert streamed.status_code == 503
    assert streamed.json()["error"]["code"] == "local_model_invalid"
    info = health(server)
    assert info["model_state"] == "error" and "SIGSEGV" in info["model_error"]
    assert "/" not in info["model_error"]  # no filesystem paths
    assert "was sent SIGSEGV" not in server.logs()  # the worker itself never crashed


def test_make_run_says_so_before_serving_when_the_runtime_crashes() -> None:
    local_env()
    env = {
        k: v for k, v in os.environ.items() if not k.startswith(("OPENAI_", "PROVIDER", "LOCAL_"))
    }
    env.update(LOCAL_MODEL="smollm2-135m", LOCAL_RUNTIME_FAULT="crash")
    result = subprocess.run(
        [sys.executable, "-m", "webapp.models", "prepare"],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
        check=False,
    )
    assert result.returncode == 3, result.stderr
    assert "crashed (SIGSEGV) on its first token" in result.stderr
    assert "make run" in result.stderr and "Traceback" not in result.stderr
