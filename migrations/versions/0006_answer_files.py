"""An answer's files: contents stored once by hash, linked to the answers holding them.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-08
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "file_contents",
        sa.Column("sha256", sa.String(length=64), nullable=False),
        sa.Column("content", sa.Text(), nullable=False),
        sa.Column("size", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("sha256"),
    )
    op.create_table(
        "answer_files",
        sa.Column("answer_id", sa.String(length=32), nullable=False),
        sa.Column("role", sa.String(length=10), nullable=False),
        sa.Column("position", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=255), nullable=False),
        sa.Column("sha256", sa.String(length=64), nullable=False),
        sa.ForeignKeyConstraint(["answer_id"], ["answers.id"], ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["sha256"], ["file_contents.sha256"]),
        sa.PrimaryKeyConstraint("answer_id", "role", "position"),
    )
    op.create_index("ix_answer_files_sha256", "answer_files", ["sha256"])
    with op.batch_alter_table("answers") as batch:
        batch.add_column(sa.Column("file_changes", sa.JSON(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("answers") as batch:
        batch.drop_column("file_changes")
    op.drop_index("ix_answer_files_sha256", table_name="answer_files")
    op.drop_table("answer_files")
    op.drop_table("file_contents")
