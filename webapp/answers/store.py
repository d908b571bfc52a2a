"""Answers that last: the history store (SQLAlchemy 2, migrated by Alembic).

Every query is scoped to an owner (an API key's id, or an anonymous id kept in
the signed session): another owner's answer is simply not found. A share link
is the one way around that, made on purpose and revocable.

The store is never on the per-token path. A recording (webapp/answers/recording.py)
creates the row when an answer starts, saves its text as it grows (at most
every few seconds) and once at the end. SQLite is the default (a file in
DATA_DIR, nothing to set up); PostgreSQL (`DATABASE_URL`) serves several
machines. Calls are short; psycopg 3 yields to gevent by itself, and SQLite
writes are small transactions in WAL mode.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import functools
import secrets
import time
from collections.abc import Callable, Collection, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, ParamSpec, TypeVar

import orjson
from sqlalchemy import (
    JSON,
    ColumnElement,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    bindparam,
    create_engine,
    delete,
    event,
    func,
    or_,
    select,
    text,
    tuple_,
    update,
)
from sqlalchemy.engine import Connection, CursorResult, Engine
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, sessionmaker

from webapp.errors import HistoryUnavailable
from webapp.ids import made_at, sortable_id
from webapp.quiet import Stock
from webapp.relay.attachments import Attachment

MIGRATIONS = Path(__file__).resolve().parents[2] / "migrations"
# Any constant works: it names the lock that serialises migrations on PostgreSQL.
_MIGRATION_LOCK = 7_310_442_001
# The outcome of a running answer whose Stop reached another worker.
CANCELLING = "cancelling"
# A literal, not a bound value: only then may SQLite use the partial index on it.
_IS_CANCELLING = text(f"outcome = '{CANCELLING}'")
# The outcome of an answer whose instance died mid-answer (a crash, a restart, the
# OOM killer): the worker running an answer renews its row's `updated_at` every
# few seconds (webapp/answers/recording.py), so a running row untouched for its lease has
# no one running it. A read marks it so; Continue carries it on.
INTERRUPTED = "interrupted"
ANSWER_LEASE = 15.0
_RUNNING = ("pending", CANCELLING)
PAGE_SIZE = 20
MAX_PAGE_SIZE = 100
# Versions of one conversation read at once (a page, a follow-up's turns).
MAX_VERSIONS = 100
# Earlier versions a follow-up considers: MAX_PROMPT_TOKENS keeps fewer anyway.
MAX_TURNS = 20
# Answers a filter (`?q=`) reads per request at most, newest first from its cursor:
# the match is a scan of their text, so a page of matches may end short (even empty)
# with a cursor that carries on from there. Without it, a filter read every answer
# of the owner's.
FILTER_SCAN = 500
# Answers pruned at most per owner and write past HISTORY_MAX_ANSWERS: a bound lowered
# below what owners hold is reached over their next answers, not in one long write.
PRUNE_BATCH = 500


P = ParamSpec("P")
R = TypeVar("R")


def translated(method: Callable[P, R]) -> Callable[P, R]:
    """The store's one translation of database errors: HistoryUnavailable (logged by
    whoever catches it, with the cause chained)."""

    @functools.wraps(method)
    def call(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return method(*args, **kwargs)
        except SQLAlchemyError as exc:
            raise HistoryUnavailable(
                "The history database is unavailable right now; try again shortly."
            ) from exc

    return call


def now() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)  # stored naive, in UTC


def _make_id() -> str:
    return sortable_id(12)  # 96 random bits, after the time


# Two ids for an answer that opens a conversation (most API calls), made ahead:
# ~4 us each in a busy worker, on the way to the first token. Their time prefix
# is that of their making, at most ID_FRESH s earlier.
ID_FRESH = 60.0
_ids = Stock(_make_id, size=1024, batch=64, fresh=ID_FRESH)


def new_id() -> str:
    return _ids.take() or _make_id()


def may_be_new(row_id: str, within: float) -> bool:
    """Whether `row_id` may be that of a row made in the last `within` seconds (its
    time prefix is at most ID_FRESH s older than the row): a random or old id is not."""
    made = made_at(row_id)
    clock = time.time()
    return made is not None and clock - ID_FRESH - within - 1 <= made <= clock + 1


class Base(DeclarativeBase):
    pass


class Conversation(Base):
    __tablename__ = "conversations"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    owner: Mapped[str] = mapped_column(String(80), index=True)
    created_at: Mapped[datetime] = mapped_column(DateTime)
    updated_at: Mapped[datetime] = mapped_column(DateTime, index=True)


class AnswerRow(Base):
    __tablename__ = "answers"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    conversation_id: Mapped[str] = mapped_column(
        String(32), ForeignKey("conversations.id", ondelete="CASCADE"), index=True
    )
    parent_id: Mapped[str | None] = mapped_column(String(32))
    owner: Mapped[str] = mapped_column(String(80))  # ix_answers_owner_listing
    prompt: Mapped[str] = mapped_column(Text)
    language: Mapped[str | None] = mapped_column(String(40))
    model: Mapped[str] = mapped_column(String(200))
    temperature: Mapped[float | None] = mapped_column(Float)
    max_tokens: Mapped[int] = mapped_column(Integer)
    text: Mapped[str] = mapped_column(Text, default="")
    code_blocks: Mapped[list[dict[str, str]]] = mapped_column(JSON, default=list)
    finish_reason: Mapped[str | None] = mapped_column(String(40))
    outcome: Mapped[str] = mapped_column(String(40), default="pending")
    usage: Mapped[dict[str, int] | None] = mapped_column(JSON)
    cost_usd: Mapped[float | None] = mapped_column(Float)
    timing: Mapped[dict[str, float] | None] = mapped_column(JSON)
    share_id: Mapped[str | None] = mapped_column(String(40), unique=True)
    created_at: Mapped[datetime] = mapped_column(DateTime, index=True)
    updated_at: Mapped[datetime] = mapped_column(DateTime)
    # A reader on another worker follows it through this row (webapp/answers/jobs.py).
    followed_at: Mapped[datetime | None] = mapped_column(DateTime)
    # Its `done` event's `files`: each attached file it changed, with the diff.
    file_changes: Mapped[list[dict[str, Any]] | None] = mapped_column(JSON)

    # The rows a worker polls for a Stop sent to another worker: almost always none,
    # so the poll costs the same with 3 answers running or 3,000, and a big history.
    __table_args__ = (
        Index(
            "ix_answers_cancelling",
            "id",
            sqlite_where=_IS_CANCELLING,
            postgresql_where=_IS_CANCELLING,
        ),
        # An owner's answers in the listing's order (read backwards: newest first), so
        # a page, a cursor's or a filter's, reads its rows and no others: the same
        # cost at 20 answers or 200,000, where it sorted all of them.
        Index("ix_answers_owner_listing", "owner", "created_at", "id"),
    )


class SignInRow(Base):
    """A page sign-in (webapp/web/signins.py), when there is no Redis to keep it."""

    __tablename__ = "sign_ins"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    key_id: Mapped[str] = mapped_column(String(32))
    created_at: Mapped[datetime] = mapped_column(DateTime, index=True)


# The answers table itself, for the statements that need no ORM.
ANSWERS = Base.metadata.tables["answers"]
# The listing's order and an answer's place in it, as ix_answers_owner_listing has them.
_NEWEST_FIRST = (AnswerRow.created_at.desc(), AnswerRow.id.desc())
_listing_place = tuple_(AnswerRow.created_at, AnswerRow.id)
_EPOCH = datetime(1970, 1, 1)
# HISTORY_MAX_ANSWERS's statements (Store.prune), made once: through the ORM, building
# and running them cost ~2 ms a pruned answer with SQLite, ten times the database's work.
_CONVERSATIONS = Base.metadata.tables["conversations"]
_OVER_BOUND = (
    select(ANSWERS.c.owner)
    .where(ANSWERS.c.owner.in_(bindparam("owners", expanding=True)))
    .group_by(ANSWERS.c.owner)
    .having(func.count() > bindparam("keep"))
)
_FIRST_OUT = (
    select(ANSWERS.c.created_at, ANSWERS.c.id)
    .where(ANSWERS.c.owner == bindparam("owner"))
    .order_by(ANSWERS.c.created_at.desc(), ANSWERS.c.id.desc())
    .offset(bindparam("keep"))
    .limit(1)
)
_OLDEST_ENDED = (
    select(ANSWERS.c.id, ANSWERS.c.conversation_id)
    .where(
        ANSWERS.c.owner == bindparam("owner"),
        tuple_(ANSWERS.c.created_at, ANSWERS.c.id)
        <= tuple_(bindparam("created_at", type_=DateTime()), bindparam("id", type_=String())),
        ANSWERS.c.outcome.not_in(_RUNNING),  # a running answer's end must find its row
    )
    .order_by(ANSWERS.c.created_at, ANSWERS.c.id)
    .limit(PRUNE_BATCH)
)
# Contents of files no answer links to (webapp/answers/files.py), after deletes.
_ORPHAN_FILES = text(
    "DELETE FROM file_contents WHERE NOT EXISTS"
    " (SELECT 1 FROM answer_files WHERE answer_files.sha256 = file_contents.sha256)"
)
_DELETE_ANSWERS = ANSWERS.delete().where(ANSWERS.c.id.in_(bindparam("ids", expanding=True)))
_DELETE_EMPTIED = _CONVERSATIONS.delete().where(
    _CONVERSATIONS.c.id.in_(bindparam("ids", expanding=True)),
    ~select(ANSWERS.c.id).where(ANSWERS.c.conversation_id == _CONVERSATIONS.c.id).exists(),
)


def cursor_of(created_at: datetime, answer_id: str) -> str:
    """A listing's `next`: the place of the last answer it read ("<id>.<microseconds>").
    The next page starts after that place, so it holds once that answer is gone."""
    return f"{answer_id}.{(created_at - _EPOCH) // timedelta(microseconds=1)}"


def _matching(query: str) -> ColumnElement[bool]:
    """The filter: `query` in the prompt or the answer, case aside, taken literally."""
    like = "%" + query.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
    return or_(
        func.lower(AnswerRow.prompt).like(like.lower(), escape="\\"),
        func.lower(AnswerRow.text).like(like.lower(), escape="\\"),
    )


def stamp_text(seconds: float) -> str:
    """A time.time() as a stored timestamp's text: naive UTC, SQLAlchemy's own SQLite
    format ("2026-11-26 21:35:10.123456"), which PostgreSQL reads as well."""
    return datetime.fromtimestamp(seconds, UTC).replace(tzinfo=None).isoformat(" ", "microseconds")


def storable(text: str) -> str:
    """Text as both databases take it. PostgreSQL refuses a NUL in a text column, so
    one prompt or answer with one failed its whole batch of rows there; SQL's
    substr() (the saves) stops at one. Each becomes U+FFFD: one character for one,
    so the saved lengths still count."""
    return text.replace("\0", "\ufffd") if "\0" in text else text


def json_text(value: Any) -> str:
    """JSON as text, through orjson (~10x the stdlib's speed): the bulk writes' and
    the engines' serializer."""
    return orjson.dumps(value).decode()


# Not frozen: a frozen dataclass sets each field through object.__setattr__, 0.8 µs
# to make one of 11 fields against 0.14, and two are made per answer. Neither is
# changed once made.
@dataclass(slots=True)
class NewAnswer:
    """An answer before it is written (Store.new_answer): its ids, and what its rows
    need. The rows are built when written, by the recorder's writer, not on the
    way to the answer's first token."""

    id: str
    conversation_id: str
    new_conversation: bool
    owner: str
    prompt: str
    language: str | None
    model: str
    temperature: float | None
    max_tokens: int
    parent_id: str | None
    started: float  # time.time(): a datetime costs ~5 us more to make, in a busy worker
    files: tuple[Attachment, ...] = ()  # attached (webapp/answers/files.py writes them)

    def rows(self) -> tuple[tuple[Any, ...] | None, tuple[Any, ...]]:
        """BulkSQL.insert_conversation's values (None when it joins a conversation)
        and BulkSQL.insert_answer's, with one timestamp for both."""
        stamp = stamp_text(self.started)
        conversation = (
            (self.conversation_id, self.owner, stamp, stamp) if self.new_conversation else None
        )
        answer = (
            self.id,
            self.conversation_id,
            self.parent_id,
            self.owner,
            storable(self.prompt),
            None if self.language is None else storable(self.language),
            storable(self.model),
            self.temperature,
            self.max_tokens,
            stamp,
            stamp,
        )
        return conversation, answer


@dataclass(slots=True)
class FinishedAnswer:
    """An answer's last state, written once when it ends (Store.write)."""

    id: str
    text: str
    code_blocks: list[dict[str, str]]
    finish_reason: str | None
    outcome: str
    usage: dict[str, int] | None
    cost_usd: float | None
    timing: dict[str, float] | None
    file_changes: list[dict[str, Any]] | None = None
    # The new versions of files it gave (webapp/answers/files.py writes them).
    results: tuple[Attachment, ...] = ()

    def row(self, stamp: str) -> tuple[Any, ...]:
        """BulkSQL.finish's values."""
        return (
            storable(self.text),
            json_text(self.code_blocks),  # orjson writes a NUL as the escape \u0000
            self.finish_reason,
            self.outcome,
            None if self.usage is None else json_text(self.usage),
            self.cost_usd,
            None if self.timing is None else json_text(self.timing),
            None if self.file_changes is None else json_text(self.file_changes),
            stamp,
            self.id,
        )


class BulkSQL:
    """The recorder's writes of many rows at once, as the driver's own SQL.

    Through Core, SQLAlchemy's per-row parameter processing cost more than the
    database's own work: on SQLite, warm, 30 µs a row to insert a new answer
    against 18 this way, 8 against 4 to save its text, 13 against 7 to end it. So
    these go through `exec_driver_sql`, values in a tuple already as the driver
    takes them: timestamps as text (stamp_text), JSON as text. psycopg sends a
    str as an untyped literal, which PostgreSQL casts to the column's type; the
    same statements serve both databases.
    """

    def __init__(self, paramstyle: str) -> None:
        # sqlite3 takes "?"; psycopg takes "%s" whatever its dialect's default style.
        if paramstyle not in ("qmark", "format", "pyformat"):
            raise ValueError(f"the history needs SQLite or PostgreSQL, not a {paramstyle} driver")
        mark = "?" if paramstyle == "qmark" else "%s"

        def marks(n: int) -> str:
            return ", ".join([mark] * n)

        self.insert_conversation = (
            f"INSERT INTO conversations (id, owner, created_at, updated_at) VALUES ({marks(4)})"
        )
        self.insert_answer = (
            "INSERT INTO answers (id, conversation_id, parent_id, owner, prompt, language,"
            " model, temperature, max_tokens, created_at, updated_at, text, code_blocks,"
            f" outcome) VALUES ({marks(11)}, '', '[]', 'pending')"
        )
        self.finish = (
            f"UPDATE answers SET text = {mark}, code_blocks = {mark}, finish_reason = {mark},"
            f" outcome = {mark}, usage = {mark}, cost_usd = {mark}, timing = {mark},"
            f" file_changes = {mark}, updated_at = {mark} WHERE id = {mark}"
        )
        # The text is cut to what the recorder knows was saved, then added to: run
        # twice (a commit whose acknowledgement was lost, then retried), it adds once.
        # Only while the answer runs: with PostgreSQL a read's flush can write the end
        # while the writer's save of that answer waits on the database, and the save
        # landing after it would cut the final text back.
        self.save_growth = (
            f"UPDATE answers SET text = substr(text, 1, CAST({mark} AS INTEGER)) || {mark},"
            f" updated_at = {mark} WHERE id = {mark} AND outcome IN ('pending', '{CANCELLING}')"
        )


@dataclass(frozen=True, slots=True)
class StoredAnswer:
    """One answer as read from the store (detached from any session)."""

    id: str
    conversation_id: str
    parent_id: str | None
    prompt: str
    language: str | None
    model: str
    temperature: float | None
    max_tokens: int
    text: str
    code_blocks: list[dict[str, str]]
    finish_reason: str | None
    outcome: str
    usage: dict[str, int] | None
    cost_usd: float | None
    timing: dict[str, float] | None
    share_id: str | None
    created_at: datetime
    updated_at: datetime
    file_changes: list[dict[str, Any]] | None = None

    @classmethod
    def of(cls, row: AnswerRow) -> StoredAnswer:
        return cls(**{name: getattr(row, name) for name in cls.__slots__})

    @property
    def continuable(self) -> bool:
        """It stopped at its token limit, or its instance died: Continue may carry it on."""
        return (self.finish_reason == "length" and self.outcome == "ok") or (
            self.outcome == INTERRUPTED
        )

    def to_json(self) -> dict[str, Any]:
        body = {name: getattr(self, name) for name in self.__slots__}
        body["created_at"] = self.created_at.isoformat() + "Z"
        body["updated_at"] = self.updated_at.isoformat() + "Z"
        body["shared"] = body.pop("share_id") is not None
        body["files"] = body.pop("file_changes") or []
        return body


def sqlalchemy_url(url: str) -> str:
    """Heroku's `postgres://` (and plain `postgresql://`) as SQLAlchemy's psycopg 3 URL."""
    for prefix in ("postgres://", "postgresql://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url.removeprefix(prefix)
    return url


# The JSON columns the ORM reads and writes, through orjson too.
_JSON_CODEC: dict[str, Any] = {"json_serializer": json_text, "json_deserializer": orjson.loads}


def make_engine(url: str) -> Engine:
    url = sqlalchemy_url(url)
    if url.startswith("sqlite"):
        # A short busy wait: the C library blocks the event loop while it waits.
        engine = create_engine(url, connect_args={"timeout": 2.0}, **_JSON_CODEC)

        @event.listens_for(engine, "connect")
        def _pragmas(connection: Any, _record: Any) -> None:
            cursor = connection.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")  # readers never wait for the writer
            cursor.execute("PRAGMA synchronous=NORMAL")  # no fsync per commit in WAL mode
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.close()

        return engine
    engine = create_engine(url, pool_pre_ping=True, pool_size=5, max_overflow=5, **_JSON_CODEC)

    @event.listens_for(engine, "connect")
    def _nul_free(connection: Any, _record: Any) -> None:
        # PostgreSQL refuses a NUL in any text it is sent: an id, a filter or a cursor
        # from a URL with %00 in it failed as history_unavailable (503). Every str
        # bound is sent as storable() makes it, so such a read finds nothing instead.
        getattr(connection, "driver_connection", connection).adapters.register_dumper(
            str, _nul_free_dumper()
        )

    return engine


@functools.cache
def _nul_free_dumper() -> type:
    """psycopg's dumper of a Python str (an untyped literal, which the bulk writes rely
    on), with storable() first."""
    from psycopg.types.string import StrDumperUnknown

    class NulFreeStr(StrDumperUnknown):
        def dump(self, obj: str) -> Any:
            return super().dump(storable(obj))

    return NulFreeStr


@contextlib.contextmanager
def migration_lock(engine: Engine) -> Iterator[Connection]:
    """One migrator at a time, across workers (and machines, on PostgreSQL)."""
    with engine.connect() as connection:
        if engine.dialect.name == "postgresql":
            connection.execute(text("SELECT pg_advisory_lock(:key)"), {"key": _MIGRATION_LOCK})
            connection.commit()
            try:
                yield connection
            finally:
                connection.execute(
                    text("SELECT pg_advisory_unlock(:key)"), {"key": _MIGRATION_LOCK}
                )
                connection.commit()
        else:
            database = engine.url.database or ""
            lock_path = Path(database + ".migrate.lock") if database else None
            if lock_path is None or database == ":memory:":
                yield connection
                return
            with lock_path.open("a") as lock:
                fcntl.flock(lock, fcntl.LOCK_EX)
                try:
                    yield connection
                finally:
                    fcntl.flock(lock, fcntl.LOCK_UN)


def upgrade(engine: Engine, revision: str = "head") -> None:
    """Bring the schema to the newest migration (a no-op when it is there)."""
    from alembic import command
    from alembic.config import Config as AlembicConfig

    with migration_lock(engine) as connection:
        settings = AlembicConfig()
        settings.set_main_option("script_location", str(MIGRATIONS))
        settings.attributes["connection"] = connection
        command.upgrade(settings, revision)
        connection.commit()


class _Base:
    """What every side of the store works with: the engine and a session maker."""

    engine: Engine
    _session: sessionmaker[Session]


class _Listing(_Base):
    """The store's reading side: an owner's answers a page at a time (keyset, through
    ix_answers_owner_listing), a conversation's versions, a shared answer."""

    @translated
    def page(
        self, owner: str, *, query: str = "", limit: int = PAGE_SIZE, before: str | None = None
    ) -> tuple[list[StoredAnswer], str | None]:
        """The owner's answers, newest first, after the cursor `before` (a `next`, or
        an answer's id), filtered by a text in the prompt or the answer; and the cursor
        of the next page (None on the last). Each is a range of ix_answers_owner_listing:
        `limit` rows read, or FILTER_SCAN at most with a filter."""
        limit = max(1, min(limit, MAX_PAGE_SIZE))
        mine = [AnswerRow.owner == owner]
        with self._session() as session:
            start = self._cursor_place(session, owner, before) if before else None
            if start is not None:
                mine.append(_listing_place < start)
            statement = select(AnswerRow).where(*mine)
            scanned_to = None
            if query.strip():
                # The last answer this request may read, when more follow it: the filter
                # reads no further, and the next page starts after it.
                edge = session.execute(
                    select(AnswerRow.created_at, AnswerRow.id)
                    .where(*mine)
                    .order_by(*_NEWEST_FIRST)
                    .offset(FILTER_SCAN - 1)
                    .limit(2)
                ).all()
                if len(edge) == 2:
                    scanned_to = edge[0][0], edge[0][1]
                    statement = statement.where(_listing_place >= scanned_to)
                statement = statement.where(_matching(query.strip()))
            rows = session.scalars(statement.order_by(*_NEWEST_FIRST).limit(limit + 1)).all()
        found = [StoredAnswer.of(r) for r in rows[:limit]]
        if len(rows) > limit:
            return found, cursor_of(found[-1].created_at, found[-1].id)
        return found, (cursor_of(*scanned_to) if scanned_to is not None else None)

    @staticmethod
    def _cursor_place(session: Session, owner: str, before: str) -> tuple[datetime, str] | None:
        """Where a cursor points: the place it carries, or that of the owner's answer
        it names; None (the first page) for neither."""
        answer_id, dot, micros = before.partition(".")
        if dot and micros.isascii() and micros.isdigit() and len(micros) <= 16:
            return _EPOCH + timedelta(microseconds=int(micros)), answer_id
        found = session.execute(
            select(AnswerRow.created_at, AnswerRow.id).where(
                AnswerRow.id == before, AnswerRow.owner == owner
            )
        ).first()
        return None if found is None else (found[0], found[1])

    @translated
    def versions(
        self, owner: str, conversation_id: str, newest: int = MAX_VERSIONS
    ) -> list[StoredAnswer]:
        """A conversation's newest answers (at most `newest`: memory stays bounded
        however long it grows), oldest first; empty: none of this owner's."""
        with self._session() as session:
            rows = session.scalars(
                select(AnswerRow)
                .where(AnswerRow.conversation_id == conversation_id, AnswerRow.owner == owner)
                .order_by(AnswerRow.created_at.desc(), AnswerRow.id.desc())
                .limit(newest)
            ).all()
            return [StoredAnswer.of(r) for r in reversed(rows)]

    @translated
    def shared(self, share_id: str) -> StoredAnswer | None:
        with self._session() as session:
            row = session.scalar(select(AnswerRow).where(AnswerRow.share_id == share_id))
            return StoredAnswer.of(row) if row is not None else None


class _Keeping(_Base):
    """The store's upkeep: what an owner does to their answers (delete, share) and the
    bounds kept on them (HISTORY_MAX_ANSWERS, HISTORY_DAYS). A deleted answer's files
    go with it (webapp/answers/files.py)."""

    def _drop_orphan_files(self) -> None:
        """Delete the file contents no answer links to any more. Its own transaction,
        after the delete: an attach racing it keeps its content (the link's row lock),
        and at worst this waits for the next delete."""
        with contextlib.suppress(SQLAlchemyError), self.engine.begin() as connection:
            connection.execute(_ORPHAN_FILES)

    @translated
    def delete_answer(self, owner: str, answer_id: str) -> bool:
        with self._session() as session, session.begin():
            row = session.scalar(
                select(AnswerRow).where(AnswerRow.id == answer_id, AnswerRow.owner == owner)
            )
            if row is None:
                return False
            conversation_id = row.conversation_id
            session.delete(row)
            session.flush()
            left = session.scalar(
                select(func.count())
                .select_from(AnswerRow)
                .where(AnswerRow.conversation_id == conversation_id)
            )
            if not left:
                session.execute(delete(Conversation).where(Conversation.id == conversation_id))
        self._drop_orphan_files()
        return True

    @translated
    def delete_conversation(self, owner: str, conversation_id: str) -> bool:
        with self._session() as session, session.begin():
            result: CursorResult[Any] = session.execute(  # type: ignore[assignment]
                delete(AnswerRow).where(
                    AnswerRow.conversation_id == conversation_id, AnswerRow.owner == owner
                )
            )
            gone = result.rowcount
            session.execute(
                delete(Conversation).where(
                    Conversation.id == conversation_id, Conversation.owner == owner
                )
            )
        if gone:
            self._drop_orphan_files()
        return bool(gone)

    @translated
    def share(self, owner: str, answer_id: str) -> str | None:
        """The answer's share id (made now, or the one it has); None if not the owner's."""
        with self._session() as session, session.begin():
            row = session.scalar(
                select(AnswerRow).where(AnswerRow.id == answer_id, AnswerRow.owner == owner)
            )
            if row is None:
                return None
            if row.share_id is None:
                row.share_id = secrets.token_urlsafe(18)  # 144 random bits
            return row.share_id

    @translated
    def unshare(self, owner: str, answer_id: str) -> bool:
        with self._session() as session, session.begin():
            result: CursorResult[Any] = session.execute(  # type: ignore[assignment]
                update(AnswerRow)
                .where(AnswerRow.id == answer_id, AnswerRow.owner == owner)
                .values(share_id=None)
            )
            return bool(result.rowcount)

    @translated
    def prune(self, owners: Collection[str], keep: int) -> int:
        """HISTORY_MAX_ANSWERS: past its newest `keep` answers, each owner's oldest go
        (PRUNE_BATCH at most), but none still running; then their conversations, once
        empty. A conversation thus loses its oldest versions first, as with
        HISTORY_DAYS. Returns how many answers went."""
        # Almost always none: one read of their index entries, at every write of new
        # answers (~0.1 ms with SQLite).
        with self.engine.connect() as connection:
            over = list(connection.scalars(_OVER_BOUND, {"owners": list(owners), "keep": keep}))
        if not over:
            return 0
        gone = 0
        with self.engine.begin() as connection:
            for who in over:
                first_out = connection.execute(_FIRST_OUT, {"owner": who, "keep": keep}).first()
                if first_out is None:
                    continue
                doomed = connection.execute(
                    _OLDEST_ENDED,
                    {"owner": who, "created_at": first_out.created_at, "id": first_out.id},
                ).all()
                if not doomed:
                    continue
                connection.execute(_DELETE_ANSWERS, {"ids": [d.id for d in doomed]})
                connection.execute(
                    _DELETE_EMPTIED, {"ids": list({d.conversation_id for d in doomed})}
                )
                gone += len(doomed)
        if gone:
            self._drop_orphan_files()
        return gone

    @translated
    def purge(self, days: int, batch: int = 500) -> int:
        """Delete up to `batch` answers older than `days` (and emptied conversations)."""
        cutoff = now() - timedelta(days=days)
        with self._session() as session, session.begin():
            ids = session.scalars(
                select(AnswerRow.id).where(AnswerRow.created_at < cutoff).limit(batch)
            ).all()
            if not ids:
                return 0
            session.execute(delete(AnswerRow).where(AnswerRow.id.in_(ids)))
            session.execute(
                delete(Conversation).where(
                    Conversation.created_at < cutoff,
                    ~select(AnswerRow.id)
                    .where(AnswerRow.conversation_id == Conversation.id)
                    .exists(),
                )
            )
        self._drop_orphan_files()
        return len(ids)


class Store(_Listing, _Keeping):
    """Answers and conversations, each visible to its owner only.

    Methods take the owner first and return None / False for what the owner
    cannot see, so a view cannot forget the check. Writes commit at once. Here: an
    answer's own record while it runs and ends; its listing (`_Listing`) and the
    owner's actions and bounds on it (`_Keeping`) are the two sides below.
    """

    def __init__(self, engine: Engine, *, lease: float = ANSWER_LEASE) -> None:
        self.engine = engine
        self.lease = lease
        self._session = sessionmaker(engine, expire_on_commit=False)
        self._sql = BulkSQL(engine.dialect.paramstyle)

    @classmethod
    def open(cls, url: str, *, migrate: bool = True, lease: float = ANSWER_LEASE) -> Store:
        if url.startswith("sqlite:///"):
            Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
        engine = make_engine(url)
        if migrate:
            upgrade(engine)
        return cls(engine, lease=lease)

    def close(self) -> None:
        self.engine.dispose()

    # Writing an answer -------------------------------------------------------------

    @staticmethod
    def new_answer(
        owner: str,
        *,
        prompt: str,
        language: str | None,
        model: str,
        temperature: float | None,
        max_tokens: int,
        conversation_id: str | None = None,
        parent_id: str | None = None,
    ) -> NewAnswer:
        """A new answer, its ids made here (so its id is known before it is
        written), in a new conversation or as the next version of one."""
        return NewAnswer(
            new_id(),
            conversation_id or new_id(),
            conversation_id is None,
            owner,
            prompt,
            language,
            model,
            temperature,
            max_tokens,
            parent_id,
            time.time(),
        )

    @translated
    def write(
        self,
        answers: list[NewAnswer],
        ends: list[FinishedAnswer],
        also: Callable[[Connection], None] | None = None,
    ) -> None:
        """New answers (and their new conversations), then the last state of ended
        ones, then `also` (their files: webapp/answers/files.py): one transaction."""
        rows = [a.rows() for a in answers]
        conversations = [conversation for conversation, _ in rows if conversation]
        with self.engine.begin() as connection:
            if conversations:
                connection.exec_driver_sql(self._sql.insert_conversation, conversations)
            if rows:
                connection.exec_driver_sql(self._sql.insert_answer, [row for _, row in rows])
            if ends:
                stamp = stamp_text(time.time())
                connection.exec_driver_sql(self._sql.finish, [end.row(stamp) for end in ends])
            if also is not None:
                also(connection)

    @translated
    def save_growth(self, growth: list[tuple[str, int, str]]) -> None:
        """What several running answers added, in one transaction: (answer id, the
        length of its text already saved, the text added since). The stored text
        is cut to that length first, so a save repeated adds nothing twice."""
        stamp = stamp_text(time.time())
        with self.engine.begin() as connection:
            connection.exec_driver_sql(
                self._sql.save_growth,
                [(saved, storable(added), stamp, answer_id) for answer_id, saved, added in growth],
            )

    @translated
    def request_cancel(self, owner: str, answer_id: str) -> bool:
        """Mark a running answer for its worker to stop (webapp/answers/recording.py)."""
        with self.engine.begin() as connection:
            result = connection.execute(
                ANSWERS.update()
                .where(
                    ANSWERS.c.id == answer_id,
                    ANSWERS.c.owner == owner,
                    ANSWERS.c.outcome == "pending",
                )
                .values(outcome=CANCELLING)
            )
            return bool(result.rowcount)

    @translated
    def mark_followed(self, answer_id: str) -> None:
        """A reader follows the running answer through its row, from another worker."""
        with self.engine.begin() as connection:
            connection.execute(
                ANSWERS.update()
                .where(ANSWERS.c.id == answer_id, ANSWERS.c.outcome == "pending")
                .values(followed_at=now())
            )

    @translated
    def followed_within(self, answer_id: str, seconds: float) -> bool:
        """Whether a reader on another worker followed the answer in the last `seconds`."""
        with self.engine.connect() as connection:
            at = connection.scalar(select(ANSWERS.c.followed_at).where(ANSWERS.c.id == answer_id))
        return at is not None and (now() - at).total_seconds() <= seconds

    @translated
    def cancel_requested(self) -> list[str]:
        """The answers whose Stop reached another worker (any owner's, any worker's):
        each worker acts on those it runs."""
        with self.engine.connect() as connection:
            return list(connection.scalars(select(ANSWERS.c.id).where(_IS_CANCELLING)))

    @translated
    def reopen(self, owner: str, answer_id: str) -> None:
        """Mark an answer as being continued (pending again) until its recording ends."""
        with self._session() as session, session.begin():
            session.execute(
                update(AnswerRow)
                .where(AnswerRow.id == answer_id, AnswerRow.owner == owner)
                .values(outcome="pending", updated_at=now())
            )

    # Reading -----------------------------------------------------------------------

    @translated
    def renew(self, answer_ids: Collection[str]) -> None:
        """The lease of answers running in this worker: their rows are touched, so a
        reader anywhere can tell them from those of an instance that died."""
        with self.engine.begin() as connection:
            connection.execute(
                ANSWERS.update()
                .where(ANSWERS.c.id.in_(list(answer_ids)), ANSWERS.c.outcome.in_(_RUNNING))
                .values(updated_at=now())
            )

    @translated
    def get(self, owner: str, answer_id: str) -> StoredAnswer | None:
        with self._session() as session:
            row = session.scalar(
                select(AnswerRow).where(AnswerRow.id == answer_id, AnswerRow.owner == owner)
            )
            if row is None:
                return None
            found = StoredAnswer.of(row)
        return self._interrupted_if_abandoned(found)

    @translated
    def keep_interrupted_text(self, answer_id: str, text: str) -> None:
        """An interrupted answer's text as its readers had it (Redis holds more than
        its row's last save): kept when longer than the row's."""
        with self.engine.begin() as connection:
            connection.execute(
                ANSWERS.update()
                .where(
                    ANSWERS.c.id == answer_id,
                    ANSWERS.c.outcome == INTERRUPTED,
                    func.length(ANSWERS.c.text) < len(text),
                )
                .values(text=storable(text))
            )

    def _interrupted_if_abandoned(self, answer: StoredAnswer) -> StoredAnswer:
        """A running answer whose lease ran out is marked interrupted (once, whoever
        reads it first: the update holds only while the row is still stale)."""
        if answer.outcome not in _RUNNING:
            return answer
        stale = now() - timedelta(seconds=self.lease)
        if answer.updated_at >= stale:
            return answer
        with self.engine.begin() as connection:
            connection.execute(
                ANSWERS.update()
                .where(
                    ANSWERS.c.id == answer.id,
                    ANSWERS.c.outcome.in_(_RUNNING),
                    ANSWERS.c.updated_at < stale,
                )
                .values(outcome=INTERRUPTED)
            )
            outcome = connection.scalar(select(ANSWERS.c.outcome).where(ANSWERS.c.id == answer.id))
        return dataclasses.replace(answer, outcome=outcome or INTERRUPTED)


def main(argv: list[str] | None = None) -> None:
    """`python -m webapp.answers.store upgrade`: migrate now (Heroku's release phase)."""
    import argparse

    from webapp.config import Config

    parser = argparse.ArgumentParser(description="The history database.")
    parser.add_argument("command", choices=("upgrade",))
    parser.parse_args(argv)
    config = Config.from_env()
    store = Store.open(config.database, migrate=True)
    store.close()
    print("history database is up to date")


if __name__ == "__main__":
    main()
