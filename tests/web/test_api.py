"""POST /generate-code/ through its HTTP interface, against the fake upstream."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest
import requests
from flask import Flask
from flask.testing import FlaskClient

from tests.conftest import Server
from tests.fake_upstream import FakeUpstream
from tests.helpers import TOKENS, prompt, sse_events

# -- validation, in-process ------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "code", "needle"),
    [
        ("not json", "invalid_json", "not valid JSON"),
        ("", "invalid_json", "empty"),
        ("[1, 2]", "invalid_request", "JSON object"),
        ("{}", "invalid_request", "prompt: this field is required"),
        ('{"prompt": ""}', "invalid_request", "prompt"),
        ('{"prompt": "   "}', "invalid_request", "whitespace"),
        ('{"prompt": 5}', "invalid_request", "prompt"),
        ('{"prompt": "x", "temperature": 2.5}', "invalid_request", "temperature"),
        ('{"prompt": "x", "max_tokens": 0}', "invalid_request", "max_tokens"),
        ('{"prompt": "x", "max_tokens": 100000}', "invalid_request", "at most 512"),
        ('{"prompt": "x", "stream": "yes"}', "invalid_request", "stream"),
        ('{"prompt": "x", "colour": 1, "size": 2}', "unknown_fields", "colour, size"),
        ('{"prompt": "x", "model": "gpt-2"}', "model_not_allowed", "gpt-4o-mini, gpt-4o"),
    ],
)
def test_bad_input_is_a_400_that_says_why(
    client: FlaskClient, body: str, code: str, needle: str
) -> None:
    response = client.post("/generate-code/", data=body, content_type="application/json")
    assert response.status_code == 400
    error = response.get_json()["error"]
    assert error["code"] == code
    assert needle in error["message"]
    assert error["request_id"] == response.headers["X-Request-ID"]


def test_the_api_takes_json_only(client: FlaskClient) -> None:
    # A cross-site form can send text/plain without a preflight: it must not get through.
    response = client.post("/generate-code/", data='{"prompt": "x"}', content_type="text/plain")
    assert response.status_code == 415
    assert response.get_json()["error"]["code"] == "unsupported_media_type"


def test_health_never_shows_credentials_in_the_base_url(upstream: FakeUpstream) -> None:
    from tests.conftest import TEST_SETTINGS
    from webapp import create_app

    app = create_app({**TEST_SETTINGS, "OPENAI_BASE_URL": "http://user:hunter2@example.test/v1"})
    body = app.test_client().get("/healthz").get_json()
    assert "hunter2" not in str(body) and body["base_url"] == "http://example.test/v1/"


def test_prompt_over_the_token_limit_names_the_count(client: FlaskClient) -> None:
    response = client.post("/generate-code/", json={"prompt": " ".join(["word"] * 300)})
    assert response.status_code == 400
    error = response.get_json()["error"]
    assert error["code"] == "prompt_too_long"
    assert "300 tokens" in error["message"] and "200" in error["message"]


def test_body_over_the_size_limit_is_413(client: FlaskClient) -> None:
    response = client.post("/generate-code/", data="x" * 1_100_000, content_type="application/json")
    assert response.status_code == 413
    assert response.get_json()["error"]["code"] == "body_too_large"


def test_unexpected_errors_are_a_generic_500(app: Flask, caplog: pytest.LogCaptureFixture) -> None:
    @app.get("/boom")
    def boom() -> str:
        raise RuntimeError("secret internals")

    response = app.test_client().get("/boom")
    assert response.status_code == 500
    error = response.get_json()["error"]
    assert error["code"] == "internal_error"
    assert "secret internals" not in response.get_data(as_text=True)


def test_a_client_request_id_is_echoed(client: FlaskClient) -> None:
    response = client.get("/healthz", headers={"X-Request-ID": "abc-123"})
    assert response.headers["X-Request-ID"] == "abc-123"
    assert response.get_json()["provider"] == "openai"


def test_no_slash_route_answers_without_redirect(client: FlaskClient) -> None:
    response = client.post("/generate-code", json={"prompt": "x", "bogus": 1})
    assert response.status_code == 400  # reached the view: not a 308


# -- streaming, through gunicorn -------------------------------------------------


def post(
    server: Server, body: dict[str, Any], accept: str | None = None, **kwargs: Any
) -> requests.Response:
    headers = {"Accept": accept} if accept else {}
    return requests.post(
        server.url + "/generate-code/", json=body, headers=headers, timeout=30, **kwargs
    )


def test_text_plain_is_the_default(server: Server, fake: FakeUpstream) -> None:
    response = post(server, {"prompt": prompt()})
    assert response.status_code == 200
    assert response.headers["Content-Type"] == "text/plain; charset=utf-8"
    assert response.headers["Cache-Control"] == "no-cache"
    assert response.headers["X-Accel-Buffering"] == "no"
    assert "Content-Encoding" not in response.headers
    assert response.text == "".join(TOKENS)
    assert response.headers["X-Request-ID"]


def test_sse_format(server: Server, fake: FakeUpstream) -> None:
    response = post(server, {"prompt": prompt("answer=code")}, accept="text/event-stream")
    assert response.headers["Content-Type"].startswith("text/event-stream")
    events = sse_events(response.text)
    deltas = [data["text"] for name, data in events if name == "delta"]
    name, done = events[-1]
    assert name == "done"
    text = "".join(deltas)
    assert "def is_palindrome" in text
    assert done["finish_reason"] == "stop"
    assert done["usage"]["prompt_tokens"] == 11
    assert done["usage"]["completion_tokens"] == len(fake.records[-1].tokens_sent)
    assert done["code_blocks"][0]["language"] == "python"
    assert done["code_blocks"][0]["code"].startswith("def is_palindrome")
    assert done["request_id"] == response.headers["X-Request-ID"]


def test_ndjson_format(server: Server, fake: FakeUpstream) -> None:
    response = post(server, {"prompt": prompt()}, accept="application/x-ndjson")
    assert response.headers["Content-Type"].startswith("application/x-ndjson")
    lines = [json.loads(line) for line in response.text.splitlines()]
    assert [x["type"] for x in lines][-1] == "done"
    assert "".join(x["text"] for x in lines if x["type"] == "delta") == "".join(TOKENS)


def test_non_streaming_json(server: Server, fake: FakeUpstream) -> None:
    response = post(server, {"prompt": prompt("answer=code"), "stream": False})
    assert response.status_code == 200
    body = response.json()
    assert "def is_palindrome" in body["code_blocks"][0]["code"]
    assert "normalises" in body["explanation"] and "```" not in body["explanation"]
    assert body["model"] == "gpt-4o-mini"
    assert body["usage"]["completion_tokens"] > 0
    assert body["finish_reason"] == "stop"
    assert body["text"].startswith("Here is")


def test_request_fields_reach_the_upstream(server: Server, fake: FakeUpstream) -> None:
    post(
        server,
        {
            "prompt": prompt(),
            "language": "Rust",
            "model": "gpt-4o",
            "temperature": 0.7,
            "max_tokens": 99,
        },
    )
    sent = fake.records[-1].body
    assert sent["model"] == "gpt-4o"
    assert sent["temperature"] == 0.7
    assert sent["max_tokens"] == 99
    assert sent["stream"] is True and sent["stream_options"] == {"include_usage": True}
    assert sent["messages"][0]["role"] == "system" and "fenced" in sent["messages"][0]["content"]
    assert "Language: Rust" in sent["messages"][1]["content"]
    assert fake.records[-1].headers["authorization"] == "Bearer sk-test-secret-key"


def test_deltas_arrive_before_the_upstream_finishes(server: Server, fake: FakeUpstream) -> None:
    with post(server, {"prompt": prompt("tokens=6 delay=0.3")}, stream=True) as response:
        chunks = response.iter_content(chunk_size=None)
        first = next(chunks)
        sent_when_first_arrived = len(fake.records[-1].tokens_sent)
        rest = b"".join(chunks)
    assert first.decode() == "t0 "
    assert sent_when_first_arrived < 6
    assert (first + rest).decode() == "".join(f"t{i} " for i in range(6))


@pytest.mark.parametrize(
    ("directive", "status", "code"),
    [
        ("status=400", 400, "upstream_bad_request"),
        ("status=401", 502, "upstream_auth"),
        ("status=403", 502, "upstream_auth"),
        ("status=404", 502, "upstream_error"),
        ("fail=500,500,500", 502, "upstream_error"),
        ("fail=503,503,503", 503, "upstream_unavailable"),
        ("first_delay=5", 504, "first_token_timeout"),
        ("malformed_after=0", 502, "upstream_malformed"),
        ("error_after=0", 502, "upstream_error"),
    ],
)
def test_errors_before_the_stream_get_a_status(
    server: Server, fake: FakeUpstream, directive: str, status: int, code: str
) -> None:
    response = post(server, {"prompt": prompt(directive + " id=" + code)})
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["code"] == code
    assert error["request_id"] == response.headers["X-Request-ID"]
    assert "sk-test-secret-key" not in response.text
    assert "Traceback" not in response.text


def test_an_upstream_proxy_carries_the_requests(serve: Any, fake: FakeUpstream) -> None:
    # The fake answers absolute-URI requests too, so it can stand in for a forward proxy.
    server = serve(
        UPSTREAM_PROXY=fake.url.removesuffix("/v1"), OPENAI_BASE_URL="http://model.invalid/v1"
    )
    response = post(server, {"prompt": prompt("id=proxied")})
    assert response.status_code == 200 and response.text == "".join(TOKENS)
    assert fake.records_for("id=proxied")[0].path == "http://model.invalid/v1/chat/completions"


def test_the_api_key_never_reaches_the_log(server: Server, fake: FakeUpstream) -> None:
    def ask(directive: str, request_id: str) -> requests.Response:
        return requests.post(
            server.url + "/generate-code/",
            json={"prompt": prompt(directive)},
            headers={"X-Request-ID": request_id},
            timeout=30,
        )

    logged_before = len(server.logs())  # a shared server: other tests logged too
    refused = ask("status=401 id=keylog", "keylog-refused")
    assert (refused.status_code, refused.json()["error"]["code"]) == (502, "upstream_auth")
    assert ask("id=keylog-ok", "keylog-ok").status_code == 200
    # The key went upstream, and both requests were logged with the upstream's words:
    # a log that held nothing would hold no key either.
    assert fake.records_for("id=keylog")[0].headers["authorization"] == "Bearer sk-test-secret-key"
    deadline = time.monotonic() + 5
    while not all(f'"request_id":"{r}"' in server.logs() for r in ("keylog-refused", "keylog-ok")):
        assert time.monotonic() < deadline, server.logs()[-2000:]
        time.sleep(0.05)
    assert "scripted 401" in server.logs()[logged_before:]
    assert "sk-test-secret-key" not in server.logs()
