"""gunicorn settings for long-lived streams (read by `gunicorn wsgi:app`).

- gevent workers: one greenlet per stream, so thousands of idle streams cost
  little (~16-27 KiB each, measured with 1000 open); sync workers would hold
  a process per stream.
- workers: one per core. Measured on 2 cores shared with the benchmark's
  client and upstream (300 streams at 20 tokens/s, A/B medians of 4): one
  worker spends 37 µs of CPU a token, two spend 50 µs (they contend with the
  other processes for the cores), but two halve the time to first token when
  300 requests arrive at once (85 vs 174 ms at the median), because
  per-request work then runs on both cores. On a machine that runs only the
  app, one per core; where cores are shared, set WEB_CONCURRENCY to the cores
  it may use.
- worker_connections: open streams per worker; 2000 leaves room above the
  1000 the benchmark holds.
- timeout: the master kills a worker whose loop stops for this long; with
  gevent the loop keeps running during streams, so this only catches a hang.
- keepalive above Heroku's 90 s idle connection limit.
- no preload: the app must be imported after the worker patches the process.
"""

import glob
import os
import re
import secrets
import tempfile

# Prometheus multiprocess mode: every worker writes its samples to one folder,
# and /metrics adds them up. It must be set before anything imports the client.
# An operator's own folder (even /tmp) loses only the client's sample files from
# an earlier run, never anything else.
if not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="codegen-metrics-")
else:
    _metrics_dir = os.environ["PROMETHEUS_MULTIPROC_DIR"]
    os.makedirs(_metrics_dir, exist_ok=True)
    for _old in glob.glob(os.path.join(_metrics_dir, "*.db")):
        if re.fullmatch(r"(counter|gauge_\w+|histogram|summary)_\d+\.db", os.path.basename(_old)):
            os.unlink(_old)

# `webapp` imports nothing at package level, so this reads the settings without
# importing ssl and friends in the master, before gevent patches the workers.
from webapp.config import Config, ConfigError

try:
    _config = Config.from_env()
except ConfigError as exc:  # a bad setting stops start-up, naming it
    raise SystemExit(f"configuration error: {exc}") from None

bind = f"0.0.0.0:{_config.port}"
worker_class = "gevent"
# The embedded model already uses every core and holds its weights in memory,
# so it gets one worker unless WEB_CONCURRENCY says otherwise.
_default_workers = 1 if _config.resolved_provider == "local" else (os.cpu_count() or 1)
workers = _config.web_concurrency or _default_workers
worker_connections = 2000
timeout = 60
graceful_timeout = 10
keepalive = 95
preload_app = False
accesslog = "-" if _config.access_log else None
# Every worker must sign CSRF tokens with the same key.
if not _config.secret_key:
    os.environ["SECRET_KEY"] = secrets.token_hex(32)


def child_exit(server, worker):  # type: ignore[no-untyped-def]
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(worker.pid)


def post_worker_init(worker):  # type: ignore[no-untyped-def]
    # After gevent patched this process: the relay's writes skip a system call.
    from webapp.web import fastio

    fastio.install(read_timeout=_config.client_read_timeout)


def worker_exit(server, worker):  # type: ignore[no-untyped-def]
    # Answers that ended in the last milliseconds are still queued: write them.
    import sys

    wsgi = sys.modules.get("wsgi")
    app = getattr(wsgi, "app", None)
    if app is None:
        return
    # Resumable answers handed on to this worker's own greenlets outlive every
    # request: end them (upstreams closed, rows not left pending) before the flush.
    app.extensions["jobs"].stop_all(wait=2.0)
    recorder = app.extensions.get("history")
    if recorder is not None:
        recorder.close()
