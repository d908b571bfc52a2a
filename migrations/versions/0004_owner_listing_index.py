"""An index in the order an owner's answers are listed: (owner, created_at, id).

A page of the list (`/answers`, the page's, a cursor's, a filter's) then reads its
own rows, read backwards from the owner's newest, instead of sorting every answer
of the owner's: with 20,000 answers, `GET /answers?limit=1` sorted all 20,000. It
leads with the owner, so it serves what ix_answers_owner served, which goes.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-28
"""

from __future__ import annotations

from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("ix_answers_owner_listing", "answers", ["owner", "created_at", "id"])
    op.drop_index("ix_answers_owner", table_name="answers")


def downgrade() -> None:
    op.create_index("ix_answers_owner", "answers", ["owner"])
    op.drop_index("ix_answers_owner_listing", table_name="answers")
