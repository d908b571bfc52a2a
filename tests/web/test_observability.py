"""What an operator sees: cost estimates, metrics across workers, the log line, client addresses."""

from __future__ import annotations

import json
from typing import Any

import pytest
import requests

from tests.conftest import Server
from tests.fake_upstream import FakeUpstream
from tests.helpers import metrics, post, value

# -- accounting, metrics, logs ------------------------------------------------------


def test_cost_estimate_in_the_done_event(serve: Any, fake: FakeUpstream) -> None:
    server = serve(MODEL_PRICES="gpt-4o-mini=0.15/0.6")
    response = post(server, headers={"Accept": "application/x-ndjson"})
    done = json.loads(response.text.splitlines()[-1])
    assert done["usage"] == {"prompt_tokens": 11, "completion_tokens": 8, "total_tokens": 19}
    assert done["cost_usd"] == pytest.approx((11 * 0.15 + 8 * 0.6) / 1e6)


def test_metrics_move_across_workers(serve: Any, fake: FakeUpstream) -> None:
    server = serve(WEB_CONCURRENCY="2", INSTANCE="metrics")
    before = metrics(server)
    for _ in range(6):
        assert post(server).status_code == 200
    assert post(server, "fail=500 id=m1").status_code == 200
    assert requests.post(server.url + "/generate-code/", json={}).status_code == 400
    after = metrics(server)
    route = "/generate-code/"
    assert (
        value(after, "codegen_requests_total", route=route, status="200")
        - value(before, "codegen_requests_total", route=route, status="200")
        == 7
    )
    assert (
        value(after, "codegen_requests_total", route=route, status="400")
        - value(before, "codegen_requests_total", route=route, status="400")
        == 1
    )
    assert (
        value(after, "codegen_tokens_total", model="gpt-4o-mini", kind="completion")
        - value(before, "codegen_tokens_total", model="gpt-4o-mini", kind="completion")
        == 56
    )
    assert (
        value(after, "codegen_answers_total", model="gpt-4o-mini", outcome="ok")
        - value(before, "codegen_answers_total", model="gpt-4o-mini", outcome="ok")
        == 7
    )
    assert (
        value(after, "codegen_upstream_retries_total", reason="upstream_error")
        - value(before, "codegen_upstream_retries_total", reason="upstream_error")
        == 1
    )
    assert (
        value(after, "codegen_ttft_seconds_count", model="gpt-4o-mini")
        - value(before, "codegen_ttft_seconds_count", model="gpt-4o-mini")
        == 7
    )
    assert value(after, "codegen_active_streams") == 0


def test_rate_limit_rejections_are_counted(serve: Any, fake: FakeUpstream) -> None:
    server = serve(RATE_LIMIT="2/minute", INSTANCE="rejections")
    before = value(metrics(server), "codegen_rate_limit_rejections_total", kind="rate")
    statuses = [post(server).status_code for _ in range(3)]
    assert statuses == [200, 200, 429]
    assert value(metrics(server), "codegen_rate_limit_rejections_total", kind="rate") - before == 1


def test_the_answer_log_line_is_structured_and_has_no_prompt(
    server: Server, fake: FakeUpstream
) -> None:
    post(server, "id=logline", headers={"X-Request-ID": "log-line-1"})
    lines = [
        json.loads(line)
        for line in server.logs().splitlines()
        if line.startswith("{") and "log-line-1" in line
    ]
    assert lines, server.logs()[-2000:]
    entry = lines[-1]
    assert entry["msg"] == "answer" and entry["outcome"] == "ok"
    assert {"request_id", "client", "model", "status", "ttft_ms", "duration_ms", "tokens"} <= set(
        entry
    )
    assert entry["status"] == 200
    assert entry["client"].startswith("ip:127.0.0.1")
    assert "Write hello world" not in server.logs()


def test_forwarded_for_is_trusted_only_when_configured(serve: Any, fake: FakeUpstream) -> None:
    def status(server: Server, client_ip: str) -> int:
        return post(server, headers={"X-Forwarded-For": client_ip}).status_code

    trusted = serve(RATE_LIMIT="1/minute", TRUST_FORWARDED_FOR="1", INSTANCE="xff")
    assert [
        status(trusted, "203.0.113.1"),
        status(trusted, "203.0.113.2"),
        status(trusted, "203.0.113.1"),
    ] == [200, 200, 429]
    untrusted = serve(RATE_LIMIT="1/minute", INSTANCE="no-xff")
    # Without trust the header is ignored: both requests come from 127.0.0.1.
    assert [status(untrusted, "203.0.113.1"), status(untrusted, "203.0.113.2")] == [200, 429]
