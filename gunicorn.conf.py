"""gunicorn settings for long-lived streams (read by `gunicorn wsgi:app`).

- gevent workers: one greenlet per stream, so thousands of idle streams cost
  little; sync workers would hold a process per stream.
- timeout: the master kills a worker whose loop stops for this long; with
  gevent the loop keeps running during streams, so this only catches a hang.
- keepalive above Heroku's 90 s idle connection limit.
- no preload: the app must be imported after the worker patches the process.
"""

import os
import secrets

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
accesslog = "-"
# Every worker must sign CSRF tokens with the same key.
if not _config.secret_key:
    os.environ["SECRET_KEY"] = secrets.token_hex(32)
