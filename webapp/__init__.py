"""Streaming Code Generator.

Importing the package imports nothing else: `gunicorn.conf.py` reads
`webapp.config` in gunicorn's master, before the workers' gevent patches, and
must not pull in ssl or the web stack there. The app factory is `create_app`,
in webapp/app.py.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from flask import Flask

    from webapp.config import Config


def create_app(config: Config | Mapping[str, str] | None = None) -> Flask:
    """Build the app from a Config, a mapping of settings (tests), or the environment."""
    from webapp.app import create_app as build

    return build(config)
