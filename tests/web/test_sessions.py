"""The session cookie (webapp/web/sessions.py): signed, expiring, and readable from the
format of earlier versions, so an anonymous owner keeps their history."""

from __future__ import annotations

import time
from collections.abc import Callable

import gevent
import pytest
from flask import Flask, session
from flask.sessions import SecureCookieSessionInterface
from flask.testing import FlaskClient
from itsdangerous import BadSignature

from webapp.web.sessions import PREFIX, FastSerializer


def serializer(app: Flask) -> FastSerializer:
    found = app.session_interface.get_signing_serializer(app)  # type: ignore[attr-defined]
    assert isinstance(found, FastSerializer)
    return found


def owner_cookie(client: FlaskClient) -> str:
    cookie = client.get_cookie("session")
    assert cookie is not None
    value: str = cookie.value
    return value


def test_an_answer_sets_a_signed_owner_cookie_that_the_next_request_keeps(
    app: Flask, client: FlaskClient
) -> None:
    first = client.post("/generate-code/", json={"prompt": "[[fake tokens=2]]"})
    first.get_data()
    cookie = owner_cookie(client)
    assert cookie.startswith(PREFIX)
    owner = serializer(app).loads(cookie, max_age=60)["owner"]
    listed = client.get("/answers")
    assert listed.status_code == 200
    assert [a["id"] for a in listed.get_json()["answers"]] == [first.headers["X-Answer-ID"]]
    assert serializer(app).loads(owner_cookie(client), max_age=60)["owner"] == owner


@pytest.mark.parametrize(
    "forge",
    [
        lambda v: v[:-2] + ("AA" if not v.endswith("AA") else "BB"),  # another MAC
        lambda v: v.replace(PREFIX, PREFIX + "e", 1),  # another payload, same MAC
        lambda v: v.rsplit(".", 1)[0],  # no MAC
        lambda v: PREFIX + "e30.1.x",  # {} with a made-up MAC
        lambda v: "garbage",
    ],
)
def test_a_forged_cookie_is_refused_and_its_owner_sees_nothing(
    app: Flask, client: FlaskClient, forge: Callable[[str], str]
) -> None:
    client.post("/generate-code/", json={"prompt": "[[fake tokens=2]]"}).get_data()
    forged = forge(owner_cookie(client))
    with pytest.raises(BadSignature):
        serializer(app).loads(forged, max_age=60)
    client.set_cookie("session", forged)
    assert client.get("/answers").get_json()["answers"] == []


def test_an_expired_cookie_is_refused(app: Flask) -> None:
    signer = serializer(app)
    cookie = signer.dumps({"owner": "x" * 22})
    assert signer.loads(cookie, max_age=60) == {"owner": "x" * 22}
    signed, _, _ = cookie.rpartition(".")
    payload = signed.rpartition(".")[0]
    old = f"{payload}.{int(time.time()) - 120}"
    with pytest.raises(BadSignature, match="expired"):
        signer.loads(f"{old}.{signer._mac(old)}", max_age=60)


def test_another_secret_key_cannot_read_the_cookie(app: Flask) -> None:
    cookie = serializer(app).dumps({"owner": "x" * 22})
    with pytest.raises(BadSignature):
        FastSerializer("another key", None).loads(cookie, max_age=60)


def test_a_cookie_from_the_previous_format_still_finds_its_owners_answers(
    app: Flask, client: FlaskClient
) -> None:
    """Flask's itsdangerous cookie, as earlier versions wrote it: still read."""
    first = client.post("/generate-code/", json={"prompt": "[[fake tokens=2]]"})
    first.get_data()
    owner = serializer(app).loads(owner_cookie(client), max_age=60)["owner"]
    legacy = SecureCookieSessionInterface().get_signing_serializer(app)
    assert legacy is not None
    other = app.test_client()
    other.set_cookie("session", legacy.dumps({"owner": owner}))
    listed = other.get("/answers").get_json()["answers"]
    assert [a["id"] for a in listed] == [first.headers["X-Answer-ID"]]


@pytest.mark.parametrize("scheme", ["http", "https"])
def test_the_cookie_keeps_flasks_flags(app: Flask, scheme: str) -> None:
    """HttpOnly, SameSite=Lax, Path=/, Secure over HTTPS only, and Vary: Cookie."""
    client = app.test_client()
    response = client.post(
        "/generate-code/",
        json={"prompt": "[[fake tokens=2]]"},
        base_url=f"{scheme}://localhost",
    )
    response.get_data()
    header = response.headers["Set-Cookie"]
    assert "HttpOnly" in header and "SameSite=Lax" in header and "Path=/" in header
    assert ("Secure" in header) == (scheme == "https")
    assert "Cookie" in response.headers["Vary"]
    cookie = client.get_cookie("session", domain="localhost")
    assert cookie is not None and cookie.http_only and cookie.same_site == "Lax"
    # A request that reads the session again keeps it, and sets nothing new.
    again = client.get("/answers", base_url=f"{scheme}://localhost")
    assert again.status_code == 200 and "Set-Cookie" not in again.headers


def test_a_sign_out_still_deletes_the_cookie(app: Flask) -> None:
    """The rare cases (an emptied session) are Flask's own."""
    with app.test_request_context("/"):
        session["owner"] = "x" * 22
        session.clear()
        response = app.response_class()
        app.session_interface.save_session(app, session, response)
        assert "session=;" in response.headers["Set-Cookie"]
        assert "Expires=Thu, 01 Jan 1970" in response.headers["Set-Cookie"]


def test_a_planted_non_ascii_cookie_is_an_empty_session_not_an_error(app: Flask) -> None:
    client = app.test_client()
    accent = "\u00e9"
    for planted in (f"{PREFIX}{accent}.1.{'A' * 43}", f"{PREFIX}e30.1.{accent * 43}"):
        with pytest.raises(BadSignature):
            serializer(app).loads(planted, max_age=60)
        response = client.get("/answers", headers={"Cookie": f"session={planted}"})
        assert response.status_code == 200 and response.get_json()["answers"] == []


def newcomers_made_ahead(app: Flask, client: FlaskClient) -> int:
    """Make the app's first new owner, then let the loop idle: the stock of owners
    and their cookies made ahead fills. Returns how many it holds."""
    client.post("/generate-code/", json={"prompt": "[[fake tokens=1]]"}).get_data()
    gevent.sleep(0.05)
    ready = len(app.extensions["newcomers"])
    assert ready > 0
    return ready


def test_an_owner_made_ahead_comes_with_its_own_valid_cookie(app: Flask) -> None:
    ready = newcomers_made_ahead(app, app.test_client())
    owners = set()
    for _ in range(3):
        newcomer = app.test_client()
        response = newcomer.post("/generate-code/", json={"prompt": "[[fake tokens=2]]"})
        response.get_data()
        cookie = owner_cookie(newcomer)
        session_of = serializer(app).loads(cookie, max_age=60)
        assert list(session_of) == ["owner"]
        owners.add(session_of["owner"])
        # The cookie carries this request's owner: it lists this answer, and no other.
        listed = newcomer.get("/answers").get_json()["answers"]
        assert [a["id"] for a in listed] == [response.headers["X-Answer-ID"]]
    assert len(owners) == 3
    assert len(app.extensions["newcomers"]) == ready - 3  # they came from the stock


def test_a_session_holding_more_than_its_new_owner_is_signed_whole(app: Flask) -> None:
    """The cookie made ahead holds only the owner: a session with anything else (the
    page's CSRF token) gets its own cookie, with all of it."""
    newcomers_made_ahead(app, app.test_client())
    interface = app.session_interface
    with app.test_request_context("/"):
        current = session._get_current_object()  # type: ignore[attr-defined]
        current["csrf_token"] = "t" * 40
        owner = interface.new_owner(app, current)  # type: ignore[attr-defined]
        assert current.premade is not None and current.premade[0] == owner
        response = app.response_class()
        interface.save_session(app, current, response)
    cookie = response.headers["Set-Cookie"].split(";")[0].removeprefix("session=")
    assert cookie != current.premade[1]
    assert serializer(app).loads(cookie, max_age=60) == {"csrf_token": "t" * 40, "owner": owner}


def test_a_cookie_domain_leaves_the_new_owners_cookie_to_flask(app: Flask) -> None:
    """The cookie made ahead is written directly only with the default cookie scope;
    with a cookie domain, Flask writes it (with its Domain), holding the same owner."""
    app.config["SESSION_COOKIE_DOMAIN"] = "example.test"
    newcomers_made_ahead(app, app.test_client())
    app.extensions.pop("session_cookie_parts", None)  # settings are read once per app
    client = app.test_client()
    response = client.post(
        "/generate-code/", json={"prompt": "[[fake tokens=2]]"}, base_url="http://example.test"
    )
    response.get_data()
    header = response.headers["Set-Cookie"]
    assert "Domain=example.test" in header
    value = header.split(";")[0].removeprefix("session=")
    assert list(serializer(app).loads(value, max_age=60)) == ["owner"]


def test_a_request_that_leaves_the_session_alone_sets_no_cookie(app: Flask) -> None:
    response = app.test_client().get("/healthz")
    assert response.status_code == 200
    assert "Set-Cookie" not in response.headers and "Vary" not in response.headers
