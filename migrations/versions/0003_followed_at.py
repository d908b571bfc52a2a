"""When a reader on another worker last followed a running answer through its row.

The worker running a resumable answer whose own clients all left looks at it before
the answer's grace runs out: a reader who re-attached through another worker (which
follows the row, without Redis) keeps the answer going.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-27
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("answers", sa.Column("followed_at", sa.DateTime(), nullable=True))


def downgrade() -> None:
    op.drop_column("answers", "followed_at")
