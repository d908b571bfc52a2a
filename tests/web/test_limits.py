"""Rate limits and stream slots, in memory and shared through a real Redis."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.conftest import TEST_SETTINGS, Redis, free_port
from tests.fake_upstream import FakeUpstream
from tests.helpers import metrics, post, value
from webapp import create_app

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


def test_the_history_has_a_rate_limit_of_its_own_shared_through_redis(
    serve: Any, fake: FakeUpstream, redis_server: Redis
) -> None:
    """Reading the history (API and page, a share link included) counts against
    HISTORY_RATE_LIMIT per client, across processes; starting answers does not use
    it up, nor does reading use up RATE_LIMIT."""
    settings = {
        "REDIS_URL": redis_server.url,
        "HISTORY_RATE_LIMIT": "4/minute",
        "RATE_LIMIT": "2/minute",
    }
    first, second = serve(INSTANCE="hist-a", **settings), serve(INSTANCE="hist-b", **settings)
    before = value(metrics(first), "codegen_rate_limit_rejections_total", kind="history")
    reads = [
        requests.get(first.url + "/answers").status_code,
        requests.get(second.url + "/answers/nosuchanswer000000000000").status_code,
        requests.get(first.url + "/s/nosuchshare").status_code,
        requests.get(second.url + "/a/nosuchanswer000000000000").status_code,
    ]
    assert reads == [200, 404, 404, 404]
    refused = requests.get(first.url + "/answers")
    assert refused.status_code == 429
    assert refused.json()["error"]["code"] == "rate_limited"
    assert "history" in refused.json()["error"]["message"]
    assert 1 <= int(refused.headers["Retry-After"]) <= 60
    # The page's routes answer a readable page, not JSON or a trace.
    page = requests.get(second.url + "/s/nosuchshare", headers={"Accept": "text/html"})
    assert page.status_code == 429
    assert page.headers["Content-Type"].startswith("text/html")
    assert "Too many requests" in page.text and "Traceback" not in page.text
    assert requests.get(first.url + "/a/nosuchanswer000000000000").status_code == 429
    assert value(metrics(first), "codegen_rate_limit_rejections_total", kind="history") > before
    # A Stop only lightens the load, and the page itself needs no Redis: neither counts.
    stop = requests.post(first.url + "/answers/nosuchanswer000000000000/cancel")
    assert stop.status_code == 404
    assert requests.get(second.url + "/").status_code == 200
    # Answers can still be started: their window is another.
    assert [post(first).status_code, post(second).status_code] == [200, 200]
    assert post(first).status_code == 429  # and RATE_LIMIT still holds


def test_the_page_s_filter_counts_against_the_history_s_limit_the_plain_page_never(
    upstream: FakeUpstream, tmp_path: Path
) -> None:
    """`GET /?q=` reads through the owner's answers: it counts against
    HISTORY_RATE_LIMIT. The plain page (an empty filter too) never does: it keeps
    working when the limiter's Redis is down, even with RATE_LIMIT_FAIL_OPEN off."""
    settings = {**TEST_SETTINGS, "OPENAI_BASE_URL": upstream.url, "DATA_DIR": str(tmp_path)}
    app = create_app({**settings, "HISTORY_RATE_LIMIT": "2/minute"})
    client = app.test_client()
    assert [client.get(url).status_code for url in ("/", "/?q=", "/?q=+", "/")] == [200] * 4
    assert [client.get("/?q=alpha").status_code, client.get("/?q=beta").status_code] == [200, 200]
    refused = client.get("/?q=gamma", headers={"Accept": "text/html"})
    assert refused.status_code == 429 and "Too many requests" in refused.get_data(as_text=True)
    assert 1 <= int(refused.headers["Retry-After"]) <= 60
    assert client.get("/").status_code == 200
    close(app)
    # No Redis where REDIS_URL points, and the limiter may not fail open.
    down = create_app(
        {
            **settings,
            "HISTORY_RATE_LIMIT": "100/minute",
            "REDIS_URL": f"redis://127.0.0.1:{free_port()}/0",
            "RATE_LIMIT_FAIL_OPEN": "false",
        }
    )
    client = down.test_client()
    assert client.get("/").status_code == 200
    failed = client.get("/?q=alpha", headers={"Accept": "application/json"})
    assert failed.status_code == 503 and failed.get_json()["error"]["code"] == "limiter_unavailable"
    close(down)


def close(app: Any) -> None:
    app.extensions["generation"].provider.close()  # its pooled upstream connections
    app.extensions["history"].close()


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
    from webapp.web.guard import Guard

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
