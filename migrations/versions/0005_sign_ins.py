"""Page sign-ins, so that a sign-out ends every copy of the session cookie.

Kept here when the app has no Redis (webapp/web/signins.py).

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-07
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "sign_ins",
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("key_id", sa.String(length=32), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_sign_ins_created_at", "sign_ins", ["created_at"])


def downgrade() -> None:
    op.drop_index("ix_sign_ins_created_at", table_name="sign_ins")
    op.drop_table("sign_ins")
