"""The page over HTTPS, the way Heroku serves it: a TLS-terminating proxy (nginx from
apt, a certificate made here) in front of gunicorn, with the README's Heroku settings
(`TRUST_FORWARDED_FOR=1`). Driven in real headless Chromium, with and without
JavaScript: the page used to refuse every submit there (CSRF's strict Referer check
against `Referrer-Policy: no-referrer`)."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.conftest import IN_CI, Server, free_port
from tests.fake_upstream import FakeUpstream
from tests.helpers import submit, wait_idle

pytestmark = pytest.mark.browser

NGINX_CONF = """
{user}
worker_processes 1;
pid {dir}/nginx.pid;
error_log {dir}/error.log;
events {{ worker_connections 256; }}
http {{
  access_log off;
  client_body_temp_path {dir}/body;
  proxy_temp_path {dir}/proxy;
  fastcgi_temp_path {dir}/fastcgi;
  uwsgi_temp_path {dir}/uwsgi;
  scgi_temp_path {dir}/scgi;
  server {{
    listen 127.0.0.1:{port} ssl;
    ssl_certificate {cert};
    ssl_certificate_key {key};
    location / {{
      proxy_pass http://127.0.0.1:{app};
      proxy_http_version 1.1;
      proxy_buffering off;
      proxy_set_header Host $http_host;
      proxy_set_header X-Forwarded-For $remote_addr;
      proxy_set_header X-Forwarded-Proto https;
    }}
  }}
}}
"""


def nginx_binary() -> str:
    found = shutil.which("nginx") or (
        "/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists() else None
    )
    if found is None:
        message = "nginx is not installed (make test installs nginx-light with apt)"
        if IN_CI:
            pytest.fail(message)
        pytest.skip(message)
    return found


@pytest.fixture(scope="module")
def https_url(
    serve: Any, upstream: FakeUpstream, certificate: tuple[Path, Path], tmp_path_factory: Any
) -> Iterator[tuple[str, Server]]:
    app: Server = serve(TRUST_FORWARDED_FOR="1")
    folder = tmp_path_factory.mktemp("nginx")
    port = free_port()
    cert, key = certificate
    (folder / "nginx.conf").write_text(
        NGINX_CONF.format(
            user="user root;" if os.geteuid() == 0 else "",
            dir=folder,
            port=port,
            app=app.port,
            cert=cert,
            key=key,
        )
    )
    proc = subprocess.Popen(
        [nginx_binary(), "-c", str(folder / "nginx.conf"), "-g", "daemon off;"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"https://127.0.0.1:{port}"
    deadline = time.monotonic() + 10
    while True:
        try:
            requests.get(url + "/healthz", verify=str(cert), timeout=1)
            break
        except requests.RequestException:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                log = (folder / "error.log").read_text() if (folder / "error.log").exists() else ""
                raise RuntimeError(f"nginx did not start: {log[-2000:]}") from None
            time.sleep(0.1)
    yield url, app
    proc.terminate()
    proc.wait(10)


def test_the_page_streams_an_answer_over_https_behind_a_tls_proxy(
    chromium: Any, https_url: tuple[str, Server], fake: FakeUpstream
) -> None:
    url, _ = https_url
    context = chromium.new_context(ignore_https_errors=True)
    try:
        page = context.new_page()
        page.goto(url + "/")
        submit(page, "Palindrome check [[fake answer=code]]")
        wait_idle(page)
        assert page.is_hidden("#error"), page.inner_text("#error")
        block = page.wait_for_selector("figure.codeblock pre.highlight")
        assert "def is_palindrome" in block.inner_text()
        cookies = {c["name"]: c for c in context.cookies()}
        assert cookies["session"]["secure"] and cookies["session"]["sameSite"] == "Lax"
    finally:
        context.close()


def test_the_no_javascript_form_works_over_https(
    chromium: Any, https_url: tuple[str, Server], fake: FakeUpstream
) -> None:
    url, _ = https_url
    context = chromium.new_context(ignore_https_errors=True, java_script_enabled=False)
    try:
        page = context.new_page()
        page.goto(url + "/")
        page.fill("#prompt", "Palindrome check [[fake answer=code]]")
        page.click("#generate")
        page.wait_for_selector("figure.codeblock pre.highlight", timeout=15_000)
        assert "def is_palindrome" in page.inner_text("#answer")
        assert "session expired" not in page.content()
    finally:
        context.close()


def test_https_gets_hsts_and_plain_http_keeps_working(
    https_url: tuple[str, Server], certificate: tuple[Path, Path]
) -> None:
    url, app = https_url
    secure = requests.get(url + "/", verify=str(certificate[0]), timeout=5)
    assert secure.headers["Strict-Transport-Security"].startswith("max-age=")
    assert secure.headers["Referrer-Policy"] == "same-origin"
    assert "Secure" in secure.headers["Set-Cookie"]
    plain = requests.get(app.url + "/", timeout=5)
    assert "Strict-Transport-Security" not in plain.headers
    assert "Secure" not in plain.headers["Set-Cookie"]
