"""Answers and the conversations they belong to.

Revision ID: 0001
Revises:
Create Date: 2026-11-26
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "conversations",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("owner", sa.String(80), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("updated_at", sa.DateTime(), nullable=False),
    )
    op.create_index("ix_conversations_owner", "conversations", ["owner"])
    op.create_index("ix_conversations_updated_at", "conversations", ["updated_at"])
    op.create_table(
        "answers",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column(
            "conversation_id",
            sa.String(32),
            sa.ForeignKey("conversations.id", ondelete="CASCADE"),
            nullable=False,
        ),
        sa.Column("parent_id", sa.String(32)),
        sa.Column("owner", sa.String(80), nullable=False),
        sa.Column("prompt", sa.Text(), nullable=False),
        sa.Column("language", sa.String(40)),
        sa.Column("model", sa.String(200), nullable=False),
        sa.Column("temperature", sa.Float()),
        sa.Column("max_tokens", sa.Integer(), nullable=False),
        sa.Column("text", sa.Text(), nullable=False),
        sa.Column("code_blocks", sa.JSON(), nullable=False),
        sa.Column("finish_reason", sa.String(40)),
        sa.Column("outcome", sa.String(40), nullable=False),
        sa.Column("usage", sa.JSON()),
        sa.Column("cost_usd", sa.Float()),
        sa.Column("timing", sa.JSON()),
        sa.Column("share_id", sa.String(40), unique=True),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("updated_at", sa.DateTime(), nullable=False),
    )
    op.create_index("ix_answers_conversation_id", "answers", ["conversation_id"])
    op.create_index("ix_answers_owner", "answers", ["owner"])
    op.create_index("ix_answers_created_at", "answers", ["created_at"])


def downgrade() -> None:
    op.drop_table("answers")
    op.drop_table("conversations")
