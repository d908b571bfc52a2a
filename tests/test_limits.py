"""Rate limits (real redis-server), stream bounds, API keys, metrics and logs."""

from __future__ import annotations

import hashlib
import json
import subprocess
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import Server, free_port, require_binary
from tests.fake_upstream import FakeUpstream
from tests.test_api import prompt


class Redis:
    def __init__(self) -> None:
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.proc = subprocess.Popen(
            [
                require_binary("redis-server"),
                "--port",
                str(self.port),
                "--save",
                "",
                "--appendonly",
                "no",
                "--bind",
                "127.0.0.1",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        import redis

        client = redis.Redis.from_url(self.url)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                client.ping()
                return
            except redis.ConnectionError:
                time.sleep(0.05)
        raise RuntimeError("redis-server did not start")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)


@pytest.fixture()
def redis_server() -> Iterator[Redis]:
    server = Redis()
    yield server
    server.stop()


def post(server: Server, directive: str = "", **kwargs: Any) -> requests.Response:
    return requests.post(
        server.url + "/generate-code/", json={"prompt": prompt(directive)}, timeout=30, **kwargs
    )


def metrics(server: Server) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = requests.get(server.url + "/metrics", timeout=5).text
    samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def value(samples: dict[Any, float], name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


# -- rate limits across processes, with a real Redis -------------------------------


def test_two_app_processes_share_one_limit(
    serve: Any, fake: FakeUpstream, redis_server: Redis
) -> None:
    settings = {"REDIS_URL": redis_server.url, "RATE_LIMIT": "3/minute"}
    first, second = serve(INSTANCE="a", **settings), serve(INSTANCE="b", **settings)
    assert first.port != second.port
    assert [post(first).status_code, post(second).status_code, post(first).status_code] == [
        200,
        200,
        200,
    ]
    refused = post(second)
    assert refused.status_code == 429
    assert refused.json()["error"]["code"] == "rate_limited"
    retry_after = int(refused.headers["Retry-After"])
    assert 1 <= retry_after <= 60
    assert requests.get(second.url + "/healthz").json()["redis"] == "up"


def test_redis_going_away_fails_open_and_shows_in_health(
    serve: Any, fake: FakeUpstream, redis_server: Redis
) -> None:
    server = serve(INSTANCE="failopen", REDIS_URL=redis_server.url, RATE_LIMIT="100/minute")
    assert post(server).status_code == 200
    redis_server.stop()
    response = post(server)
    assert response.status_code == 200 and response.text.startswith("t0")
    assert requests.get(server.url + "/healthz").json()["redis"] == "down"
    assert "rate-limit store unreachable" in server.logs()


def test_redis_going_away_can_fail_closed(
    serve: Any, fake: FakeUpstream, redis_server: Redis
) -> None:
    server = serve(
        INSTANCE="failclosed",
        REDIS_URL=redis_server.url,
        RATE_LIMIT="100/minute",
        RATE_LIMIT_FAIL_OPEN="false",
    )
    before = value(metrics(server), "codegen_rate_limit_rejections_total", kind="rate")
    redis_server.stop()
    response = post(server)
    assert response.status_code == 503
    assert response.json()["error"]["code"] == "limiter_unavailable"
    # A store failure is not a rate-limit rejection.
    assert value(metrics(server), "codegen_rate_limit_rejections_total", kind="rate") == before


def test_stream_slots_in_redis_never_go_below_zero(redis_server: Redis) -> None:
    from webapp.config import Config
    from webapp.guard import Guard

    guard = Guard(
        Config.from_env({"REDIS_URL": redis_server.url, "MAX_CONCURRENT_STREAMS_PER_CLIENT": "2"})
    )
    first = guard.acquire_stream("ip:1")
    guard.release_stream(first)
    guard.release_stream(first)  # a double release must not free a slot it never had
    held = [guard.acquire_stream("ip:1"), guard.acquire_stream("ip:1")]
    with pytest.raises(Exception, match="at most 2"):
        guard.acquire_stream("ip:1")
    for slot in held:
        guard.release_stream(slot)


def test_concurrent_streams_per_client_are_bounded(serve: Any, fake: FakeUpstream) -> None:
    server = serve(MAX_CONCURRENT_STREAMS_PER_CLIENT="1")
    slow = threading.Thread(target=post, args=(server, "tokens=10 delay=0.1 id=slow"))
    slow.start()
    deadline = time.monotonic() + 5
    while not fake.records_for("id=slow") and time.monotonic() < deadline:
        time.sleep(0.01)
    second = post(server)
    slow.join()
    assert second.status_code == 429
    assert second.json()["error"]["code"] == "too_many_streams"
    assert post(server).status_code == 200  # the slot came back


# -- API keys -------------------------------------------------------------------------


@pytest.fixture()
def keyed(serve: Any, fake: FakeUpstream) -> Server:
    hashed = hashlib.sha256(b"sk-live-two").hexdigest()
    server: Server = serve(API_KEYS=f"sk-live-one,sha256:{hashed}")
    return server


@pytest.mark.parametrize(
    ("headers", "status"),
    [
        ({}, 401),
        ({"Authorization": "Bearer sk-wrong"}, 401),
        ({"X-API-Key": "sk-wrong"}, 401),
        ({"Authorization": "Bearer sk-live-one"}, 200),
        ({"X-API-Key": "sk-live-one"}, 200),
        ({"Authorization": "Bearer sk-live-two"}, 200),  # configured only as a hash
    ],
)
def test_api_keys(keyed: Server, headers: dict[str, str], status: int) -> None:
    response = post(keyed, headers=headers)
    assert response.status_code == status
    if status == 401:
        assert response.json()["error"]["code"] == "unauthorized"
    assert "sk-live" not in keyed.logs() and "sk-wrong" not in keyed.logs()


def csrf_token_of(html: str) -> str:
    return html.split('name="csrf_token" type="hidden" value="')[1].split('"')[0]


def test_with_api_keys_the_page_needs_a_sign_in(keyed: Server) -> None:
    """Every way to generate needs a key: a CSRF token from the page is not enough."""
    visitor = requests.Session()
    landing = visitor.get(keyed.url + "/")
    assert landing.url.endswith("/signin") and 'type="password"' in landing.text
    token = csrf_token_of(landing.text)
    refused = visitor.post(
        keyed.url + "/ui/stream", json={"prompt": prompt()}, headers={"X-CSRFToken": token}
    )
    assert refused.status_code == 401
    assert refused.json()["error"]["code"] == "sign_in_required"
    no_js = visitor.post(keyed.url + "/", data={"csrf_token": token, "prompt": prompt()})
    assert no_js.status_code == 401 and "Sign in" in no_js.text
    wrong = visitor.post(keyed.url + "/signin", data={"csrf_token": token, "key": "sk-wrong"})
    assert wrong.status_code == 401 and "not valid" in wrong.text
    signed = visitor.post(keyed.url + "/signin", data={"csrf_token": token, "key": "sk-live-two"})
    assert signed.status_code == 200 and 'id="prompt-form"' in signed.text  # after the redirect
    token = csrf_token_of(signed.text)
    answer = visitor.post(
        keyed.url + "/ui/stream", json={"prompt": prompt()}, headers={"X-CSRFToken": token}
    )
    assert answer.status_code == 200 and '"type":"done"' in answer.text
    visitor.post(keyed.url + "/signout", data={"csrf_token": token})
    again = visitor.post(
        keyed.url + "/ui/stream", json={"prompt": prompt()}, headers={"X-CSRFToken": token}
    )
    assert again.status_code == 401
    assert "sk-live" not in keyed.logs() and "sk-wrong" not in keyed.logs()


def test_wrong_keys_are_limited_per_address(serve: Any, fake: FakeUpstream) -> None:
    server = serve(API_KEYS="sk-live-one", AUTH_FAILURE_LIMIT="3/minute", RATE_LIMIT="3/minute")
    statuses = [post(server, headers={"X-API-Key": f"sk-guess-{i}"}).status_code for i in range(10)]
    assert statuses == [401] * 3 + [429] * 7
    locked = post(server, headers={"X-API-Key": "sk-live-one"})
    assert locked.status_code == 429  # guessing right after the bound gains nothing
    assert locked.json()["error"]["code"] == "too_many_failed_auth"
    assert int(locked.headers["Retry-After"]) >= 1
    # The page's sign-in shares the count.
    visitor = requests.Session()
    token = csrf_token_of(visitor.get(server.url + "/signin").text)
    page = visitor.post(server.url + "/signin", data={"csrf_token": token, "key": "sk-live-one"})
    assert page.status_code == 429


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
