"""The Run button: Python answers run in the browser (Pyodide in a Web Worker, served by
the app), with a time limit; the server never executes generated code. The worker is in a
sandboxed frame with an opaque origin, so the code cannot act as the reader."""

from __future__ import annotations

import http.client
import json
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
    if not list((ROOT / "static" / "pyodide").glob("*/pyodide.asm.wasm")):
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


def test_a_run_can_be_stopped_and_the_next_one_starts_warm(page: Any, fake: FakeUpstream) -> None:
    run_answer(page, "looping")
    output_when(page, "Starting", 5)
    page.wait_for_selector("figure.codeblock button.run.running:has-text('Stop')")
    while "Starting" in page.inner_text("pre.run-output"):  # until the loop runs
        time.sleep(0.1)
    time.sleep(0.5)
    started = time.monotonic()
    page.click("figure.codeblock button.run")
    assert "Stopped." in output_when(page, "Stopped.", 3)
    assert time.monotonic() - started < 3  # not the 10 s limit
    assert page.inner_text("figure.codeblock button.run") == "Run"
    # A fresh runner loads at once: the next run finds Python ready.
    page.wait_for_selector("iframe[data-ready=true]", state="attached", timeout=60_000)
    submit(page, "Again [[fake answer=runnable]]")
    wait_idle(page)
    page.click("figure.codeblock button.run")
    assert "Starting Python" not in page.inner_text("pre.run-output")
    assert "45\ndone" in output_when(page, "done", 10)


def test_a_missing_package_says_only_the_standard_library_is_there(
    page: Any, fake: FakeUpstream, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(ANSWERS, "numpy", "```python\nimport json\nimport numpy as np\n```\n")
    run_answer(page, "numpy")
    out = output_when(page, "standard library", 60)
    assert "ModuleNotFoundError: No module named 'numpy'" in out
    assert "Only Python's standard library is available here" in out
    assert "micropip" not in out and "loadPackage" not in out
    assert "_pyodide" not in out  # the loader's own frames are not the reader's business
    assert 'File "<exec>", line 2' in out  # the reader's line is


def test_input_says_plainly_there_is_no_keyboard(
    page: Any, fake: FakeUpstream, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(ANSWERS, "asking", "```python\nname = input('Name? ')\nprint(name)\n```\n")
    run_answer(page, "asking")
    out = output_when(page, "no keyboard", 60)
    assert "input() cannot read anything here: this runner has no keyboard" in out, out
    assert "_pyodide" not in out and "OSError" not in out and "I/O error" not in out


def pyodide_version() -> str:
    package = ROOT / "node_modules" / "pyodide" / "package.json"
    version: str = json.loads(package.read_text())["version"]
    return version


def test_pyodide_is_served_by_version_and_cached_for_good(page: Any, server: Server) -> None:
    folder = f"/static/pyodide/{pyodide_version()}/"
    assert page.get_attribute("#answer", "data-pyodide") == folder
    for name in ("pyodide.mjs", "pyodide.asm.wasm", "python_stdlib.zip"):
        response = raw_get(server, folder + name)
        assert response.status == 200, name
        cache = response.headers["Cache-Control"]
        assert "max-age=31536000" in cache and "immutable" in cache, (name, cache)
    # Nothing else is kept for good: the page's own files, the runner, a missing file.
    for path in ("/static/app.js", "/static/run-worker.js", "/", folder + "nope.js"):
        cache = raw_get(server, path).headers["Cache-Control"] or ""
        assert "immutable" not in cache and "31536000" not in cache, path


def test_without_pyodide_no_run_button_is_offered(page: Any, fake: FakeUpstream) -> None:
    # The page as a server without Pyodide installed sends it (no data-pyodide).
    def without_pyodide(route: Any) -> None:
        response = route.fetch()
        html = response.text().replace(' data-pyodide="', ' data-none="')
        route.fulfill(response=response, body=html)

    page.route("**/", without_pyodide)
    page.reload()
    submit(page, "Python please [[fake answer=runnable]]")
    wait_idle(page)
    page.wait_for_selector("figure.codeblock pre.highlight")
    assert page.query_selector("button.run") is None
    assert page.query_selector("iframe") is None
