"""The embedded model, loaded for real (SmolLM2-135M, the smallest), under gunicorn."""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import json
import os
import platform
import re
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.conftest import IN_CI, Server, require_binary
from webapp.config import Config
from webapp.providers import runtime
from webapp.providers.models import SPECS, ModelFileError, join_parts, model_file

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
    select = page.split('<select id="model" name="model">')[1].split("</select>")[0]
    assert re.findall(r'<option[^>]* value="([^"]*)"', select) == ["smollm2-135m"]
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
    generating = []
    while not finished.is_set() and len(latencies) < 20:
        started = time.monotonic()
        generating.append(health(local_server)["generating"])
        latencies.append(time.monotonic() - started)
        time.sleep(0.05)
    worker.join()
    assert generating.count(True) >= 5, "the generation ended before the health checks could run"
    # True while it generates, then False once it ended (the response may still be on its way).
    assert generating == sorted(generating, reverse=True), generating
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


# -- one model shared fairly (webapp/providers/local.py: FairQueue) --------------


@pytest.fixture(scope="module")
def shared_server(serve: Any) -> Server:
    """Clients told apart by X-Forwarded-For (as behind a proxy), and room for long prompts."""
    server: Server = serve(
        **local_env(
            TRUST_FORWARDED_FOR="1",
            MAX_PROMPT_TOKENS="2000",
            FIRST_TOKEN_TIMEOUT="60",  # a busy CPU takes its time over long prompts
            INSTANCE="shared",
        )
    )
    wait_for(lambda: health(server)["model_state"] == "loaded", 120, "the model to load")
    return server


def long_prompt(tag: str, lines: int) -> str:
    """About 15 of SmolLM2's tokens a line, different from the first line on (no
    cached prefix shortens its evaluation)."""
    rows = (f"job {tag}-{i}: finished in {i * 37 % 1000} ms" for i in range(lines))
    return f"Review this log ({tag}) and say which job failed.\n" + "\n".join(rows)


def wait_for(check: Any, timeout: float, what: str) -> float:
    """Poll `check` until it holds; returns the seconds it took."""
    started = time.monotonic()
    while not check():
        assert time.monotonic() - started < timeout, f"waited {timeout:g} s for {what}"
        time.sleep(0.02)
    return time.monotonic() - started


class Asker:
    """One streamed API request from the client at `address`, on a socket of its
    own: a thread reads the answer and notes when its first text came; `leave()`
    closes the connection, as a client that goes away does."""

    def __init__(self, server: Server, address: str, prompt: str, max_tokens: int) -> None:
        body = json.dumps({"prompt": prompt, "max_tokens": max_tokens, "temperature": 0})
        head = (
            "POST /generate-code/ HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            "Content-Type: application/json\r\nAccept: application/x-ndjson\r\n"
            f"X-Forwarded-For: {address}\r\nContent-Length: {len(body)}\r\n"
            "Connection: close\r\n\r\n"
        )
        self.sock = socket.create_connection(("127.0.0.1", server.port))
        self.sock.sendall(head.encode() + body.encode())
        self.received = b""
        self.first_text_at: float | None = None
        self.ended = threading.Event()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        try:
            while chunk := self.sock.recv(65536):
                self.received += chunk
                if self.first_text_at is None and b'"type":"delta"' in self.received:
                    self.first_text_at = time.monotonic()
        except OSError:
            pass
        finally:
            self.ended.set()

    @property
    def status(self) -> int | None:
        line = self.received.partition(b"\r\n")[0].split()
        return int(line[1]) if len(line) > 1 else None

    def leave(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)
        self.sock.close()


def queued(server: Server, count: int) -> None:
    wait_for(lambda: health(server)["queue"] == count, 10, f"{count} requests in the queue")


def idle(server: Server) -> None:
    """Until the model is free: what an earlier test left has stopped."""

    def free() -> bool:
        info = health(server)
        return info["queue"] == 0 and not info["generating"]

    wait_for(free, 60, "the model to be free")


@pytest.mark.local_model
def test_a_client_with_long_prompts_in_flight_does_not_hold_up_another(
    shared_server: Server,
) -> None:
    """Client A has three long prompts in flight; B's short one is served as soon as
    A's first is done, before A's other two. First in, first out served A's others
    first: B's first token waited for all of them, past its bound with a few more."""
    idle(shared_server)
    first = Asker(shared_server, "10.0.1.1", long_prompt("a1", 100), 1)
    askers = [first]
    try:
        wait_for(lambda: health(shared_server)["generating"], 30, "A's first prompt to start")
        others = [Asker(shared_server, "10.0.1.1", long_prompt(f"a{i}", 100), 1) for i in (2, 3)]
        askers += others
        queued(shared_server, 2)
        short = Asker(shared_server, "10.0.1.2", "Say hi.", 5)
        askers.append(short)
        queued(shared_server, 3)
        first.leave()  # A's first ends here (a busy CPU would take long over the rest)
        assert short.ended.wait(120), "B was not served"
        assert short.status == 200 and b'"type":"done"' in short.received, short.received
        assert short.first_text_at is not None
        assert all(
            other.first_text_at is None or other.first_text_at > short.first_text_at
            for other in others
        ), "one of A's queued prompts was served before B's"
    finally:
        for asker in askers:
            asker.leave()
    queued(shared_server, 0)


@pytest.mark.local_model
def test_a_client_over_its_share_of_the_queue_is_refused_while_another_gets_in(
    shared_server: Server,
) -> None:
    """LOCAL_QUEUE_SIZE is 8: one client may have 4 waiting, and one more is refused
    at once with local_model_busy; another client's request still gets in, and is
    served before them."""
    idle(shared_server)
    first = Asker(shared_server, "10.0.2.1", long_prompt("b0", 100), 1)
    askers = [first]
    try:
        wait_for(lambda: health(shared_server)["generating"], 30, "A's first prompt to start")
        askers += [
            Asker(shared_server, "10.0.2.1", long_prompt(f"b{i}", 100), 1) for i in (1, 2, 3, 4)
        ]
        queued(shared_server, 4)
        over = Asker(shared_server, "10.0.2.1", "Say hi.", 5)
        askers.append(over)
        assert over.ended.wait(10), "A's request over its share was not refused"
        assert over.status == 503, over.received
        error = json.loads(over.received.partition(b"\r\n\r\n")[2])["error"]
        assert error["code"] == "local_model_busy"
        assert "4 requests waiting" in error["message"] and "share" in error["message"]
        other = Asker(shared_server, "10.0.2.2", "Say hi.", 5)
        askers.append(other)
        queued(shared_server, 5)  # admitted: A's four and B's one wait
        first.leave()
        assert other.ended.wait(120), "B was not served"
        assert other.status == 200 and b'"type":"done"' in other.received, other.received
        assert health(shared_server)["queue"] == 3  # B went before A's four
    finally:
        for asker in askers:
            asker.leave()
    queued(shared_server, 0)


@pytest.mark.local_model
def test_requests_whose_client_left_leave_the_queue_and_stop_their_prompt(
    shared_server: Server,
) -> None:
    """A queued request whose client left is dropped at once, and a long prompt's
    evaluation stops within a step of the client leaving (it ran to the end of the
    prompt before: the model stayed busy for seconds after nobody wanted it)."""
    idle(shared_server)
    prompt = long_prompt("c1", 100)  # about 1,500 tokens: 5 s or more on 2 cores
    before = health(shared_server)["tokens_evaluated"]
    evaluating = Asker(shared_server, "10.0.3.1", prompt, 5)
    wait_for(lambda: health(shared_server)["tokens_evaluated"] > before, 30, "the prompt to start")
    waiting = Asker(shared_server, "10.0.3.2", "Say hi.", 5)
    queued(shared_server, 1)
    waiting.leave()
    assert wait_for(lambda: health(shared_server)["queue"] == 0, 10, "the queue to empty") < 2
    evaluating.leave()
    assert wait_for(lambda: not health(shared_server)["generating"], 60, "the model to free") < 15
    stopped = health(shared_server)["tokens_evaluated"]
    assert stopped - before < 1200  # not the whole prompt
    time.sleep(0.5)
    assert health(shared_server)["tokens_evaluated"] == stopped
    assert evaluating.first_text_at is None and waiting.first_text_at is None
    # The model is free for the next client at once.
    started = time.monotonic()
    response = requests.post(
        shared_server.url + "/generate-code/",
        json={"prompt": "Say hi.", "max_tokens": 5, "stream": False},
        headers={"X-Forwarded-For": "10.0.3.3"},
        timeout=60,
    )
    assert response.status_code == 200, response.text
    assert time.monotonic() - started < 30
    assert "Traceback" not in shared_server.logs()  # a stopped prompt is no error


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


# -- the runtime's build and its probe (webapp/providers/runtime.py) ----------------------

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
    # The page's route starts its answer's response within 0.25 s (the page then knows
    # the answer's id): an error that comes after its retries ends the stream.
    assert streamed.status_code == 200
    end = json.loads(streamed.text.splitlines()[-1])
    assert end["type"] == "error" and end["code"] == "local_model_invalid"
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
        [sys.executable, "-m", "webapp.providers.models", "prepare"],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
        check=False,
    )
    assert result.returncode == 3, result.stderr
    assert "crashed (SIGSEGV) on its first token" in result.stderr
    assert "make run" in result.stderr and "Traceback" not in result.stderr
