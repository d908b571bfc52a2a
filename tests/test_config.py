"""Config: parsing, the errors that name the setting, and the table in docs/configuration.md."""

from __future__ import annotations

from pathlib import Path

import pytest

from webapp.config import Config, ConfigError, settings_table

ROOT = Path(__file__).resolve().parent.parent


def test_defaults_pick_the_local_model_without_a_key() -> None:
    assert Config.from_env({}).resolved_provider == "local"
    assert Config.from_env({"OPENAI_API_KEY": "k"}).resolved_provider == "openai"
    assert Config.from_env({"OPENAI_BASE_URL": "http://h/v1"}).resolved_provider == "openai"


def test_values_are_parsed() -> None:
    config = Config.from_env(
        {"ALLOWED_MODELS": "a, b,", "MODEL": "b", "RESUME_ON_FAILURE": "yes", "IDLE_TIMEOUT": "2.5"}
    )
    assert config.models == ("a", "b")
    assert config.resume_on_failure is True
    assert config.idle_timeout == 2.5


@pytest.mark.parametrize(
    ("environ", "named"),
    [
        ({"IDLE_TIMEOUT": "soon"}, "IDLE_TIMEOUT"),
        ({"TOTAL_TIMEOUT": "-1"}, "TOTAL_TIMEOUT"),
        ({"PROVIDER": "cohere"}, "PROVIDER"),
        ({"RESUME_ON_FAILURE": "maybe"}, "RESUME_ON_FAILURE"),
        ({"PORT": "99999"}, "PORT"),
        ({"ALLOWED_MODELS": "a,b", "MODEL": "c"}, "MODEL"),
        ({"LOCAL_MODEL": "llama-70b"}, "LOCAL_MODEL"),
    ],
)
def test_a_bad_setting_names_itself(environ: dict[str, str], named: str) -> None:
    with pytest.raises(ConfigError, match=named):
        Config.from_env(environ)


def test_dotenv_is_read_under_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    dotenv = tmp_path / ".env"
    dotenv.write_text("MODEL=from-dotenv\nMAX_OUTPUT_TOKENS=77\n")
    monkeypatch.delenv("MODEL", raising=False)  # the machine's own settings stay out
    monkeypatch.setenv("MAX_OUTPUT_TOKENS", "88")
    config = Config.from_env(dotenv=dotenv)
    assert config.model == "from-dotenv"
    assert config.max_output_tokens == 88


def test_the_settings_table_in_the_docs_matches_the_code() -> None:
    assert settings_table() in (ROOT / "docs" / "configuration.md").read_text()


def test_gunicorn_refuses_to_start_on_a_bad_setting() -> None:
    import os
    import subprocess
    import sys

    env = {**os.environ, "IDLE_TIMEOUT": "soon", "OPENAI_API_KEY": "x"}
    run = subprocess.run(
        [sys.executable, "-m", "gunicorn", "--config", "gunicorn.conf.py", "wsgi:app"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert run.returncode != 0
    assert "IDLE_TIMEOUT" in run.stderr + run.stdout
