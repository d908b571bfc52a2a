"""/openapi.json is valid and matches what the API really sends; /docs renders
offline; and the API is fuzzed against its own description."""

from __future__ import annotations

import json
import os
from typing import Any

import pytest
import requests
import schemathesis
from flask.testing import FlaskClient
from hypothesis import HealthCheck, given, settings
from openapi_spec_validator import validate
from schemathesis import GenerationMode

from tests.conftest import Server
from tests.fake_upstream import FakeUpstream
from tests.helpers import prompt, sse_events
from webapp.web.openapi import Answer, Delta, Done, ErrorResponse, Health, Ping, StreamError

# The operations that take input that can be invalid (a body, or typed query parameters).
NEGATIVE_PATHS = ("/generate-code/", "/answers")
FUZZ_EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "60"))


def test_the_description_is_valid_openapi(client: FlaskClient) -> None:
    spec = client.get("/openapi.json").get_json()
    validate(spec)
    body = spec["components"]["schemas"]["GenerateCodeRequest"]
    assert body["additionalProperties"] is False
    assert set(body["properties"]) == {
        "prompt",
        "language",
        "model",
        "temperature",
        "max_tokens",
        "stream",
        "conversation_id",
        "continue_answer",
        "resumable",
        "files",
    }
    assert body["properties"]["max_tokens"]["anyOf"][0]["maximum"] == 512
    responses = spec["paths"]["/generate-code/"]["post"]["responses"]
    assert {"200", "400", "413", "429", "500", "502", "503", "504"} <= set(responses)


def test_real_responses_match_the_described_schemas(server: Server, fake: FakeUpstream) -> None:
    url = server.url + "/generate-code/"
    events = sse_events(
        requests.post(
            url, json={"prompt": prompt("answer=code")}, headers={"Accept": "text/event-stream"}
        ).text
    )
    # Each event is checked below: there must be some (and an end), or nothing is.
    assert events and "delta" in {name for name, _ in events} and events[-1][0] == "done"
    for name, data in events:
        {"delta": Delta, "done": Done}[name].model_validate({"type": name, **data})
    broken = sse_events(
        requests.post(
            url,
            json={"prompt": prompt("drop_after=2 id=oa")},
            headers={"Accept": "text/event-stream"},
        ).text
    )
    assert broken[-1][0] == "error"
    StreamError.model_validate({"type": "error", **broken[-1][1]})
    lines = requests.post(
        url, json={"prompt": prompt()}, headers={"Accept": "application/x-ndjson"}
    ).text.splitlines()
    assert lines and json.loads(lines[-1])["type"] == "done"
    for line in lines:
        item = json.loads(line)
        {"delta": Delta, "done": Done, "ping": Ping, "error": StreamError}[
            item["type"]
        ].model_validate(item)
    Answer.model_validate(requests.post(url, json={"prompt": prompt(), "stream": False}).json())
    ErrorResponse.model_validate(requests.post(url, json={"prompt": ""}).json())
    Health.model_validate(requests.get(server.url + "/healthz").json())


@pytest.mark.browser
def test_docs_render_in_chromium_with_nothing_from_another_origin(
    server: Server, chromium: Any
) -> None:
    foreign: list[str] = []
    page = chromium.new_page()
    try:
        page.on(
            "request", lambda r: None if r.url.startswith(server.url) else foreign.append(r.url)
        )
        page.goto(server.url + "/docs")
        assert "POST /generate-code/" in page.inner_text("main")
        assert "unknown_fields" in page.inner_text("main")
        assert page.query_selector("a[href='/openapi.json']")
        assert "Provider and model in use" in page.inner_text("main")  # was a lone "."
    finally:
        page.close()
    assert foreign == []


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE])
def test_fuzz_the_api_against_its_description(
    serve: Any, fake: FakeUpstream, mode: GenerationMode
) -> None:
    """Every generated request: a documented status, a body that fits its schema,
    never a 500, a hang or a stack trace. FUZZ_EXAMPLES raises the count (make fuzz)."""
    # Prompts the schema allows must be accepted: a prompt limit above the body limit.
    server = serve(MAX_PROMPT_TOKENS="100000")
    api = schemathesis.openapi.from_url(server.url + "/openapi.json")
    seen: list[int] = []
    for result in api.get_all_operations():
        operation = result.ok()
        if mode is GenerationMode.NEGATIVE and operation.path not in NEGATIVE_PATHS:
            continue  # only a string id in the path: no input can be wrong

        @given(case=operation.as_strategy(generation_mode=mode))
        @settings(
            max_examples=FUZZ_EXAMPLES,
            deadline=None,
            database=None,
            suppress_health_check=list(HealthCheck),
        )
        def check(case: Any) -> None:
            response = case.call(timeout=30)
            seen.append(response.status_code)
            if response.status_code == 400 and "two files have this name" in response.text:
                return  # JSON Schema cannot say that names differ (the description says so)
            assert response.status_code < 500 or response.status_code in (502, 503, 504), (
                response.text
            )
            case.validate_response(response)
            assert "Traceback" not in response.text

        check()
    assert seen
