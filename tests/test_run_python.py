"""The Run button: Python answers run in the browser (Pyodide in a Web Worker, served by
the app), with a time limit; the server never executes generated code."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest

from tests.conftest import IN_CI, ROOT, Server
from tests.fake_upstream import FakeUpstream
from tests.helpers import submit, wait_idle

pytestmark = pytest.mark.browser


@pytest.fixture()
def page(chromium: Any, server: Server) -> Iterator[Any]:
    if not (ROOT / "static" / "pyodide" / "pyodide.asm.wasm").exists():
        message = "Pyodide is not installed in static/ (make test copies it from npm)"
        if IN_CI:
            pytest.fail(message)
        pytest.skip(message)
    context = chromium.new_context()
    foreign: list[str] = []
    page = context.new_page()
    page.on("request", lambda r: None if r.url.startswith(server.url) else foreign.append(r.url))
    page.goto(server.url + "/")
    yield page
    context.close()
    assert foreign == [], f"requests to other origins: {foreign}"


def run_answer(page: Any, answer: str) -> Any:
    submit(page, f"Python please [[fake answer={answer}]]")
    wait_idle(page)
    button = page.wait_for_selector("figure.codeblock button.run")
    button.click()
    return page.wait_for_selector("figure.codeblock pre.run-output")


def output_when(page: Any, done: str, timeout: float) -> str:
    deadline = time.monotonic() + timeout
    while True:
        text: str = page.inner_text("pre.run-output")
        if done in text or time.monotonic() > deadline:
            return text
        time.sleep(0.2)


def test_a_printed_result_appears(page: Any, fake: FakeUpstream) -> None:
    run_answer(page, "runnable")
    out = output_when(page, "done", 60)
    assert "45\ndone" in out
    assert page.is_enabled("figure.codeblock button.run")


def test_an_exception_shows_its_traceback(page: Any, fake: FakeUpstream) -> None:
    run_answer(page, "raising")
    out = output_when(page, "ValueError", 60)
    assert "Traceback" in out and "ValueError: invalid literal for int()" in out


def test_an_endless_loop_is_stopped_and_the_page_stays_usable(
    page: Any, fake: FakeUpstream
) -> None:
    run_answer(page, "looping")
    out = output_when(page, "Stopped", 60)
    assert "Stopped: the run passed 10 s." in out
    submit(page, "Still here [[fake answer=runnable]]")  # the page still answers
    wait_idle(page)
    page.click("figure.codeblock button.run")
    assert "45" in output_when(page, "done", 60)


def test_only_the_runner_may_compile_webassembly(server: Server) -> None:
    import requests

    page_policy = requests.get(server.url + "/", timeout=5).headers["Content-Security-Policy"]
    worker = requests.get(server.url + "/static/run-worker.js", timeout=5)
    assert "wasm-unsafe-eval" not in page_policy and "unsafe-eval" not in page_policy
    assert "'wasm-unsafe-eval'" in worker.headers["Content-Security-Policy"]
    assert (
        "'unsafe-eval'" not in worker.headers["Content-Security-Policy"].replace(";", " ").split()
    )
