"""The embedded model works on an attached file end to end, with no key: as `make run`
serves it (PROVIDER=local), a small Python file attached, a change asked for, and the
diff that comes back applies with `git apply` and gives the file the answer holds."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.conftest import require_binary
from tests.providers.test_local_model import local_env

GREET = 'def greet(name):\n    return "Hello, " + name\n'


@pytest.mark.local_model
def test_the_embedded_model_changes_an_attached_file_and_the_diff_applies(
    serve: Any, tmp_path: Path
) -> None:
    require_binary("git")
    server = serve(**local_env(MAX_OUTPUT_TOKENS="200"))
    session = requests.Session()  # the history's owner is in its cookie
    response = session.post(
        server.url + "/generate-code/",
        json={
            "prompt": "Add a docstring to the function greet.",
            "files": [{"name": "greet.py", "content": GREET}],
            "stream": False,
            "max_tokens": 200,
        },
        timeout=300,
    )
    assert response.status_code == 200, response.text
    body = response.json()
    changed = [entry for entry in body["files"] if entry["name"] == "greet.py"]
    assert changed, f"no new version of greet.py in: {body['text']!r}"
    [entry] = changed
    assert entry["status"] == "changed" and entry["diff"]
    block = next(b for b in body["code_blocks"] if b.get("file") == "greet.py")

    (tmp_path / "greet.py").write_text(GREET)
    (tmp_path / "change.patch").write_text(entry["diff"])
    subprocess.run(["git", "init", "-q"], cwd=tmp_path, check=True)
    subprocess.run(["git", "apply", "change.patch"], cwd=tmp_path, check=True)
    assert (tmp_path / "greet.py").read_text().rstrip("\n") == block["code"].rstrip("\n")
    # The same answer, kept: its patch from the history applies the same way.
    answer_id = response.headers["X-Answer-ID"]
    patch = session.get(f"{server.url}/answers/{answer_id}/changes.patch", timeout=10)
    assert patch.text == entry["diff"]
