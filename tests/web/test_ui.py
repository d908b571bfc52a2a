"""The page's server side: form, CSRF, security headers, and safe rendering."""

from __future__ import annotations

import re
import time

import gevent
import requests
from flask.testing import FlaskClient

from tests.conftest import Server
from tests.fake_upstream import FakeUpstream
from webapp.web.render import render_answer
from webapp.web.ui import EXAMPLES


def token_of(html: str) -> str:
    match = re.search(r'name="csrf_token" type="hidden" value="([^"]+)"', html)
    assert match
    return match.group(1)


def test_the_page_has_a_strict_csp_and_names_the_model(client: FlaskClient) -> None:
    response = client.get("/")
    csp = response.headers["Content-Security-Policy"]
    assert "script-src 'self'" in csp and "unsafe-inline" not in csp
    assert response.headers["X-Content-Type-Options"] == "nosniff"
    html = response.get_data(as_text=True)
    assert "gpt-4o-mini" in html and "<script>" not in html
    assert 'src="/static/app.js"' in html


def test_a_stale_csrf_token_keeps_the_prompt_and_gives_a_fresh_token(server: Server) -> None:
    session = requests.Session()
    session.get(server.url + "/")
    response = session.post(server.url + "/", data={"prompt": "keep me", "csrf_token": "stale"})
    assert response.status_code == 400
    assert "session expired" in response.text
    assert "keep me" in response.text  # nothing the person typed is lost
    fresh = token_of(response.text)
    retry = session.post(server.url + "/", data={"prompt": "ok [[fake]]", "csrf_token": fresh})
    assert retry.status_code == 200
    assert "t0 t1" in retry.text


def test_the_script_route_needs_a_csrf_token_and_says_how_to_recover(
    server: Server, fake: FakeUpstream
) -> None:
    session = requests.Session()
    page = session.get(server.url + "/")
    denied = session.post(
        server.url + "/ui/stream",
        json={"prompt": "x"},
        headers={"Accept": "application/x-ndjson, application/json"},
    )
    assert denied.status_code == 400
    error = denied.json()["error"]
    assert error["code"] == "csrf_invalid" and error["csrf_token"]
    allowed = session.post(
        server.url + "/ui/stream",
        json={"prompt": "x [[fake answer=code]]"},
        headers={"X-CSRFToken": token_of(page.text)},
    )
    assert allowed.status_code == 200
    assert '"type":"block"' in allowed.text and '"type":"html"' in allowed.text


def test_the_api_needs_no_csrf_token(server: Server, fake: FakeUpstream) -> None:
    assert requests.post(server.url + "/generate-code/", json={"prompt": "x [[fake]]"}).ok


def test_odd_numbers_in_the_form_are_a_message_not_a_500(client: FlaskClient) -> None:
    page = client.get("/").get_data(as_text=True)
    for value in ("sNaN", "NaN", "Infinity", "3"):
        response = client.post(
            "/", data={"prompt": "x", "temperature": value, "csrf_token": token_of(page)}
        )
        assert response.status_code == 400, value
        assert "Temperature" in response.get_data(as_text=True)


def test_rendering_escapes_everything_the_model_says() -> None:
    html = str(
        render_answer(
            "Hi <b onclick=\"x()\">there</b> **bold** `a<b`\n\n```python\nprint('<script>')\n```\n"
        )
    )
    assert "<b " not in html and "&lt;b onclick" in html
    assert "<strong>bold</strong>" in html and "<code>a&lt;b</code>" in html
    assert "<script>" not in html and "&lt;script&gt;" in html


def test_the_form_says_what_the_api_says_and_marks_the_field(client: FlaskClient) -> None:
    page = client.get("/").get_data(as_text=True)
    response = client.post(
        "/", data={"prompt": "x", "temperature": "5", "csrf_token": token_of(page)}
    )
    html = response.get_data(as_text=True)
    assert response.status_code == 400
    assert "Temperature must be at most 2." in html  # the API's limit, in words
    assert "Input should be" not in html and "temperature:" not in html
    field = re.search(r'<input[^>]*id="temperature"[^>]*>', html)
    assert field and 'aria-invalid="true"' in field.group(0) and "autofocus" in field.group(0)
    assert "request id" in html


def test_the_script_route_says_in_words_which_field_is_wrong(client: FlaskClient) -> None:
    token = token_of(client.get("/").get_data(as_text=True))
    cases = [
        ({"temperature": 5}, "temperature", "Temperature must be at most 2."),
        ({"temperature": "warm"}, "temperature", "Temperature must be a number."),
        ({"max_tokens": 0}, "max_tokens", "Max tokens must be at least 1."),
        ({"max_tokens": 99999}, "max_tokens", "Max tokens must be at most 512."),
        ({"prompt": "word " * 400}, "prompt", "over the limit of 200: shorten it."),
    ]
    for fields, field, words in cases:
        response = client.post(
            "/ui/stream", json={"prompt": "x", **fields}, headers={"X-CSRFToken": token}
        )
        assert response.status_code == 400, fields
        error = response.get_json()["error"]
        assert error["field"] == field and words in error["message"], error
        assert ":" not in error["message"].split(" ")[0], error  # no raw field name first


def test_the_form_inputs_carry_their_bounds(client: FlaskClient) -> None:
    html = client.get("/").get_data(as_text=True)
    temperature = re.search(r'<input[^>]*id="temperature"[^>]*>', html)
    max_tokens = re.search(r'<input[^>]*id="max_tokens"[^>]*>', html)
    assert temperature and 'min="0"' in temperature.group(0) and 'max="2"' in temperature.group(0)
    assert max_tokens and 'min="1"' in max_tokens.group(0) and 'max="512"' in max_tokens.group(0)
    prompt = re.search(r"<textarea[^>]*>", html)
    assert prompt and 'data-max-tokens="200"' in prompt.group(0)
    assert 'data-max-bytes="' in prompt.group(0)


def test_example_prompts_fill_the_form_without_javascript(client: FlaskClient) -> None:
    html = client.get("/").get_data(as_text=True)
    links = re.findall(r'<a [^>]*href="/\?example=(\d+)"[^>]*>([^<]+)</a>', html)
    assert len(links) == len(EXAMPLES) >= 3
    for number, text in links:
        page = client.get(f"/?example={number}").get_data(as_text=True)
        prompt = re.search(r"<textarea[^>]*>\s*([^<]*)</textarea>", page)
        assert prompt and prompt.group(1).strip() == EXAMPLES[int(number)] == text.strip()
    for odd in ("9", "-1", "x", "\u0661"):  # out of range or not a number: an empty form
        page = client.get("/", query_string={"example": odd}).get_data(as_text=True)
        prompt = re.search(r"<textarea[^>]*>\s*([^<]*)</textarea>", page)
        assert prompt and prompt.group(1).strip() == "", odd


def test_the_history_says_how_an_answer_ended_in_words(
    client: FlaskClient, fake: FakeUpstream
) -> None:
    token = token_of(client.get("/").get_data(as_text=True))
    streamed = client.post(
        "/ui/stream",
        json={"prompt": "Broken off [[fake drop_after=2]]"},
        headers={"X-CSRFToken": token},
    )
    assert '"type":"error"' in streamed.get_data(as_text=True)
    deadline = time.monotonic() + 5
    while True:  # the history is written beside the stream, a moment after it
        html = client.get("/").get_data(as_text=True)
        item = re.search(r"Broken off.*?<small>([^<]*)</small>", html, re.DOTALL)
        if (item and "·" in item.group(1)) or time.monotonic() > deadline:
            break
        gevent.sleep(0.05)
    assert item and "the model broke off" in item.group(1), html
    assert "upstream_disconnected" not in html


def test_answer_headings_follow_the_page_outline() -> None:
    def levels(text: str) -> list[int]:
        return [int(n) for n in re.findall(r"<h(\d)>", str(render_answer(text)))]

    # The page's title is its h1: an answer's top heading is an h2, and no level is skipped.
    assert levels("## Overview\n\ntext\n\n### Details\n\n#### More") == [2, 3, 4]
    assert levels("### Explanation:\n\nThe code works.") == [2]
    assert levels("# Title\n\n### Skipped a level\n\n## Back") == [2, 3, 2]
    fenced = "#### A\n\n```python\nx = 1\n```\n\n###### B\n\n### C"
    assert levels(fenced) == [2, 3, 2]  # across code blocks too


def test_an_answer_page_that_is_not_found_is_a_page(client: FlaskClient) -> None:
    # The answers' pages are their own blueprint (history_pages): their errors are pages.
    response = client.get("/a/nothing-here", headers={"Accept": "text/html,*/*;q=0.8"})
    assert response.status_code == 404
    assert response.mimetype == "text/html"
    assert "no answer of yours" in response.get_data(as_text=True)
