"""An answer's files in the history, on SQLite and a real PostgreSQL: stored once by
content, listed and downloadable with the answer, carried by follow-ups (a second
refinement diffs against the first), deleted with it, and bounded per owner."""

from __future__ import annotations

import io
import json
import subprocess
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import text

from tests.conftest import TEST_SETTINGS, require_binary
from tests.fake_upstream import FakeUpstream
from tests.helpers import prompt
from webapp import create_app

CALC = "def add(a, b):\n    return a + b\n"


@pytest.fixture()
def make_app(upstream: FakeUpstream) -> Iterator[Callable[..., Flask]]:
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
        app.extensions["generation"].provider.close()
        if "history" in app.extensions:
            app.extensions["history"].close()


def generate(client: FlaskClient, directive: str, **body: Any) -> tuple[Any, dict[str, Any]]:
    response = client.post(
        "/generate-code/",
        json={"prompt": prompt(directive, "Add type hints"), **body},
        headers={"Accept": "application/x-ndjson"},
    )
    assert response.status_code == 200, response.data[:300]
    events = [json.loads(line) for line in response.get_data(as_text=True).splitlines()]
    done = next(e for e in events if e["type"] == "done")
    return response, done


def contents(app: Flask) -> int:
    app.extensions["history"].flush()  # the recorder writes in the background
    with app.extensions["history"].store.engine.connect() as connection:
        return int(connection.scalar(text("SELECT count(*) FROM file_contents")) or 0)


def test_files_are_kept_with_the_answer_and_downloadable(
    make_app: Callable[..., Flask], database_url: str, tmp_path: Path
) -> None:
    require_binary("git")
    app = make_app(database_url)
    client = app.test_client()
    response, done = generate(client, "answer=edit", files=[{"name": "calc.py", "content": CALC}])
    answer_id = response.headers["X-Answer-ID"]

    stored = client.get(f"/answers/{answer_id}").get_json()
    assert "attachments" in stored, stored
    assert [f["name"] for f in stored["attachments"]] == ["calc.py"]
    assert stored["attachments"][0]["size"] == len(CALC)
    assert {f["name"] for f in stored["results"]} == {"calc.py", "test_calc.py"}
    assert stored["files"] == done["files"]

    latest = client.get(f"/answers/{answer_id}/files/calc.py")
    assert latest.headers["Content-Disposition"].startswith("attachment")
    assert '"""Return the sum of a and b."""' in latest.get_data(as_text=True)
    original = client.get(f"/answers/{answer_id}/files/calc.py?version=attached")
    assert original.get_data(as_text=True) == CALC
    assert client.get(f"/answers/{answer_id}/files/nope.py").status_code == 404

    # The patch, applied by git to the person's own copy, gives the answer's files.
    (tmp_path / "calc.py").write_text(CALC)
    patch = client.get(f"/answers/{answer_id}/changes.patch").get_data()
    (tmp_path / "changes.patch").write_bytes(patch)
    subprocess.run(["git", "init", "-q"], cwd=tmp_path, check=True)
    subprocess.run(["git", "apply", "changes.patch"], cwd=tmp_path, check=True)
    assert (tmp_path / "calc.py").read_text() == latest.get_data(as_text=True)

    archive = zipfile.ZipFile(io.BytesIO(client.get(f"/answers/{answer_id}/changes.zip").data))
    assert sorted(archive.namelist()) == ["calc.py", "changes.patch", "test_calc.py"]
    assert archive.read("changes.patch") == patch


def test_refine_twice_diffs_against_the_previous_version(
    make_app: Callable[..., Flask], database_url: str, fake: FakeUpstream
) -> None:
    app = make_app(database_url)
    client = app.test_client()
    first, _ = generate(client, "answer=edit", files=[{"name": "calc.py", "content": CALC}])
    conversation = first.headers["X-Conversation-ID"]
    _, done = generate(client, "answer=edit2", conversation_id=conversation)
    # The follow-up shows the model the first refinement's calc.py, not the original.
    user = fake.records[-1].body["messages"][-1]["content"]
    assert '"""Return the sum of a and b."""' in user
    assert "File `test_calc.py`:" in user  # the file the first answer made, too
    [change] = done["files"]
    assert change["name"] == "calc.py" and change["status"] == "changed"
    assert " def add(a: int, b: int) -> int:\n" in change["diff"]  # context from version 1
    assert "+def sub(a: int, b: int) -> int:\n" in change["diff"]
    assert "-def add(a, b):" not in change["diff"]


def test_a_content_is_stored_once_and_goes_with_its_last_answer(
    make_app: Callable[..., Flask], database_url: str
) -> None:
    app = make_app(database_url)
    client = app.test_client()
    ids = [
        generate(client, "answer=edit", files=[{"name": "calc.py", "content": CALC}])[0].headers[
            "X-Answer-ID"
        ]
        for _ in range(2)
    ]
    # The attachment and the two new versions, each once, though two answers hold them.
    assert contents(app) == 3
    assert client.delete(f"/answers/{ids[0]}").status_code == 204
    assert contents(app) == 3  # the other answer still holds them
    assert client.delete(f"/answers/{ids[1]}").status_code == 204
    assert contents(app) == 0
    assert client.get(f"/answers/{ids[1]}/files/calc.py").status_code == 404


def test_an_owners_files_are_bounded(make_app: Callable[..., Flask], database_url: str) -> None:
    app = make_app(database_url, HISTORY_MAX_FILE_BYTES="200")
    client = app.test_client()
    generate(client, "answer=edit", files=[{"name": "calc.py", "content": CALC}])
    refused = client.post(
        "/generate-code/",
        json={
            "prompt": prompt("answer=edit"),
            "files": [{"name": "other.py", "content": "x = 1\n" * 10}],
        },
    )
    assert refused.status_code == 400
    error = refused.get_json()["error"]
    assert error["code"] == "files_full"
    assert "limit of 200" in error["message"]


def test_re_attaching_to_an_ended_answer_replays_its_diffs(
    make_app: Callable[..., Flask], database_url: str
) -> None:
    app = make_app(database_url)
    client = app.test_client()
    response, done = generate(client, "answer=edit", files=[{"name": "calc.py", "content": CALC}])
    replay = client.get(
        f"/answers/{response.headers['X-Answer-ID']}/events?after=0",
        headers={"Accept": "application/x-ndjson"},
    )
    events = [json.loads(line) for line in replay.get_data(as_text=True).splitlines()]
    assert events[-1]["type"] == "done"
    assert events[-1]["files"] == done["files"]
