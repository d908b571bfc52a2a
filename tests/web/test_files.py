"""Attached files on POST /generate-code/: JSON and multipart, their bounds, and the
diffs the `done` event carries (applied with `git apply`, as a person would)."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import pytest
from flask.testing import FlaskClient

from tests.conftest import TEST_SETTINGS, require_binary
from tests.fake_upstream import FakeUpstream
from tests.helpers import prompt, sse_events

CALC = "def add(a, b):\n    return a + b\n"


def post(client: FlaskClient, **body: Any) -> Any:
    return client.post("/generate-code/", json=body, headers={"Accept": "text/event-stream"})


def error_of(response: Any) -> dict[str, str]:
    assert response.status_code == 400, response.data[:300]
    error: dict[str, str] = response.get_json()["error"]
    return error


@pytest.mark.parametrize(
    ("files", "code", "needles"),
    [
        ([{"name": "../x.py", "content": "x"}], "file_invalid", ["files[0] '../x.py'", '"x.py"']),
        ([{"name": "a/b.py", "content": "x"}], "file_invalid", ["'a/b.py'", "without folders"]),
        ([{"name": "", "content": "x"}], "file_invalid", ["files[0] ''"]),
        ([{"name": "..", "content": "x"}], "file_invalid", ["'..'"]),
        ([{"name": "nul.bin", "content": "a\x00b"}], "file_invalid", ["'nul.bin'", "binary"]),
        (
            [{"name": "a.py", "content": "1"}, {"name": "a.py", "content": "2"}],
            "file_invalid",
            ["files[1] 'a.py'", "two files"],
        ),
        (
            [{"name": f"f{i}.py", "content": "x"} for i in range(9)],
            "too_many_files",
            ["limit of 8"],
        ),
        (
            [{"name": "big.py", "content": "x" * 100_001}],
            "file_too_large",
            ["'big.py'", "100,001 bytes", "limit of 100,000"],
        ),
        (
            [
                {"name": "small.py", "content": "x = 1\n"},
                {"name": "long.py", "content": "y " * 400},
            ],
            "prompt_too_long",
            ["files[1] 'long.py'", "limit of 200"],
        ),
        ([{"name": "a.py"}], "invalid_request", ["files.0.content"]),
        ([{"name": "a.py", "content": 5}], "invalid_request", ["files.0.content"]),
        ([{"name": "a.py", "content": "x", "path": "/etc"}], "unknown_fields", ["path"]),
    ],
)
def test_a_bad_file_is_a_400_that_names_it_and_the_bound(
    client: FlaskClient, fake: FakeUpstream, files: list[Any], code: str, needles: list[str]
) -> None:
    error = error_of(post(client, prompt=prompt("tokens=3"), files=files))
    assert error["code"] == code
    for needle in needles:
        assert needle in error["message"]
    assert fake.records == []  # nothing was half-sent to the model


def test_the_model_sees_each_file_fenced_with_its_name(
    client: FlaskClient, fake: FakeUpstream
) -> None:
    tricky = "s = '''\n```\n'''\n"  # a fence inside the file must not end its block
    response = post(
        client,
        prompt=prompt("answer=edit", "Add type hints"),
        files=[{"name": "calc.py", "content": CALC}, {"name": "notes.md", "content": tricky}],
    )
    assert response.status_code == 200
    user = fake.records[-1].body["messages"][-1]["content"]
    assert "File `calc.py`:\n```python calc.py\n" + CALC + "```" in user
    assert "File `notes.md`:\n````markdown notes.md\n" + tricky + "````" in user
    assert "whole new content in one fenced code block whose opening line names the file" in user


def test_the_done_event_carries_diffs_that_git_applies(
    client: FlaskClient, fake: FakeUpstream, tmp_path: Path
) -> None:
    require_binary("git")
    response = post(
        client,
        prompt=prompt("answer=edit", "Add type hints"),
        files=[{"name": "calc.py", "content": CALC}],
    )
    events = sse_events(response.get_data(as_text=True))
    done = next(data for name, data in events if name == "done")
    by_name = {entry["name"]: entry for entry in done["files"]}
    assert by_name["calc.py"]["status"] == "changed"
    assert by_name["test_calc.py"]["status"] == "new"
    assert [block.get("file") for block in done["code_blocks"]] == ["calc.py", "test_calc.py"]
    # A person saves the patch and applies it to their own copy.
    (tmp_path / "calc.py").write_text(CALC)
    patch = "".join(entry["diff"] for entry in done["files"])
    (tmp_path / "changes.patch").write_text(patch)
    subprocess.run(["git", "init", "-q"], cwd=tmp_path, check=True)
    subprocess.run(["git", "apply", "changes.patch"], cwd=tmp_path, check=True)
    assert '"""Return the sum of a and b."""' in (tmp_path / "calc.py").read_text()
    assert (tmp_path / "test_calc.py").read_text().startswith("from calc import add\n")


def test_one_attachment_and_one_unnamed_block_is_that_file(
    client: FlaskClient, fake: FakeUpstream
) -> None:
    response = client.post(
        "/generate-code/",
        json={
            "prompt": prompt("answer=edit_unnamed", "Comment it"),
            "files": [{"name": "calc.py", "content": CALC}],
            "stream": False,
        },
    )
    body = response.get_json()
    assert body["code_blocks"][0]["file"] == "calc.py"
    [change] = body["files"]
    assert change["name"] == "calc.py" and change["status"] == "changed"
    assert "+    # adds\n" in change["diff"]


def test_without_files_nothing_changes(client: FlaskClient, fake: FakeUpstream) -> None:
    response = post(client, prompt=prompt("answer=edit"))
    done = next(
        data for name, data in sse_events(response.get_data(as_text=True)) if name == "done"
    )
    assert done["files"] == []
    assert all("file" not in block for block in done["code_blocks"])


# -- multipart ---------------------------------------------------------------------


def test_multipart_attaches_files_like_json(client: FlaskClient, fake: FakeUpstream) -> None:
    from io import BytesIO

    response = client.post(
        "/generate-code/",
        data={
            "prompt": prompt("answer=edit", "Add type hints"),
            "stream": "false",
            "temperature": "0.5",
            "files": [(BytesIO(CALC.encode()), "calc.py")],
        },
        content_type="multipart/form-data",
    )
    assert response.status_code == 200, response.data[:300]
    body = response.get_json()
    assert {entry["name"] for entry in body["files"]} == {"calc.py", "test_calc.py"}
    assert fake.records[-1].body["temperature"] == 0.5


@pytest.mark.parametrize(
    ("data", "code", "needle"),
    [
        ({"files": [(b"\xff\xfe\x00bin", "blob.bin")]}, "file_invalid", "'blob.bin': this is not"),
        ({"files": [(b"x", "../up.py")]}, "file_invalid", "'../up.py'"),
        ({"temperature": "hot"}, "invalid_request", "temperature: must be a number"),
        ({"stream": "maybe"}, "invalid_request", "stream: must be true or false"),
        ({"colour": "red"}, "unknown_fields", "colour"),
    ],
)
def test_multipart_bad_input_names_the_field_or_file(
    client: FlaskClient, fake: FakeUpstream, data: dict[str, Any], code: str, needle: str
) -> None:
    from io import BytesIO

    form: dict[str, Any] = {"prompt": prompt("tokens=2")}
    for key, value in data.items():
        form[key] = [(BytesIO(raw), name) for raw, name in value] if key == "files" else value
    response = client.post("/generate-code/", data=form, content_type="multipart/form-data")
    error = error_of(response)
    assert error["code"] == code
    assert needle in error["message"]
    assert fake.records == []


def test_a_cross_site_form_cannot_generate(client: FlaskClient, fake: FakeUpstream) -> None:
    # multipart/form-data needs no CORS preflight: another site's form could post it.
    for headers in ({"Sec-Fetch-Site": "cross-site"}, {"Origin": "https://evil.example"}):
        response = client.post(
            "/generate-code/",
            data={"prompt": prompt("tokens=2")},
            content_type="multipart/form-data",
            headers=headers,
        )
        assert response.status_code == 403
        assert response.get_json()["error"]["code"] == "cross_site_request"
    assert fake.records == []


def test_with_api_keys_a_keyed_multipart_request_works(fake: FakeUpstream, tmp_path: Path) -> None:
    from io import BytesIO

    from webapp import create_app

    app = create_app(
        {
            **TEST_SETTINGS,
            "OPENAI_BASE_URL": fake.url,
            "DATA_DIR": str(tmp_path),
            "API_KEYS": "team-key-123456789",
        }
    )
    try:
        client = app.test_client()
        form = {"prompt": prompt("answer=edit"), "stream": "false"}
        refused = client.post(
            "/generate-code/", data=dict(form), content_type="multipart/form-data"
        )
        assert refused.status_code == 401
        response = client.post(
            "/generate-code/",
            data={**form, "files": [(BytesIO(CALC.encode()), "calc.py")]},
            content_type="multipart/form-data",
            headers={
                "Authorization": "Bearer team-key-123456789",
                "Origin": "https://tool.example",
            },
        )
        assert response.status_code == 200, response.data[:300]
        assert response.get_json()["files"][0]["name"] == "calc.py"
    finally:
        app.extensions["generation"].provider.close()
        if "history" in app.extensions:
            app.extensions["history"].close()


def test_files_count_for_nothing_when_turned_off(fake: FakeUpstream, tmp_path: Path) -> None:
    from webapp import create_app

    app = create_app(
        {**TEST_SETTINGS, "OPENAI_BASE_URL": fake.url, "DATA_DIR": str(tmp_path), "MAX_FILES": "0"}
    )
    try:
        error = error_of(
            post(app.test_client(), prompt="x", files=[{"name": "a.py", "content": "1"}])
        )
        assert error["code"] == "too_many_files" and "turned off" in error["message"]
    finally:
        app.extensions["generation"].provider.close()
        if "history" in app.extensions:
            app.extensions["history"].close()
