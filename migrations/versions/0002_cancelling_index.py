"""A partial index on the answers marked for a Stop from another worker.

Each worker polls for them every 0.4 s while it runs resumable answers; with it,
the poll reads an (almost always empty) index instead of naming every running
answer.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-26
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

CANCELLING = sa.text("outcome = 'cancelling'")


def upgrade() -> None:
    op.create_index(
        "ix_answers_cancelling",
        "answers",
        ["id"],
        sqlite_where=CANCELLING,
        postgresql_where=CANCELLING,
    )


def downgrade() -> None:
    op.drop_index("ix_answers_cancelling", table_name="answers")
