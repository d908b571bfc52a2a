"""Alembic's entry point: migrations run on the connection webapp.answers.store.upgrade
hands over (inside its migration lock), never on a URL of their own."""

from __future__ import annotations

from alembic import context

from webapp.answers.store import Base

connection = context.config.attributes["connection"]
context.configure(connection=connection, target_metadata=Base.metadata, render_as_batch=True)
with context.begin_transaction():
    context.run_migrations()
