"""Fixtures: the app in-process (`app` -> `client`), the fake upstream, and the
app served for real by gunicorn with gevent workers (`serve`)."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from flask import Flask
from flask.testing import FlaskClient

from tests.fake_upstream import FakeUpstream
from webapp import create_app
from webapp.errors import AppError
from webapp.providers.base import (
    Final,
    GenerationRequest,
    IteratorStream,
    Provider,
    ProviderInfo,
    UpstreamStream,
)

ROOT = Path(__file__).resolve().parent.parent
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")

# Small bounds so failure scenarios end quickly; heartbeats later than the
# first-token bound so pre-stream failures still get their status code.
TEST_SETTINGS = {
    "OPENAI_API_KEY": "sk-test-secret-key",
    "MODEL": "gpt-4o-mini",
    "ALLOWED_MODELS": "gpt-4o-mini,gpt-4o",
    "FIRST_TOKEN_TIMEOUT": "2",
    "IDLE_TIMEOUT": "1",
    "TOTAL_TIMEOUT": "6",
    "HEARTBEAT_INTERVAL": "5",
    "RETRY_MAX_ATTEMPTS": "3",
    "RETRY_BASE_DELAY": "0.05",
    "RETRY_MAX_DELAY": "0.2",
    "RETRY_AFTER_MAX": "1.5",
    "MAX_PROMPT_TOKENS": "200",
    "MAX_OUTPUT_TOKENS": "512",
    "SECRET_KEY": "test-secret",
    "LOG_LEVEL": "INFO",
    # Tests send many requests from one address; test_limits turns these on.
    "RATE_LIMIT": "off",
    "HISTORY_RATE_LIMIT": "off",
    "MAX_CONCURRENT_STREAMS_PER_CLIENT": "0",
    # History on (the default), in a folder of this run's: never the user's own.
    "DATA_DIR": tempfile.mkdtemp(prefix="codegen-test-data-"),
}


def require_binary(name: str) -> str:
    """A system binary the test needs: skip with a reason locally, fail in CI."""
    path = shutil.which(name)
    if path is None:
        message = f"{name} is not installed (make test installs it with apt)"
        if IN_CI:
            pytest.fail(message)
        pytest.skip(message)
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="session")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    openssl = require_binary("openssl")
    folder = tmp_path_factory.mktemp("tls")
    cert, key = folder / "cert.pem", folder / "key.pem"
    request = ["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1"]
    names = ["-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"]
    subprocess.run(
        [openssl, *request, *names, "-keyout", str(key), "-out", str(cert)],
        check=True,
        capture_output=True,
    )
    return cert, key


@pytest.fixture(scope="session")
def chromium() -> Iterator[Any]:
    """Debian's Chromium, headless, driven by Playwright (no browser download)."""
    executable = require_binary("chromium")
    from playwright.sync_api import sync_playwright

    from tests.helpers import CHROMIUM_ARGS

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=executable, headless=True, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[str]:
    """A real PostgreSQL server for the run (make test installs it with apt)."""
    from tests.postgres import find_binaries, throwaway_postgres

    if find_binaries() is None:
        message = "PostgreSQL is not installed (make test installs it with apt)"
        if IN_CI:
            pytest.fail(message)
        pytest.skip(message)
    with throwaway_postgres() as url:
        yield url


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """Each test on both history databases: a fresh SQLite file, and a fresh
    database on the real PostgreSQL server."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'history.db'}"
    import psycopg

    server: str = request.getfixturevalue("postgres_server")
    name = f"t{time.monotonic_ns()}"
    with psycopg.connect(server.replace("postgresql+psycopg", "postgresql"), autocommit=True) as c:
        c.execute(f"CREATE DATABASE {name}")
    return server.rsplit("/", 1)[0] + "/" + name


class Redis:
    """A real redis-server on a free port, for one test (make test installs it)."""

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


@pytest.fixture(scope="session")
def upstream() -> Iterator[FakeUpstream]:
    fake = FakeUpstream().start()
    yield fake
    fake.stop()


@pytest.fixture()
def fake(upstream: FakeUpstream) -> FakeUpstream:
    upstream.reset()
    return upstream


@pytest.fixture()
def app(upstream: FakeUpstream, tmp_path: Path) -> Iterator[Flask]:
    made = create_app({**TEST_SETTINGS, "OPENAI_BASE_URL": upstream.url, "DATA_DIR": str(tmp_path)})
    yield made
    made.extensions["generation"].provider.close()  # its pooled upstream connections
    if "history" in made.extensions:
        made.extensions["history"].close()


@pytest.fixture()
def client(app: Flask) -> FlaskClient:
    return app.test_client()


class Server:
    def __init__(self, env: dict[str, str]) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = ROOT / "tests" / "artifacts" / f"gunicorn-{self.port}.log"
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        # The app under test talks only to loopback: a proxy from the machine's
        # environment (set for package downloads, say) must not get in between.
        full_env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith(("OPENAI_", "PROVIDER", "LOCAL_", "MODEL", "UPSTREAM_"))
            and not k.lower().endswith("_proxy")
        }
        full_env.update(env)
        full_env.update({"PORT": str(self.port), "PYTHONUNBUFFERED": "1"})
        self.log = self.log_path.open("wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "gunicorn", "--config", "gunicorn.conf.py", "wsgi:app"],
            cwd=ROOT,
            env=full_env,
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"gunicorn exited: {self.log_path.read_text()[-2000:]}")
            try:
                if requests.get(self.url + "/healthz", timeout=1).ok:
                    return
            except requests.RequestException:
                time.sleep(0.1)
        raise RuntimeError("gunicorn did not start in 60 s")

    def logs(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_workers(self, count: int, timeout: float = 60) -> None:
        """Until `count` workers have loaded the app: the first to do so answers the
        health check that ends start-up, and the others may still be loading."""
        deadline = time.monotonic() + timeout
        while self.logs().count('"msg":"started"') < count:
            if time.monotonic() > deadline:
                raise RuntimeError(f"{count} workers did not start in {timeout} s")
            time.sleep(0.1)
        time.sleep(0.5)  # from loading the app to accepting connections

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.log.close()


@pytest.fixture(scope="session")
def serve(upstream: FakeUpstream) -> Iterator[Callable[..., Server]]:
    """Start (once per distinct settings) the app under gunicorn + gevent."""
    servers: dict[tuple[tuple[str, str], ...], Server] = {}

    def start(**overrides: str) -> Server:
        env = {
            **TEST_SETTINGS,
            "OPENAI_BASE_URL": upstream.url,
            "WEB_CONCURRENCY": "1",
            **overrides,
        }
        key = tuple(sorted(env.items()))
        if key not in servers:
            servers[key] = Server(env)
        return servers[key]

    yield start
    for server in servers.values():
        server.stop()


@pytest.fixture()
def server(serve: Callable[..., Server], fake: FakeUpstream) -> Server:
    return serve()


Step = str | Final | AppError | float


class ScriptedProvider(Provider):
    """A provider whose upstream requests are scripted, one `enqueue(*steps)` each.

    Steps run in order: a str is a token, a float that many seconds of silence
    (gevent.sleep), an AppError is raised (as the first step, the request itself
    fails, as a refused connection or an error status would), a Final ends it.
    `requests` records what each upstream request asked for.
    """

    name = "scripted"
    models = ("m",)

    def __init__(self) -> None:
        self.scripts: list[tuple[Step, ...]] = []
        self.requests: list[GenerationRequest] = []

    def enqueue(self, *steps: Step) -> None:
        self.scripts.append(steps)

    def open(self, request: GenerationRequest) -> UpstreamStream:
        self.requests.append(request)
        steps = self.scripts.pop(0)
        if steps and isinstance(steps[0], AppError):
            raise steps[0]
        return IteratorStream(self._run(steps))

    @staticmethod
    def _run(steps: tuple[Step, ...]) -> Iterator[str | Final]:
        import gevent

        for step in steps:
            if isinstance(step, AppError):
                raise step
            if isinstance(step, float):
                gevent.sleep(step)
            else:
                yield step

    def info(self) -> ProviderInfo:
        return ProviderInfo(self.name, "m")


@pytest.fixture()
def scripted() -> ScriptedProvider:
    return ScriptedProvider()
