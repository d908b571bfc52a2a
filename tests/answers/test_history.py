"""The history API end to end, on SQLite and on a real PostgreSQL server: answers
stored as they stream, follow-ups, Continue, share links, deletion, owners kept
apart, retention, migrations, and a failing database that never breaks a stream."""

from __future__ import annotations

import io
import json
import re
import subprocess
import sys
import time
import zipfile
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import gevent
import pytest
import requests
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import event, text, update

from tests.conftest import ROOT, TEST_SETTINGS, Server
from tests.fake_upstream import ANSWERS, FakeUpstream
from tests.helpers import csrf_token_of, metrics, prompt, value
from webapp import create_app
from webapp.answers.recording import Recording
from webapp.answers.store import AnswerRow, Base, FinishedAnswer, Store, make_engine, now, upgrade

KEYS = {"Authorization": "Bearer key-one"}, {"Authorization": "Bearer key-two"}


@pytest.fixture()
def make_app(upstream: FakeUpstream) -> Iterator[Callable[..., Flask]]:
    """Apps on a given database; their connections are closed after the test."""
    made: list[Flask] = []

    def make(database_url: str, **settings: str) -> Flask:
        upstream.reset()
        app = create_app(
            {
                **TEST_SETTINGS,
                "OPENAI_BASE_URL": upstream.url,
                "DATABASE_URL": database_url,
                **settings,
            }
        )
        made.append(app)
        return app

    yield make
    for app in made:
        app.extensions["generation"].provider.close()  # its pooled upstream connections
        if "history" in app.extensions:
            app.extensions["history"].close()


@pytest.fixture()
def app(make_app: Callable[..., Flask], database_url: str) -> Flask:
    return make_app(database_url)


def generate(client: FlaskClient, directive: str, headers: Any = None, **body: Any) -> Any:
    """POST /generate-code/ as NDJSON; the response, its text and its done event."""
    response = client.post(
        "/generate-code/",
        json={"prompt": prompt(directive), **body},
        headers={"Accept": "application/x-ndjson", **(headers or {})},
    )
    events = [json.loads(line) for line in response.get_data(as_text=True).splitlines()]
    text = "".join(e["text"] for e in events if e["type"] == "delta")
    done = next((e for e in events if e["type"] == "done"), None)
    return response, text, done


def test_an_answer_is_stored_whole_and_listed(client: FlaskClient, fake: FakeUpstream) -> None:
    response, streamed, done = generate(client, "answer=code", language="Python")
    answer_id = response.headers["X-Answer-ID"]
    stored = client.get(f"/answers/{answer_id}").get_json()
    assert stored["text"] == streamed == ANSWERS["code"]
    assert stored["code_blocks"] == done["code_blocks"] and stored["code_blocks"]
    assert stored["finish_reason"] == "stop" and stored["outcome"] == "ok"
    assert stored["usage"] == done["usage"]
    # What the client was told is what is kept: the blocks and timing of its done event.
    assert stored["timing"] == done["timing"]
    assert stored["language"] == "Python" and stored["model"] == "gpt-4o-mini"
    # Timestamps go to the database as text (Store.write): they read back as times.
    created = datetime.fromisoformat(stored["created_at"].removesuffix("Z"))
    assert abs(created - now()) < timedelta(minutes=1)
    assert stored["conversation_id"] == response.headers["X-Conversation-ID"]
    listed = client.get("/answers").get_json()
    assert [a["id"] for a in listed["answers"]] == [answer_id]
    assert listed["next"] is None


def test_the_list_is_newest_first_filtered_and_paged(
    client: FlaskClient, fake: FakeUpstream
) -> None:
    ids = []
    for word in ("alpha", "beta", "gamma"):
        response = client.post(
            "/generate-code/", json={"prompt": prompt("tokens=2", text=f"Write {word}")}
        )
        response.get_data()  # the answer ends (and is saved) as its body is read
        ids.append(response.headers["X-Answer-ID"])
    first = client.get("/answers?limit=2").get_json()
    assert [a["id"] for a in first["answers"]] == ids[::-1][:2]
    rest = client.get(f"/answers?limit=2&before={first['next']}").get_json()
    assert [a["id"] for a in rest["answers"]] == [ids[0]] and rest["next"] is None
    assert [a["id"] for a in client.get("/answers?q=BETA").get_json()["answers"]] == [ids[1]]
    assert client.get("/answers?q=100%25").get_json()["answers"] == []  # % is literal
    bad = client.get("/answers?limit=0")
    assert bad.status_code == 400 and bad.get_json()["error"]["code"] == "invalid_request"


def test_a_follow_up_sends_the_conversation_and_becomes_the_next_version(
    client: FlaskClient, fake: FakeUpstream
) -> None:
    first, first_text, _ = generate(client, "answer=code id=v1")
    conversation = first.headers["X-Conversation-ID"]
    second = client.post(
        "/generate-code/",
        json={
            "prompt": "Now add type hints [[fake answer=runnable]]",
            "conversation_id": conversation,
        },
    )
    assert second.status_code == 200 and second.get_data()
    sent = fake.records_for("Now add type hints")[-1].body["messages"]
    assert [m["role"] for m in sent] == ["system", "user", "assistant", "user"]
    assert sent[2]["content"] == first_text
    assert sent[3]["content"].startswith("Now add type hints")
    assert second.headers["X-Conversation-ID"] == conversation
    stored = client.get(f"/answers/{second.headers['X-Answer-ID']}").get_json()
    assert stored["parent_id"] == first.headers["X-Answer-ID"]
    assert stored["text"] == ANSWERS["runnable"]
    assert "X-History-Trimmed" not in second.headers


def three_turns(client: FlaskClient) -> Any:
    """A conversation of three 12-token turns; the last one's response."""
    conversation = None
    for turn in range(3):
        body: dict[str, Any] = {"prompt": f"Turn {turn} [[fake tokens=12]]"}
        if conversation:
            body["conversation_id"] = conversation
        response = client.post("/generate-code/", json=body)
        assert response.get_data()
        conversation = response.headers["X-Conversation-ID"]
    return response


def test_the_oldest_turns_are_left_out_to_fit_the_prompt_limit(
    make_app: Callable[..., Flask], upstream: FakeUpstream, database_url: str
) -> None:
    fake = upstream
    client = make_app(database_url, MAX_PROMPT_TOKENS="60").test_client()
    response = three_turns(client)
    assert response.headers["X-History-Trimmed"] == "1"
    sent = fake.records_for("Turn 2")[-1].body["messages"]
    assert "Turn 0" not in json.dumps(sent) and "Turn 1" in json.dumps(sent)


@pytest.mark.parametrize("restate", ["", " restate=all"])
def test_continue_carries_a_cut_answer_on_without_a_seam(
    client: FlaskClient, fake: FakeUpstream, restate: str
) -> None:
    """Also when the model restates the answer, or its last words, before going on."""
    cut, first_text, done = generate(client, f"tokens=12 id=cont obey_max=1{restate}", max_tokens=5)
    assert done["finish_reason"] == "length" and first_text == "t0 t1 t2 t3 t4 "
    answer_id = cut.headers["X-Answer-ID"]
    response = client.post(
        "/generate-code/",
        json={"continue_answer": answer_id, "max_tokens": 50},
        headers={"Accept": "application/x-ndjson"},
    )
    assert response.status_code == 200 and response.headers["X-Answer-ID"] == answer_id
    sent = fake.records_for("id=cont")[-1].body["messages"]
    assert sent[-2] == {"role": "assistant", "content": first_text}
    lines = [json.loads(line) for line in response.get_data(as_text=True).splitlines()]
    more = "".join(e["text"] for e in lines if e["type"] == "delta")
    whole = client.get(f"/answers/{answer_id}").get_json()
    assert whole["text"] == first_text + more == "".join(f"t{i} " for i in range(12))
    assert whole["finish_reason"] == "stop"
    again = client.post("/generate-code/", json={"continue_answer": answer_id})
    assert again.status_code == 409 and again.get_json()["error"]["code"] == "not_continuable"
    missing = client.post("/generate-code/", json={"continue_answer": "nope"})
    assert missing.status_code == 404 and missing.get_json()["error"]["code"] == "answer_not_found"


def test_a_share_link_is_read_only_public_and_revocable(
    client: FlaskClient, app: Flask, fake: FakeUpstream
) -> None:
    response, _, _ = generate(client, "answer=markdown")
    answer_id = response.headers["X-Answer-ID"]
    link = client.post(f"/answers/{answer_id}/share").get_json()
    assert link["share_url"].endswith("/s/" + link["share_id"]) and len(link["share_id"]) >= 24
    assert client.post(f"/answers/{answer_id}/share").get_json() == link  # the same link
    stranger = app.test_client()
    page = stranger.get(f"/s/{link['share_id']}")
    assert page.status_code == 200 and "slugify" in page.get_data(as_text=True)
    assert '<meta name="robots" content="noindex' in page.get_data(as_text=True)
    assert page.headers["X-Robots-Tag"].startswith("noindex")
    assert page.headers["Cache-Control"] == "no-store"
    assert 'href="javascript:' not in page.get_data(as_text=True)  # as safe as ever
    assert "<table" in page.get_data(as_text=True)  # rendered, not escaped twice
    assert client.delete(f"/answers/{answer_id}/share").status_code == 204
    assert stranger.get(f"/s/{link['share_id']}").status_code == 404
    assert client.get(f"/answers/{answer_id}").get_json()["shared"] is False


def test_delete_an_answer_and_a_conversation(client: FlaskClient, fake: FakeUpstream) -> None:
    first, _, _ = generate(client, "tokens=2")
    conversation = first.headers["X-Conversation-ID"]
    second = client.post(
        "/generate-code/", json={"prompt": prompt("tokens=3"), "conversation_id": conversation}
    )
    assert second.get_data()
    assert client.delete(f"/answers/{first.headers['X-Answer-ID']}").status_code == 204
    assert client.get(f"/answers/{first.headers['X-Answer-ID']}").status_code == 404
    assert client.get(f"/answers/{second.headers['X-Answer-ID']}").status_code == 200
    assert client.delete(f"/conversations/{conversation}").status_code == 204
    assert client.get("/answers").get_json()["answers"] == []
    gone = client.delete(f"/conversations/{conversation}")
    assert gone.status_code == 404 and gone.get_json()["error"]["code"] == "conversation_not_found"


def test_owners_are_kept_apart_by_api_key(
    make_app: Callable[..., Flask], database_url: str
) -> None:
    app = make_app(database_url, API_KEYS="key-one,key-two")
    one, two = app.test_client(), app.test_client()
    response, _, _ = generate(one, "tokens=3", headers=KEYS[0])
    answer_id = response.headers["X-Answer-ID"]
    conversation = response.headers["X-Conversation-ID"]
    assert one.get("/answers", headers=KEYS[0]).get_json()["answers"][0]["id"] == answer_id
    # The second key sees nothing of the first's, and can touch none of it.
    assert two.get("/answers", headers=KEYS[1]).get_json()["answers"] == []
    for method, path in [
        ("get", f"/answers/{answer_id}"),
        ("delete", f"/answers/{answer_id}"),
        ("post", f"/answers/{answer_id}/share"),
        ("delete", f"/answers/{answer_id}/share"),
        ("delete", f"/conversations/{conversation}"),
    ]:
        refused = getattr(two, method)(path, headers=KEYS[1])
        assert refused.status_code == 404, (method, path)
    follow = two.post(
        "/generate-code/",
        json={"prompt": "more", "conversation_id": conversation},
        headers=KEYS[1],
    )
    assert follow.status_code == 404
    assert follow.get_json()["error"]["code"] == "conversation_not_found"
    steal = two.post("/generate-code/", json={"continue_answer": answer_id}, headers=KEYS[1])
    assert steal.status_code == 404
    assert one.get("/answers").status_code == 401  # no key: no history either
    assert one.get(f"/answers/{answer_id}", headers=KEYS[0]).status_code == 200


def test_owners_are_kept_apart_by_session_without_keys(
    client: FlaskClient, app: Flask, fake: FakeUpstream
) -> None:
    response, _, _ = generate(client, "tokens=3")
    answer_id = response.headers["X-Answer-ID"]
    other = app.test_client()
    assert other.get("/answers").get_json()["answers"] == []
    assert other.get(f"/answers/{answer_id}").status_code == 404
    assert other.delete(f"/answers/{answer_id}").status_code == 404
    assert other.post(f"/answers/{answer_id}/share").status_code == 404
    assert client.get(f"/answers/{answer_id}").status_code == 200


def test_history_off_stores_nothing(make_app: Callable[..., Flask], tmp_path: Path) -> None:
    app = make_app(f"sqlite:///{tmp_path / 'h.db'}", HISTORY="off")
    client = app.test_client()
    response, text, _ = generate(client, "tokens=3")
    assert text and "X-Answer-ID" not in response.headers
    listed = client.get("/answers")
    assert listed.status_code == 404 and listed.get_json()["error"]["code"] == "history_off"
    assert not (tmp_path / "h.db").exists()


def test_old_answers_are_deleted_after_history_days(
    make_app: Callable[..., Flask], database_url: str
) -> None:
    client = make_app(database_url).test_client()
    old, _, _ = generate(client, "tokens=2")
    new, _, _ = generate(client, "tokens=2")
    assert len(client.get("/answers").get_json()["answers"]) == 2  # both written
    store = Store.open(database_url)
    with store.engine.begin() as connection:
        connection.execute(
            update(AnswerRow)
            .where(AnswerRow.id == old.headers["X-Answer-ID"])
            .values(created_at=now() - timedelta(days=31))
        )
    store.close()
    # A worker starting with HISTORY_DAYS purges at once (and then hourly while it works).
    make_app(database_url, HISTORY_DAYS="30")
    ids = [a["id"] for a in client.get("/answers").get_json()["answers"]]
    assert ids == [new.headers["X-Answer-ID"]]


def test_the_migrations_build_exactly_the_models(database_url: str) -> None:
    store = Store.open(database_url)
    Store.open(database_url).close()  # a second start-up finds the schema in place
    with store.engine.connect() as connection:
        context = MigrationContext.configure(connection)
        assert compare_metadata(context, Base.metadata) == []
        revision = connection.execute(text("SELECT version_num FROM alembic_version")).scalar()
    assert revision == "0006"
    store.close()


def test_a_database_of_the_first_release_is_upgraded_at_start_up(database_url: str) -> None:
    old = make_engine(database_url)
    upgrade(old, "0001")  # as the first release left it, with a Stop pending in a row
    row = Store.new_answer("o", prompt="p", language=None, model="m", temperature=None,
                           max_tokens=10)  # fmt: skip
    Store(old).write([row], [])
    with old.begin() as connection:
        connection.execute(text("UPDATE answers SET outcome = 'cancelling'"))
    old.dispose()
    store = Store.open(database_url)
    with store.engine.connect() as connection:
        revision = connection.execute(text("SELECT version_num FROM alembic_version")).scalar()
    assert revision == "0006"
    assert store.cancel_requested() == [row.id]
    store.close()


def test_several_processes_migrating_at_once_all_succeed(database_url: str) -> None:
    env = {"DATABASE_URL": database_url, "PATH": "/usr/bin:/bin"}
    runs = [
        subprocess.Popen(
            [sys.executable, "-m", "webapp.answers.store", "upgrade"],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        for _ in range(4)
    ]
    outputs = [run.communicate(timeout=60)[0].decode() for run in runs]
    assert [run.returncode for run in runs] == [0, 0, 0, 0], outputs
    engine = make_engine(database_url)
    with engine.connect() as connection:
        assert connection.execute(text("SELECT count(*) FROM alembic_version")).scalar() == 1
    engine.dispose()


def test_a_batch_never_writes_an_end_before_its_row(app: Flask) -> None:
    """The writer writes BATCH answers a transaction: an answer that ends while its row
    is still queued for a later batch gets its end written with or after that row."""
    recorder = app.extensions["history"]
    owner = "anon:" + "o" * 22
    news = [
        Store.new_answer(owner, prompt=f"p{i}", language=None, model="m", temperature=None,
                         max_tokens=9)
        for i in range(5)
    ]  # fmt: skip
    recorder._queued = [(n, Recording(n.id, owner, None)) for n in news]  # type: ignore[arg-type]
    recorder._ended = [
        FinishedAnswer(news[3].id, "the end of the fourth", [], "stop", "ok", None, None, None)
    ]
    for _ in range(3):
        recorder.flush(2)
    assert not recorder._queued and not recorder._ended
    stored = recorder.store.get(owner, news[3].id)
    assert stored is not None and (stored.text, stored.outcome) == ("the end of the fourth", "ok")
    assert all(recorder.store.get(owner, n.id) is not None for n in news)


def test_saves_add_what_an_answer_grew_and_never_twice(app: Flask) -> None:
    """Each save sends what the answer added since the last; a save sent again (its
    commit landed, its acknowledgement did not) adds nothing twice; a Continue's saves
    follow its stored text; a NUL (which PostgreSQL refuses and SQL's substr() stops
    at) is stored as U+FFFD, and fails no other answer's save; a save that lands after
    the end changes nothing."""
    recorder = app.extensions["history"]
    owner = "anon:" + "o" * 22

    def running(prefix: str = "") -> tuple[Recording, list[str]]:
        new = Store.new_answer(owner, prompt="p", language=None, model="m", temperature=None,
                               max_tokens=9)  # fmt: skip
        parts: list[str] = []
        relay = type("Relay", (), {"parts": parts})()
        recording = Recording(new.id, owner, relay, prefix, saved_chars=len(prefix))  # type: ignore[arg-type]
        recorder.store.write([new], [])
        if prefix:
            recorder.store.save_growth([(new.id, 0, prefix)])
        recording.written = True
        recorder._active[new.id] = recording
        return recording, parts

    def stored(recording: Recording) -> str:
        found = recorder.store.get(owner, recording.answer_id)
        assert found is not None
        return str(found.text)

    plain, plain_parts = running()
    continued, continued_parts = running("before the seam. ")
    with_nul, nul_parts = running()
    try:
        for step in range(3):
            for parts in (plain_parts, continued_parts, nul_parts):
                parts += [f"é{step}a ", f"😀{step}b "]
            if step == 1:
                nul_parts.append("\0 ")
            recorder.upkeep.save_progress(recorder._active.values())
            assert stored(plain) == "".join(plain_parts)
            assert stored(continued) == "before the seam. " + "".join(continued_parts)
            assert stored(with_nul) == "".join(nul_parts).replace("\0", "\ufffd")
        # The last save again, as a retry after a lost acknowledgement would send it.
        grew = "".join(plain_parts[4:])
        recorder.store.save_growth([(plain.answer_id, plain.saved_chars - len(grew), grew)])
        assert stored(plain) == "".join(plain_parts)
        # A save that reaches the database after the answer's end changes nothing.
        final = "".join(plain_parts) + "the end."
        ended = FinishedAnswer(plain.answer_id, final, [], "stop", "ok", None, None, None)
        recorder.store.write([], [ended])
        recorder.store.save_growth([(plain.answer_id, plain.saved_chars, "late ")])
        assert stored(plain) == final
    finally:
        for recording in (plain, continued, with_nul):
            recorder._active.pop(recording.answer_id, None)


def test_a_nul_in_a_prompt_or_an_answer_fails_no_batch(app: Flask) -> None:
    """PostgreSQL refuses a NUL in text: before, one such prompt (a user's) or answer
    (a model's) failed the whole batch of up to 100 answers it was written with."""
    store = app.extensions["history"].store
    owner = "anon:" + "n" * 22
    news = [
        Store.new_answer(owner, prompt=text, language=None, model="m", temperature=None,
                         max_tokens=9)
        for text in ("a NUL \0 here", "none here")
    ]  # fmt: skip
    store.write(news, [])
    ends = [
        FinishedAnswer(n.id, f"end of {i} \0", [{"language": "", "code": "\0"}], "stop", "ok",
                       None, None, None)
        for i, n in enumerate(news)
    ]  # fmt: skip
    store.write([], ends)
    first, second = (store.get(owner, n.id) for n in news)
    assert first is not None and second is not None
    assert (first.prompt, second.prompt) == ("a NUL \ufffd here", "none here")
    assert (first.text, second.text) == ("end of 0 \ufffd", "end of 1 \ufffd")
    assert first.code_blocks == [{"language": "", "code": "\0"}]  # JSON escapes it


def test_a_nul_in_an_id_a_filter_or_a_cursor_finds_nothing(client: FlaskClient) -> None:
    """PostgreSQL refuses a NUL in any text it is sent: these were 503
    history_unavailable there, as if the database were down."""
    response, _, _ = generate(client, "answer=code")
    answer_id = response.headers["X-Answer-ID"]
    assert client.get("/answers?q=a%00b").get_json()["answers"] == []
    listed = client.get("/answers?before=a%00b").get_json()["answers"]
    assert [a["id"] for a in listed] == [answer_id]  # an unknown cursor, as any other
    for url in ("/answers/a%00b", "/a/a%00b", "/s/a%00b"):
        assert client.get(url).status_code == 404, url
    assert client.post("/answers/a%00b/share").status_code == 404
    assert client.delete("/answers/a%00b").status_code == 404
    assert client.get("/?q=a%00b").status_code == 200


def test_text_is_saved_while_the_answer_grows(server_with_history: Server) -> None:
    """At most SAVE_INTERVAL (2 s) of text is missing from the store mid-answer."""
    server = server_with_history
    session = requests.Session()
    with session.post(
        server.url + "/generate-code/",
        json={"prompt": prompt("tokens=40 delay=0.1")},
        stream=True,
        timeout=30,
    ) as response:
        answer_id = response.headers["X-Answer-ID"]
        started, received, partial = time.monotonic(), "", None
        for piece in response.iter_content(None, decode_unicode=True):
            received += piece
            if partial is None and time.monotonic() - started > 2.6:
                partial = session.get(f"{server.url}/answers/{answer_id}", timeout=10).json()
                at_that_time = received
    assert partial is not None and partial["outcome"] == "pending"
    assert at_that_time.startswith(partial["text"]) and partial["text"].startswith("t0 t1 ")
    whole = session.get(f"{server.url}/answers/{answer_id}", timeout=10).json()
    assert whole["outcome"] == "ok" and whole["text"] == received


def test_a_failing_database_never_breaks_the_stream(server_with_history: Server) -> None:
    server = server_with_history
    engine = make_engine(server.database_url)
    with engine.begin() as connection:  # the database loses its table under the running app
        connection.execute(text("DROP TABLE answers"))
    engine.dispose()
    before = value(metrics(server), "codegen_history_write_failures_total", operation="create")
    response = requests.post(
        server.url + "/generate-code/", json={"prompt": prompt("tokens=5")}, timeout=30
    )
    assert response.status_code == 200 and response.text == "t0 t1 t2 t3 t4 "
    deadline = time.monotonic() + 5  # the writer tries within 50 ms of the answer's start
    while time.monotonic() < deadline:
        after = value(metrics(server), "codegen_history_write_failures_total", operation="create")
        if after > before:
            break
        time.sleep(0.05)
    assert after == before + 1
    listed = requests.get(server.url + "/answers", timeout=10)
    assert listed.status_code == 503
    assert listed.json()["error"]["code"] == "history_unavailable"
    assert "Traceback" not in listed.text and "answers" not in listed.json()["error"]["message"]


@pytest.fixture()
def server_with_history(serve: Any, fake: FakeUpstream, tmp_path: Path) -> Server:
    url = f"sqlite:///{tmp_path / 'history.db'}"
    server: Server = serve(DATABASE_URL=url)
    server.database_url = url  # type: ignore[attr-defined]
    return server


def test_two_workers_share_one_history(serve: Any, fake: FakeUpstream, tmp_path: Path) -> None:
    """Two workers start together (each migrates under the lock), and an answer
    written by one is read by the other."""
    server = serve(WEB_CONCURRENCY="2", DATA_DIR=str(tmp_path))
    session = requests.Session()
    ids = []
    for _ in range(6):
        response = session.post(
            server.url + "/generate-code/", json={"prompt": prompt("tokens=2")}, timeout=30
        )
        ids.append(response.headers["X-Answer-ID"])
    for _ in range(6):  # the requests land on either worker
        listed = session.get(server.url + "/answers", timeout=10).json()["answers"]
        assert sorted(a["id"] for a in listed) == sorted(ids)
    assert "Traceback" not in server.logs()


def test_several_blocks_download_as_a_zip_and_one_as_its_file(
    client: FlaskClient, fake: FakeUpstream
) -> None:
    response, _, _ = generate(client, "answer=two_blocks")
    answer_id = response.headers["X-Answer-ID"]
    one = client.get(f"/a/{answer_id}/download/1")
    assert one.headers["Content-Disposition"] == 'attachment; filename="snippet-1.go"'
    assert one.get_data(as_text=True) == "package main\n\nfunc main() {}\n"
    assert one.mimetype == "text/plain"  # never rendered as a page
    unknown = client.get(f"/a/{answer_id}/download/2")
    assert unknown.headers["Content-Disposition"].endswith('filename="snippet-2.txt"')
    everything = client.get(f"/a/{answer_id}/download")
    assert everything.mimetype == "application/zip"
    with zipfile.ZipFile(io.BytesIO(everything.get_data())) as archive:
        assert archive.namelist() == ["snippet-1.go", "snippet-2.txt"]
        assert archive.read("snippet-2.txt") == b"hello\n"
    assert client.get(f"/a/{answer_id}/download/3").status_code == 404


def test_a_share_link_needs_no_sign_in_when_keys_are_set(
    make_app: Callable[..., Flask], database_url: str
) -> None:
    app = make_app(database_url, API_KEYS="key-one")
    owner = app.test_client()
    response, _, _ = generate(owner, "answer=code", headers=KEYS[0])
    link = owner.post(f"/answers/{response.headers['X-Answer-ID']}/share", headers=KEYS[0])
    stranger = app.test_client()
    assert stranger.get("/").status_code == 302  # the page itself wants a sign-in
    shared = stranger.get(f"/s/{link.get_json()['share_id']}")
    assert shared.status_code == 200 and "is_palindrome" in shared.get_data(as_text=True)


def test_the_page_says_when_turns_were_left_out(
    make_app: Callable[..., Flask], database_url: str
) -> None:
    client = make_app(database_url, MAX_PROMPT_TOKENS="60").test_client()
    conversation = three_turns(client).headers["X-Conversation-ID"]
    token = csrf_token_of(client.get("/").get_data(as_text=True))
    page = client.post(
        "/",
        data={
            "csrf_token": token,
            "prompt": "Turn 3 [[fake tokens=2]]",
            "conversation_id": conversation,
        },
    ).get_data(as_text=True)
    assert "oldest turns of this conversation were left out to fit the prompt limit" in page


@pytest.mark.parametrize("delay", ["0", "0.05"])
def test_a_follow_up_or_continue_sent_the_moment_an_answer_ends_builds_on_all_of_it(
    serve: Any, fake: FakeUpstream, tmp_path: Path, delay: str
) -> None:
    """Two workers: the one that ran an answer writes its row ~50 ms after the start
    and its end ~50 ms after the end (later when busy). A script's next request, sent
    at once, may reach the other worker in that moment: it still sees the whole
    answer, never a missing one or a pending row without its text (a follow-up
    without its context, a Continue refused as not cut). A quick answer ends before
    its row is written; a slower one after."""
    server = serve(WEB_CONCURRENCY="2", DATA_DIR=str(tmp_path))
    server.wait_workers(2)
    session = requests.Session()
    for attempt in range(10):
        first = session.post(
            server.url + "/generate-code/",
            json={
                "prompt": prompt(f"tokens=9 obey_max=1 delay={delay} id=end{delay}-{attempt}"),
                "max_tokens": 4,
            },
            headers={"Accept": "application/x-ndjson"},
            timeout=30,
        )
        assert first.status_code == 200
        text = "".join(
            e["text"] for e in map(json.loads, first.text.splitlines()) if e["type"] == "delta"
        )
        assert text == "t0 t1 t2 t3 "
        # Each right after the end, on a fresh connection: either worker.
        page = requests.get(
            f"{server.url}/a/{first.headers['X-Answer-ID']}", cookies=session.cookies, timeout=30
        )
        assert page.status_code == 200 and "t0 t1 t2 t3" in page.text, attempt
        stored = requests.get(
            f"{server.url}/answers/{first.headers['X-Answer-ID']}",
            cookies=session.cookies,
            timeout=30,
        )
        assert stored.status_code == 200, (attempt, stored.text)
        assert (stored.json()["text"], stored.json()["finish_reason"]) == (text, "length")
        follow_up = requests.post(
            server.url + "/generate-code/",
            json={
                "prompt": prompt(f"tokens=2 id=next{delay}-{attempt}"),
                "conversation_id": first.headers["X-Conversation-ID"],
            },
            cookies=session.cookies,
            timeout=30,
        )
        assert follow_up.status_code == 200, (attempt, follow_up.text)
        sent = fake.records_for(f"id=next{delay}-{attempt}")[-1].body["messages"]
        assert sent[2] == {"role": "assistant", "content": text}, attempt
        carried = requests.post(
            server.url + "/generate-code/",
            json={"continue_answer": first.headers["X-Answer-ID"], "stream": False},
            cookies=session.cookies,
            timeout=30,
        )
        assert carried.status_code == 200, (attempt, carried.text)


@pytest.mark.parametrize("worker_gone", [False, True])
def test_a_follow_up_to_an_answer_being_stopped_elsewhere_waits_for_its_end(
    client: FlaskClient, app: Flask, fake: FakeUpstream, worker_gone: bool
) -> None:
    """A Stop that another worker marked in the row (`cancelling`) is not the end: the
    worker running the answer writes its end (and whole text) a moment later, and a
    follow-up built in between waits for it rather than going out with the last text
    saved while it ran. A row unchanged for longer than any answer runs (its worker
    died) is not waited for: nobody will end it."""
    first, first_text, _ = generate(client, "tokens=6 id=stopped")
    answer_id = first.headers["X-Answer-ID"]
    recorder = app.extensions["history"]
    recorder.flush()  # its own end first, so the marks below are what is read
    engine = recorder.store.engine

    def mark(**values: object) -> None:
        with engine.begin() as connection:
            connection.execute(update(AnswerRow).where(AnswerRow.id == answer_id).values(values))

    # As if it ran on another worker: stopped there, its text saved up to "t1 ".
    mark(outcome="cancelling", text="t0 t1 ")
    if worker_gone:
        mark(updated_at=datetime.now(UTC).replace(tzinfo=None) - timedelta(hours=1))
    ending = gevent.spawn_later(0.3, mark, outcome="cancelled", text=first_text)
    follow_up = client.post(
        "/generate-code/",
        json={
            "prompt": "Go on [[fake tokens=1 id=after-stop]]",
            "conversation_id": first.headers["X-Conversation-ID"],
        },
    )
    ending.join(5)
    assert follow_up.status_code == 200 and follow_up.get_data()
    sent = fake.records_for("id=after-stop")[-1].body["messages"]
    assert sent[2] == {"role": "assistant", "content": "t0 t1 " if worker_gone else first_text}


@pytest.mark.parametrize("resumable", [False, True])
def test_a_follow_up_sent_while_the_end_is_still_being_written_here_builds_on_all_of_it(
    client: FlaskClient, fake: FakeUpstream, resumable: bool
) -> None:
    """One worker: the client has read an answer's end, but the response has not gone
    past it (its last write blocked on a client slow to read), so the relay has not
    closed and its end is not recorded yet. A follow-up that reaches this worker then
    waits for that end, and goes out with the whole answer, not the row's last save."""
    first = client.post(
        "/generate-code/",
        json={"prompt": prompt("tokens=6 id=slow-end"), "resumable": resumable},
        headers={"Accept": "application/x-ndjson"},
        buffered=False,
    )
    body = iter(first.response)
    lines: list[dict[str, Any]] = []
    while not lines or lines[-1]["type"] != "done":
        lines += [json.loads(line) for line in next(body).decode().splitlines()]
    text = "".join(e["text"] for e in lines if e["type"] == "delta")
    # The rest of the response (the relay's close) goes out a moment later.
    finishing = gevent.spawn_later(0.3, lambda: (list(body), first.close()))
    follow_up = client.post(
        "/generate-code/",
        json={
            "prompt": prompt("tokens=1 id=after-slow-end"),
            "conversation_id": first.headers["X-Conversation-ID"],
        },
    )
    finishing.join(5)
    assert follow_up.status_code == 200 and follow_up.get_data()
    sent = fake.records_for("id=after-slow-end")[-1].body["messages"]
    assert sent[2] == {"role": "assistant", "content": text} and text == "t0 t1 t2 t3 t4 t5 "


# -- the history's cost does not grow with its size ---------------------------------


def answers_made(client: FlaskClient, count: int, word: str = "plain") -> list[str]:
    """`count` ended answers, oldest first: their ids."""
    ids = []
    for n in range(count):
        response = client.post(
            "/generate-code/", json={"prompt": prompt("tokens=1", text=f"Write {word} {n}")}
        )
        assert response.get_data()  # the answer ends (and is recorded) as its body is read
        ids.append(response.headers["X-Answer-ID"])
    client.get("/answers?limit=1")  # a read in this worker writes what it has queued
    return ids


def listed(
    client: FlaskClient, url: str, cursor: str | None = None
) -> tuple[list[str], list[int], str | None]:
    """Every page of a listing at `url`, from `cursor` on: the ids in order, each
    page's size, and the cursor of the last page (None when the listing ended)."""
    ids: list[str] = []
    sizes: list[int] = []
    for _ in range(50):
        body = client.get(url + (f"&before={cursor}" if cursor else "")).get_json()
        ids += [a["id"] for a in body["answers"]]
        sizes.append(len(body["answers"]))
        cursor = body["next"]
        if cursor is None:
            break
    return ids, sizes, cursor


def test_paging_with_the_cursor_returns_every_answer_once_even_if_its_answer_went(
    client: FlaskClient, fake: FakeUpstream
) -> None:
    """The cursor says where the next page starts by itself: the answer it came from
    may be deleted (or pruned, HISTORY_MAX_ANSWERS) before the next page is read."""
    ids = answers_made(client, 7)[::-1]
    first = client.get("/answers?limit=3").get_json()
    assert [a["id"] for a in first["answers"]] == ids[:3]
    assert client.delete(f"/answers/{ids[2]}").status_code == 204  # the page's last
    rest, sizes, last = listed(client, "/answers?limit=3", first["next"])
    assert rest == ids[3:] and sizes == [3, 1] and last is None
    whole, sizes, _ = listed(client, "/answers?limit=2")
    assert whole == ids[:2] + ids[3:] and sizes == [2, 2, 2]
    # An answer's id as the cursor still works, as before: the page after that answer.
    after_id = client.get(f"/answers?limit=2&before={ids[3]}").get_json()
    assert [a["id"] for a in after_id["answers"]] == ids[4:6]


def test_a_filter_reads_a_bounded_number_of_answers_per_request(
    client: FlaskClient, fake: FakeUpstream, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Past FILTER_SCAN answers read, a filtered page ends short (even empty) with a
    cursor that carries on from there; following it finds every match once."""
    monkeypatch.setattr("webapp.answers.store.FILTER_SCAN", 3)
    alpha = answers_made(client, 1, "alpha")
    betas = answers_made(client, 5, "beta")[::-1]
    first = client.get("/answers?q=alpha").get_json()
    assert first["answers"] == [] and first["next"] is not None  # 3 betas read, no match
    found, sizes, last = listed(client, "/answers?q=alpha")
    assert found == alpha and sizes == [0, 1] and last is None
    found, sizes, _ = listed(client, "/answers?q=beta&limit=2")
    assert found == betas and sizes == [2, 2, 1]
    page = client.get("/?q=alpha").get_data(as_text=True)
    assert "Write alpha" not in page and "?q=alpha&amp;before=" in page  # the page says more


def test_the_page_s_list_pages_through_older_answers(
    client: FlaskClient, fake: FakeUpstream
) -> None:
    ids = answers_made(client, 23)[::-1]
    html = client.get("/").get_data(as_text=True)
    shown = re.findall(r'<li><a href="/a/([^"]+)"', html)
    assert shown == ids[:20]
    older = re.search(r'href="(/\?before=[^"]+)"', html)
    assert older is not None
    html = client.get(older.group(1).replace("&amp;", "&")).get_data(as_text=True)
    assert re.findall(r'<li><a href="/a/([^"]+)"', html) == ids[20:]
    assert "?before=" not in html  # the last page


def test_a_page_of_the_list_reads_the_owner_s_index_not_every_answer(
    app: Flask, database_url: str
) -> None:
    """Each read of a listing (first page, a cursor's, a filter's, the page's) walks the
    (owner, created_at, id) index: no sort of all the owner's answers."""
    client = app.test_client()
    answers_made(client, 3)
    engine = app.extensions["history"].store.engine
    reads: list[tuple[str, Any]] = []

    def seen(_conn: Any, _cursor: Any, statement: str, parameters: Any, *_: Any) -> None:
        if statement.lstrip().upper().startswith("SELECT") and "FROM answers" in statement:
            reads.append((statement, parameters))

    event.listen(engine, "before_cursor_execute", seen)
    try:
        cursor = client.get("/answers?limit=1").get_json()["next"]
        client.get(f"/answers?limit=1&before={cursor}")
        client.get("/answers?limit=1&q=plain")
        client.get("/?q=plain")
        client.get("/")
    finally:
        event.remove(engine, "before_cursor_execute", seen)
    assert len(reads) >= 5
    with engine.connect() as connection:
        for statement, parameters in reads:
            if engine.dialect.name == "sqlite":
                plan = " | ".join(
                    row[-1]
                    for row in connection.exec_driver_sql(
                        "EXPLAIN QUERY PLAN " + statement, parameters
                    )
                )
                assert "USE TEMP B-TREE FOR ORDER BY" not in plan, (statement, plan)
                assert "USING" in plan and "INDEX" in plan, (statement, plan)
            else:
                # A table this small is read whole whatever its indexes: ask for the
                # plan as a big one would get, where only a matching index avoids a sort.
                connection.exec_driver_sql("SET enable_seqscan = off")
                plan = "\n".join(
                    row[0] for row in connection.exec_driver_sql("EXPLAIN " + statement, parameters)
                )
                assert "Sort" not in plan, (statement, plan)
                assert "Index Scan" in plan or "Index Only Scan" in plan, (statement, plan)


def test_past_history_max_answers_the_oldest_go_but_running_ones_stay(
    make_app: Callable[..., Flask], upstream: FakeUpstream, database_url: str
) -> None:
    """HISTORY_MAX_ANSWERS: each owner keeps the newest; the oldest go as new ones come,
    except one still running. A conversation loses its oldest versions first (a
    follow-up builds on what is left), and goes with its last."""
    # The running answer is left unread while the others are made: generous idle and
    # total bounds, so a slow database on a busy machine does not end it first.
    slow = {"IDLE_TIMEOUT": "30", "TOTAL_TIMEOUT": "60"}
    client = make_app(database_url, HISTORY_MAX_ANSWERS="3", **slow).test_client()
    other = make_app(database_url).test_client()  # another owner, far from the bound
    theirs = answers_made(other, 4, "theirs")
    running = client.post("/generate-code/", json={"prompt": prompt("tokens=3")})
    old = client.post("/generate-code/", json={"prompt": prompt("tokens=2", "Write first")})
    assert old.get_data()
    conversation = old.headers["X-Conversation-ID"]

    def follow_up(text: str) -> Any:
        body = {"prompt": prompt("tokens=2", text), "conversation_id": conversation}
        return client.post("/generate-code/", json=body)

    newer = follow_up("Write second")
    assert newer.get_data()
    made = answers_made(client, 2)
    ids = [a["id"] for a in client.get("/answers").get_json()["answers"]]
    # The oldest ended one went; the running one stays (its end must find its row).
    assert ids == [*made[::-1], newer.headers["X-Answer-ID"], running.headers["X-Answer-ID"]]
    assert running.get_data()  # it ends: from now on it may go too
    assert client.get(f"/answers/{old.headers['X-Answer-ID']}").status_code == 404
    follow = follow_up("Write third")
    assert follow.status_code == 200 and follow.get_data()
    sent = json.dumps(upstream.records_for("Write third")[-1].body["messages"])
    assert "Write second" in sent and "Write first" not in sent
    ids = [a["id"] for a in client.get("/answers").get_json()["answers"]]
    assert ids == [follow.headers["X-Answer-ID"], *made[::-1]]
    answers_made(client, 3)
    gone = follow_up("Write fourth")
    assert gone.status_code == 404
    assert gone.get_json()["error"]["code"] == "conversation_not_found"
    assert [a["id"] for a in other.get("/answers").get_json()["answers"]] == theirs[::-1]
