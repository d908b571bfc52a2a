"""API keys: the API's header, the page's sign-in, and the bound on wrong keys."""

from __future__ import annotations

import hashlib
from typing import Any

import pytest
import requests

from tests.conftest import Server
from tests.fake_upstream import FakeUpstream
from tests.helpers import csrf_token_of, post, prompt

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


@pytest.mark.parametrize("kept_in", ["database", "redis"])
def test_a_sign_out_ends_every_copy_of_the_session(
    serve: Any, fake: FakeUpstream, tmp_path: Any, request: pytest.FixtureRequest, kept_in: str
) -> None:
    """A cookie copied before /signout opened the history for 31 days; now the
    sign-in itself ends, on every worker, and so does one whose key was removed."""
    settings = {"API_KEYS": "sk-live-one", "WEB_CONCURRENCY": "2", "DATA_DIR": str(tmp_path)}
    if kept_in == "redis":
        settings["REDIS_URL"] = request.getfixturevalue("redis_server").url
    server = serve(**settings)
    server.wait_workers(2)
    visitor = requests.Session()
    token = csrf_token_of(visitor.get(server.url + "/signin").text)
    visitor.post(server.url + "/signin", data={"csrf_token": token, "key": "sk-live-one"})
    copied = dict(visitor.cookies)
    for _ in range(6):  # whichever worker answers
        assert requests.get(server.url + "/answers", cookies=copied, timeout=5).status_code == 200
    token = csrf_token_of(visitor.get(server.url + "/").text)
    assert visitor.post(server.url + "/signout", data={"csrf_token": token}).status_code == 200
    for _ in range(6):
        stale = requests.get(server.url + "/answers", cookies=copied, timeout=5)
        assert stale.status_code == 401
        assert stale.json()["error"]["code"] == "sign_in_required"
        page = requests.get(server.url + "/", cookies=copied, timeout=5, allow_redirects=False)
        assert page.status_code == 302 and page.headers["Location"].endswith("/signin")

    # A key removed from API_KEYS: its sign-ins end with it (same secret, same store).
    again = requests.Session()
    token = csrf_token_of(again.get(server.url + "/signin").text)
    again.post(server.url + "/signin", data={"csrf_token": token, "key": "sk-live-one"})
    assert again.get(server.url + "/answers", timeout=5).status_code == 200
    rotated = serve(**{**settings, "API_KEYS": "sk-live-two"})
    assert (
        requests.get(rotated.url + "/answers", cookies=dict(again.cookies), timeout=5).status_code
        == 401
    )
