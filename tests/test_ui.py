"""The page's server side: form, CSRF, security headers, and safe rendering."""

from __future__ import annotations

import re

import requests
from flask.testing import FlaskClient

from tests.conftest import Server
from tests.fake_upstream import FakeUpstream
from webapp.render import render_answer


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
    assert "temperature: Input should be less than or equal to 2." in html  # the API's words
    field = re.search(r'<input[^>]*id="temperature"[^>]*>', html)
    assert field and 'aria-invalid="true"' in field.group(0) and "autofocus" in field.group(0)
    assert "request id" in html
