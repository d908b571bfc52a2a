"""An answer's files in the history: what was attached, and the versions it gave.

Each content is stored once (`file_contents`, by SHA-256), and linked to the
answers that hold it (`answer_files`: `attached` or `result`, in order). A link
goes with its answer (ON DELETE CASCADE); a content no answer links to any more
goes when answers are deleted (the store's `_drop_orphan_files`). A follow-up
attaches its conversation's latest files again: only links are written, never
the content twice.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from sqlalchemy import ForeignKey, Index, Integer, String, Text, delete, func, select, text
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.orm import Mapped, mapped_column

from webapp.answers.store import AnswerRow, Base, translated
from webapp.relay.attachments import Attachment

ATTACHED, RESULT = "attached", "result"


class FileContent(Base):
    __tablename__ = "file_contents"

    sha256: Mapped[str] = mapped_column(String(64), primary_key=True)
    content: Mapped[str] = mapped_column(Text)
    size: Mapped[int] = mapped_column(Integer)


class AnswerFile(Base):
    __tablename__ = "answer_files"

    answer_id: Mapped[str] = mapped_column(
        String(32), ForeignKey("answers.id", ondelete="CASCADE"), primary_key=True
    )
    role: Mapped[str] = mapped_column(String(10), primary_key=True)
    position: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(255))
    sha256: Mapped[str] = mapped_column(String(64), ForeignKey("file_contents.sha256"))

    __table_args__ = (Index("ix_answer_files_sha256", "sha256"),)


@dataclass(frozen=True, slots=True)
class StoredFile:
    """One file of an answer, as listed: its name, role, size and content's hash."""

    name: str
    role: str
    size: int
    sha256: str
    content: str

    def to_json(self) -> dict[str, object]:
        return {"name": self.name, "role": self.role, "size": self.size, "sha256": self.sha256}


@dataclass(frozen=True, slots=True)
class AnswerFiles:
    """An answer's files: what it was given and the versions it gave back."""

    attached: list[StoredFile]
    results: list[StoredFile]

    def latest(self) -> list[Attachment]:
        """The files as this answer leaves them (a follow-up starts from these): each
        attachment, replaced by its new version, then the new files."""
        given = {file.name: file.content for file in self.results}
        out = [Attachment(f.name, given.pop(f.name, f.content)) for f in self.attached]
        return out + [Attachment(name, content) for name, content in given.items()]

    def find(self, name: str, role: str) -> StoredFile | None:
        files = self.attached if role == ATTACHED else self.results
        return next((file for file in files if file.name == name), None)


def digest(content: str) -> str:
    return hashlib.sha256(content.encode("utf-8", "surrogatepass")).hexdigest()


_INSERT_CONTENT = text(
    "INSERT INTO file_contents (sha256, content, size) VALUES (:sha256, :content, :size)"
    " ON CONFLICT (sha256) DO UPDATE SET size = excluded.size"
)
_INSERT_LINK = text(
    "INSERT INTO answer_files (answer_id, role, position, name, sha256)"
    " VALUES (:answer_id, :role, :position, :name, :sha256)"
)


def link(connection: Connection, answer_id: str, role: str, files: Sequence[Attachment]) -> None:
    """Store `files` for the answer (in the caller's transaction). The content's upsert
    locks its row, so a concurrent orphan sweep cannot take it from under the link."""
    contents = {digest(f.content): f.content for f in files}
    connection.execute(
        _INSERT_CONTENT,
        [{"sha256": k, "content": v, "size": len(v.encode())} for k, v in contents.items()],
    )
    connection.execute(
        _INSERT_LINK,
        [
            {
                "answer_id": answer_id,
                "role": role,
                "position": number,
                "name": file.name,
                "sha256": digest(file.content),
            }
            for number, file in enumerate(files)
        ],
    )


def unlink(connection: Connection, answer_id: str, role: str) -> None:
    """Forget the answer's files of `role` (their contents stay for the orphan sweep)."""
    connection.execute(
        delete(AnswerFile).where(AnswerFile.answer_id == answer_id, AnswerFile.role == role)
    )


class FileStore:
    """Reads of the answers' files, and the upkeep of their contents. Writes happen in
    the store's own transactions (`link`); every read here is scoped to an owner."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    @translated
    def of(self, owner: str, answer_id: str) -> AnswerFiles:
        """The answer's files (none when it is not the owner's, or holds none)."""
        return self.of_many(owner, [answer_id]).get(answer_id, AnswerFiles([], []))

    @translated
    def of_many(self, owner: str, answer_ids: Iterable[str]) -> dict[str, AnswerFiles]:
        ids = list(answer_ids)
        if not ids:
            return {}
        query = (
            select(AnswerFile, FileContent.content, FileContent.size)
            .join(FileContent, FileContent.sha256 == AnswerFile.sha256)
            .join(AnswerRow, AnswerRow.id == AnswerFile.answer_id)
            .where(AnswerFile.answer_id.in_(ids), AnswerRow.owner == owner)
            .order_by(AnswerFile.answer_id, AnswerFile.role, AnswerFile.position)
        )
        found: dict[str, AnswerFiles] = {}
        with self.engine.connect() as connection:
            for row, content, size in _rows(connection, query):
                files = found.setdefault(row.answer_id, AnswerFiles([], []))
                kept = StoredFile(row.name, row.role, size, row.sha256, content)
                (files.attached if row.role == ATTACHED else files.results).append(kept)
        return found

    @translated
    def bytes_held(self, owner: str) -> int:
        """What the owner's answers hold, each content counted once."""
        held = (
            select(FileContent.sha256, FileContent.size)
            .join(AnswerFile, AnswerFile.sha256 == FileContent.sha256)
            .join(AnswerRow, AnswerRow.id == AnswerFile.answer_id)
            .where(AnswerRow.owner == owner)
            .distinct()
            .subquery()
        )
        with self.engine.connect() as connection:
            return int(connection.scalar(select(func.coalesce(func.sum(held.c.size), 0))) or 0)


def _rows(connection: Connection, query: object) -> Iterable[tuple[AnswerFile, str, int]]:
    from sqlalchemy.orm import Session

    with Session(bind=connection) as session:
        for row in session.execute(query):  # type: ignore[call-overload]
            yield row[0], row[1], row[2]
