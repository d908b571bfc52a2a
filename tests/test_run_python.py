"""The Run button: Python answers run in the browser (Pyodide in a Web Worker, served by
the app), with a time limit; the server never executes generated code. The worker is in a
sandboxed frame with an opaque origin, so the code cannot act as the reader."""

from __future__ import annotations

import http.client
import time
from collections.abc import Iterator
from typing import Any

import pytest
import requests

from tests.conftest import IN_CI, ROOT, Server
from tests.fake_upstream import ANSWERS, FakeUpstream
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
    # A blob: URL (the runner's worker) is made in the browser: no request leaves it.
    local = (server.url, "blob:")
    page.on("request", lambda r: None if r.url.startswith(local) else foreign.append(r.url))
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


def answer_ids(page: Any, server: Server) -> list[str]:
    """The reader's answers, as the server has them (with the browser's cookie)."""
    listing = page.context.request.get(server.url + "/answers").json()
    return [answer["id"] for answer in listing["answers"]]


def is_shared(page: Any, server: Server, answer_id: str) -> bool:
    answer = page.context.request.get(f"{server.url}/answers/{answer_id}").json()
    return bool(answer["shared"])


# What a hostile answer's Python tries with the reader's authority: each attempt prints
# GOT and what it got, or FAILED.
HOSTILE = """```python
import js
from pyodide.ffi import to_js
from pyodide.http import pyfetch

APP = "{app}"
SHARE = APP + "/answers/{answer_id}/share"

async def read(url, **fields):
    fields["credentials"] = "include"
    response = await js.fetch(url, to_js(fields, dict_converter=js.Object.fromEntries))
    return await response.text()

async def cookie():
    return js.document.cookie

attempts = {{
    "answers": lambda: read(APP + "/answers"),
    "csrf_token": lambda: read(APP + "/"),
    "share": lambda: read(SHARE, method="POST"),
    "form": lambda: read(SHARE, method="POST", mode="no-cors", body=js.URLSearchParams.new("a=1")),
    "pyfetch": lambda: pyfetch("/answers/{answer_id}/share", method="POST"),
    "cookie": cookie,
}}
for name, attempt in attempts.items():
    try:
        print(name, "GOT", await attempt())
    except Exception as error:
        print(name, "FAILED", type(error).__name__)
print("printing works")
```
"""


def test_run_code_cannot_act_as_the_reader(
    page: Any, fake: FakeUpstream, server: Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    submit(page, "Hello [[fake tokens=3]]")  # an answer of the reader's, to go after
    wait_idle(page)
    [answer_id] = answer_ids(page, server)
    monkeypatch.setitem(ANSWERS, "hostile", HOSTILE.format(app=server.url, answer_id=answer_id))
    run_answer(page, "hostile")
    out = output_when(page, "printing works", 60)
    for name in ("answers", "csrf_token", "share", "form", "pyfetch", "cookie"):
        assert f"{name} FAILED" in out, out
    assert "GOT" not in out
    assert not is_shared(page, server, answer_id)  # no share link was made
    secrets = [c["value"] for c in page.context.cookies()] + [page.input_value("#csrf_token")]
    assert all(secret not in out for secret in secrets)


def test_the_runner_frame_has_an_opaque_origin(
    page: Any, fake: FakeUpstream, server: Server
) -> None:
    run_answer(page, "runnable")
    assert "45\ndone" in output_when(page, "done", 60)
    [answer_id] = answer_ids(page, server)
    [element] = page.query_selector_all("iframe[src='/static/runner.html']")
    assert element.get_attribute("sandbox") == "allow-scripts"
    page.click("figure.codeblock button.run")  # the warm frame runs it again
    assert output_when(page, "done", 10).startswith("45\ndone")
    assert len(page.query_selector_all("iframe")) == 1 and element.evaluate("e => e.isConnected")
    frame = element.content_frame()
    assert frame.evaluate("origin") == "null"
    tries = {
        "cookie": "document.cookie",
        "storage": "localStorage.length",
        "page": "parent.document.title",
    }
    for name, expression in tries.items():
        got = frame.evaluate(
            f"() => {{ try {{ return {expression}; }} catch (e) {{ return e.name; }} }}"
        )
        assert got == "SecurityError", name
    fetched = f"fetch('{server.url}/answers', {{ credentials: 'include' }})"
    assert frame.evaluate(f"{fetched}.then(r => r.status, e => e.name)") == "TypeError"
    share = f"{server.url}/answers/{answer_id}/share"
    page_url = page.url
    frame.evaluate(
        f"""() => {{
            const form = document.createElement("form");
            form.method = "post";
            form.action = "{share}";
            document.body.appendChild(form);
            form.submit();
            try {{ top.location.href = "{share}"; }} catch (e) {{}}
        }}"""
    )
    time.sleep(1)
    assert page.url == page_url and frame.url.endswith("/static/runner.html")
    assert not is_shared(page, server, answer_id)


def raw_get(server: Server, path: str) -> Any:
    """A GET of this exact path: clients like requests remove its dot segments."""
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=5)
    connection.request("GET", path)
    response = connection.getresponse()
    response.read()
    connection.close()
    return response


def test_the_runner_policy_goes_by_the_file_served(server: Server) -> None:
    page_policy = raw_get(server, "/").headers["Content-Security-Policy"]
    for path in ("/static/pyodide/../app.js", "/static/pyodide/%2e%2e/app.js"):
        response = raw_get(server, path)
        assert response.status == 200 and "javascript" in response.headers["Content-Type"]
        assert response.headers["Content-Security-Policy"] == page_policy, path
        assert response.headers["Access-Control-Allow-Origin"] is None, path
    runner = raw_get(server, "/static/run-worker.js")
    assert runner.headers["Access-Control-Allow-Origin"] == "*"
    assert raw_get(server, "/static/pyodide/pyodide.mjs").headers["Access-Control-Allow-Origin"]
    for route in ("/", "/answers", "/healthz", "/static/app.js"):
        assert raw_get(server, route).headers["Access-Control-Allow-Origin"] is None, route


def test_only_the_runner_may_compile_webassembly(server: Server) -> None:
    page_policy = requests.get(server.url + "/", timeout=5).headers["Content-Security-Policy"]
    runner = requests.get(server.url + "/static/runner.html", timeout=5).headers
    policy = runner["Content-Security-Policy"].replace(";", " ").split()
    assert "wasm-unsafe-eval" not in page_policy and "unsafe-eval" not in page_policy
    assert "'wasm-unsafe-eval'" in policy and "'unsafe-eval'" not in policy
    # Its own origin, opaque, and framed only by the page.
    assert runner["Content-Security-Policy"].startswith("sandbox allow-scripts;")
    assert "allow-same-origin" not in policy
    assert "frame-ancestors 'self'" in runner["Content-Security-Policy"]
    assert runner["X-Frame-Options"] == "SAMEORIGIN"
