"""The user registry and the append-only query audit log, on SQLAlchemy 2.

SQLite (WAL mode) is the embedded default; PostgreSQL works by URL
(``postgresql+psycopg://user:pass@host/db``). Tables are made on first open and later schema changes
run as numbered migration steps recorded in ``schema_version`` (see :data:`MIGRATIONS`).
"""

from __future__ import annotations

import json
import logging
import random
import secrets
import threading
import unicodedata
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from sqlalchemy import (
    Connection,
    DateTime,
    Float,
    Integer,
    String,
    create_engine,
    event,
    func,
    inspect,
    select,
    text,
)
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

from activedaemon.identity import ID_LENGTH, PRINTABLE, random_user_id, validate_user_id

log = logging.getLogger(__name__)

ACTIVE, REVOKED = "active", "revoked"
NAME_MAX = 200
DETAIL_MAX = 255
CLIENT_MAX = 64


class Base(DeclarativeBase):
    pass


class User(Base):
    __tablename__ = "users"

    # The short user number: the registry's key, and the id field of authenticated tokens.
    number: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    user_id: Mapped[str] = mapped_column(String(8), unique=True, index=True)
    name: Mapped[str] = mapped_column(String(NAME_MAX), default="")
    status: Mapped[str] = mapped_column(String(8), default=ACTIVE)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    # Since version 4: a random salt per user (hex) that goes into the user's authenticated-id
    # key, so that a number issued again (registry reset, old backup) gets another key. NULL for
    # users registered before version 4 (their keys stay HMAC(master, number)).
    key_salt: Mapped[str | None] = mapped_column(String(64), nullable=True)


class QueryLog(Base):
    """One row per answered image, and one summary row per refused /v1/predict request."""

    __tablename__ = "query_log"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    time: Mapped[datetime] = mapped_column(DateTime(timezone=True), index=True)
    user_id: Mapped[str | None] = mapped_column(String(8), nullable=True, index=True)
    # ok, undecodable, unknown, revoked, bad_mac, bad_input, too_large, error, ... (see
    # serve.gate); rows written before schema version 3 may also say batch_rejected.
    outcome: Mapped[str] = mapped_column(String(16))
    latency_ms: Mapped[float] = mapped_column(Float)
    # Since version 3: how many images the row stands for (1 for an answered image, the whole
    # request for a refused one) and the refusal's detail (error code, outcomes per image).
    images: Mapped[int] = mapped_column(Integer, default=1, server_default=text("1"))
    detail: Mapped[str | None] = mapped_column(String(DETAIL_MAX), nullable=True)
    # Since version 6: how many requests the row stands for (a throttled client's refusals are
    # counted into one row per address and interval) and the client address of a refusal.
    requests: Mapped[int] = mapped_column(Integer, default=1, server_default=text("1"))
    client: Mapped[str | None] = mapped_column(String(CLIENT_MAX), nullable=True)


class ConsoleSessionRow(Base):
    """A signed-in console browser (since version 6): the SHA-256 of its session id (the id
    itself is only in the browser's cookie), its CSRF token, its times and one-shot messages."""

    __tablename__ = "console_sessions"

    sid_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    csrf: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    expires_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), index=True)
    last_seen: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    flash: Mapped[str] = mapped_column(String(4000), default="[]")


# -- migrations ---------------------------------------------------------------------------------
def _m1_tables(conn: Connection) -> None:
    Base.metadata.create_all(conn)


def _m2_append_only(conn: Connection) -> None:
    """Make query_log append-only in the database itself, not only in this library."""
    if conn.dialect.name == "sqlite":
        for op in ("UPDATE", "DELETE"):
            conn.execute(
                text(
                    f"CREATE TRIGGER IF NOT EXISTS query_log_no_{op.lower()} BEFORE {op} "
                    "ON query_log BEGIN SELECT RAISE(ABORT, 'query_log is append-only'); END"
                )
            )
    elif conn.dialect.name == "postgresql":
        conn.execute(
            text(
                "CREATE OR REPLACE FUNCTION query_log_append_only() RETURNS trigger AS $$ "
                "BEGIN RAISE EXCEPTION 'query_log is append-only'; END $$ LANGUAGE plpgsql"
            )
        )
        conn.execute(text("DROP TRIGGER IF EXISTS query_log_append_only ON query_log"))
        conn.execute(
            text(
                "CREATE TRIGGER query_log_append_only BEFORE UPDATE OR DELETE ON query_log "
                "FOR EACH STATEMENT EXECUTE FUNCTION query_log_append_only()"
            )
        )


def _add_columns(conn: Connection, table: str, columns: dict[str, str]) -> None:
    """ALTER TABLE ADD COLUMN for each missing column (a fresh database already has them: step 1
    creates the tables from the current models)."""
    have = {c["name"] for c in inspect(conn).get_columns(table)}
    for name, ddl in columns.items():
        if name not in have:
            conn.execute(text(f"ALTER TABLE {table} ADD COLUMN {name} {ddl}"))


def _m3_audit_summary(conn: Connection) -> None:
    """Refused requests get one summary row: how many images it stands for, and the detail."""
    _add_columns(
        conn,
        "query_log",
        {"images": "INTEGER NOT NULL DEFAULT 1", "detail": f"VARCHAR({DETAIL_MAX})"},
    )


def _m4_key_salts(conn: Connection) -> None:
    """A salt per user and a random key epoch per registry, both in the key derivation."""
    _add_columns(conn, "users", {"key_salt": "VARCHAR(64)"})
    conn.execute(
        text("CREATE TABLE IF NOT EXISTS registry_meta (name VARCHAR(32) PRIMARY KEY, "
             "value VARCHAR(200) NOT NULL)")
    )  # fmt: skip
    have = conn.execute(text("SELECT 1 FROM registry_meta WHERE name = 'key_epoch'")).first()
    if have is None:
        conn.execute(
            text("INSERT INTO registry_meta (name, value) VALUES ('key_epoch', :v)"),
            {"v": secrets.token_hex(16)},
        )


def _m5_audit_insert_only(conn: Connection) -> None:
    """Close what step 2 left open. SQLite: INSERT OR REPLACE deleted the old row without firing
    the DELETE trigger; an insert that names an existing row id is now refused. PostgreSQL:
    TRUNCATE is refused by a trigger too (insert-only grants for the service's own role, which
    must not own the tables, are :meth:`Registry.grant_service_role`)."""
    if conn.dialect.name == "sqlite":
        conn.execute(
            text(
                "CREATE TRIGGER IF NOT EXISTS query_log_no_replace BEFORE INSERT ON query_log "
                "WHEN EXISTS (SELECT 1 FROM query_log WHERE id = NEW.id) "
                "BEGIN SELECT RAISE(ABORT, 'query_log is append-only'); END"
            )
        )
    elif conn.dialect.name == "postgresql":
        conn.execute(text("DROP TRIGGER IF EXISTS query_log_no_truncate ON query_log"))
        conn.execute(
            text(
                "CREATE TRIGGER query_log_no_truncate BEFORE TRUNCATE ON query_log "
                "FOR EACH STATEMENT EXECUTE FUNCTION query_log_append_only()"
            )
        )


def _m6_summaries_and_sessions(conn: Connection) -> None:
    """Refusal rows record the client address and how many requests they stand for; console
    sessions live in the database (they survive restarts and span worker processes)."""
    _add_columns(
        conn,
        "query_log",
        {"requests": "INTEGER NOT NULL DEFAULT 1", "client": f"VARCHAR({CLIENT_MAX})"},
    )
    Base.metadata.create_all(conn, tables=[ConsoleSessionRow.__table__])


# Step i brings the schema from version i to i + 1; append new steps, never edit old ones.
MIGRATIONS: list[Callable[[Connection], None]] = [
    _m1_tables,
    _m2_append_only,
    _m3_audit_summary,
    _m4_key_salts,
    _m5_audit_insert_only,
    _m6_summaries_and_sessions,
]
SCHEMA_VERSION = len(MIGRATIONS)


def schema_version(conn: Connection) -> int:
    if not inspect(conn).has_table("schema_version"):  # a role without CREATE can still read
        conn.execute(text("CREATE TABLE schema_version (version INTEGER NOT NULL)"))
    row = conn.execute(text("SELECT max(version) FROM schema_version")).scalar()
    return int(row or 0)


def migrate(engine: Engine, migrations: Sequence[Callable[[Connection], None]] = MIGRATIONS) -> int:
    """Run the steps the database has not seen yet, each in its own transaction; the version."""
    with engine.begin() as conn:
        if conn.dialect.name == "postgresql":  # two servers starting at once migrate in turn
            conn.execute(text("SELECT pg_advisory_xact_lock(7460021)"))
        current = schema_version(conn)
        if current > len(migrations):
            raise RuntimeError(
                f"the database is at schema version {current}, newer than this activedaemon "
                f"({len(migrations)}); upgrade activedaemon"
            )
        for version in range(current, len(migrations)):
            migrations[version](conn)
            conn.execute(
                text("INSERT INTO schema_version (version) VALUES (:v)"), {"v": version + 1}
            )
            log.info("registry schema migrated to version %d", version + 1)
    return len(migrations)


# -- the registry -------------------------------------------------------------------------------
class UserExists(ValueError):
    """A user with this id already exists."""


class UserNotFound(KeyError):
    """No user with this id."""


@dataclass(frozen=True)
class UserInfo:
    user_id: str
    number: int
    name: str
    status: str
    created_at: datetime
    revoked_at: datetime | None
    key_salt: str | None = None  # hex; goes into the user's authenticated-id key (not shown)

    @property
    def active(self) -> bool:
        return self.status == ACTIVE

    def to_dict(self) -> dict:
        return {
            "user_id": self.user_id,
            "number": self.number,
            "name": self.name,
            "status": self.status,
            "created_at": self.created_at.isoformat(),
            "revoked_at": self.revoked_at.isoformat() if self.revoked_at else None,
        }


@dataclass(frozen=True)
class AuditRow:
    time: datetime
    user_id: str | None
    outcome: str
    latency_ms: float
    images: int = 1  # an answered image: 1; a refused request: all its images
    detail: str | None = None  # a refused request's error code and per-image outcomes
    requests: int = 1  # a summary of a throttled client's refusals: how many
    client: str | None = None  # a refusal's client address


def check_name(name: str) -> str:
    """A display name: at most NAME_MAX characters and no control characters (NUL, ESC, ...:
    PostgreSQL refuses NUL, and escape codes would reach the owner's terminal)."""
    if len(name) > NAME_MAX:
        raise ValueError(f"a name has at most {NAME_MAX} characters, got {len(name)}")
    bad = sorted({c for c in name if unicodedata.category(c) == "Cc"})
    if bad:
        raise ValueError(f"a name may not hold control characters; got {bad!r}")
    return name


def could_be_id(user_id: str) -> bool:
    """Whether ``user_id`` is a well-formed id at all (else no user has it: no query needed, and
    no NUL reaches the database)."""
    return len(user_id) == ID_LENGTH and all(c in PRINTABLE for c in user_id)


def _clean_detail(detail: str | None) -> str | None:
    if detail is None:
        return None
    return "".join(c if c in PRINTABLE else "?" for c in detail)[:DETAIL_MAX]


def _now() -> datetime:
    return datetime.now(timezone.utc)


def _aware(t: datetime | None) -> datetime | None:
    # SQLite stores no time zone; every time we write is UTC.
    return t.replace(tzinfo=timezone.utc) if t is not None and t.tzinfo is None else t


def _info(u: User) -> UserInfo:
    return UserInfo(
        u.user_id,
        u.number,
        u.name,
        u.status,
        _aware(u.created_at),
        _aware(u.revoked_at),
        u.key_salt,
    )


def sqlite_url(path: str | Path) -> str:
    return f"sqlite:///{Path(path).expanduser().resolve()}"


# -- read-only views of the audit log, for the owner's console (serve.console) ------------------
NO_USER = ""  # audit filter value: the rows that carry no user id (never a valid 8-character id)


@dataclass(frozen=True)
class UserActivity:
    """A user's audited images by outcome and the time of the last one."""

    usage: dict[str, int]
    last_query: datetime | None


def _utc(t: datetime) -> datetime:
    """A bound time in UTC: SQLite compares the stored UTC text, so every bound time is UTC too
    (a naive time is taken as UTC)."""
    return t.replace(tzinfo=timezone.utc) if t.tzinfo is None else t.astimezone(timezone.utc)


def _images():
    """How many images the matching rows stand for: the sum of ``images`` where the audit log
    has that column (a refused request's summary row counts all its images), else the rows."""
    images = getattr(QueryLog, "images", None)
    return func.coalesce(func.sum(images), 0) if images is not None else func.count()


def _audit_row(r: QueryLog) -> AuditRow:
    """An AuditRow with every field it declares that the row holds."""
    from dataclasses import fields

    values = {f.name: getattr(r, f.name) for f in fields(AuditRow) if hasattr(r, f.name)}
    return AuditRow(**{**values, "time": _aware(r.time)})


def _audit_where(stmt, user: str | None, outcome: str | None, since, until):
    if user == NO_USER:
        stmt = stmt.where(QueryLog.user_id.is_(None))
    elif user is not None:
        stmt = stmt.where(QueryLog.user_id == user)
    if outcome is not None:
        stmt = stmt.where(QueryLog.outcome == outcome)
    if since is not None:
        stmt = stmt.where(QueryLog.time >= _utc(since))
    if until is not None:
        stmt = stmt.where(QueryLog.time < _utc(until))
    return stmt


class AuditViews:
    """Queries the console pages make (part of :class:`Registry`; they only read)."""

    engine: Engine

    def audit_page(
        self,
        user: str | None = None,
        outcome: str | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
        offset: int = 0,
        limit: int = 50,
    ) -> tuple[list[AuditRow], int]:
        """Audit rows newest first, filtered (``user`` None: any, :data:`NO_USER`: rows with no
        id; ``since`` inclusive, ``until`` exclusive) and paged: (rows of the page, rows in all)."""
        if offset < 0 or limit < 1:
            raise ValueError("offset must be >= 0 and limit >= 1")
        with Session(self.engine) as s:
            count = select(func.count()).select_from(QueryLog)
            total = int(s.scalar(_audit_where(count, user, outcome, since, until)) or 0)
            page = _audit_where(select(QueryLog), user, outcome, since, until)
            rows = s.scalars(page.order_by(QueryLog.id.desc()).offset(offset).limit(limit)).all()
            return [_audit_row(r) for r in rows], total

    def audit_outcomes(self) -> list[str]:
        """Every outcome the audit log holds (whatever the service version that wrote it)."""
        with Session(self.engine) as s:
            return sorted(s.scalars(select(QueryLog.outcome).distinct()).all())

    def usage_over_time(
        self, edges: Sequence[datetime], user: str | None = None
    ) -> dict[str, list[int]]:
        """Audited images per outcome in each interval ``[edges[i], edges[i + 1])`` (increasing
        times), for one user (None: everyone, :data:`NO_USER`: images with no id). One query."""
        from sqlalchemy import case, literal_column

        edges = [_utc(e) for e in edges]
        if len(edges) < 2 or any(a >= b for a, b in zip(edges, edges[1:], strict=False)):
            raise ValueError("edges must be at least two increasing times")
        bucket = case(*[(QueryLog.time < e, i) for i, e in enumerate(edges[1:])]).label("bucket")
        stmt = _audit_where(
            select(bucket, QueryLog.outcome, _images()), user, None, edges[0], edges[-1]
        ).group_by(literal_column("bucket"), QueryLog.outcome)
        counts: dict[str, list[int]] = {}
        with Session(self.engine) as s:
            for i, outcome, n in s.execute(stmt):
                counts.setdefault(outcome, [0] * (len(edges) - 1))[int(i)] = int(n)
        return counts

    def user_activity(self) -> dict[str, UserActivity]:
        """Per user id seen in the audit log: images by outcome and the last one's time."""
        out: dict[str, UserActivity] = {}
        with Session(self.engine) as s:
            stmt = (
                select(QueryLog.user_id, QueryLog.outcome, _images(), func.max(QueryLog.time))
                .where(QueryLog.user_id.is_not(None))
                .group_by(QueryLog.user_id, QueryLog.outcome)
            )
            for uid, outcome, n, last in s.execute(stmt):
                prev = out.get(uid) or UserActivity({}, None)
                last = _aware(last)
                latest = max(t for t in (prev.last_query, last) if t is not None)
                out[uid] = UserActivity({**prev.usage, outcome: int(n)}, latest)
        return out


@dataclass(frozen=True)
class StoredSession:
    """A console session as the database holds it (the id itself is never stored)."""

    sid_hash: str
    csrf: str
    expires_at: datetime
    last_seen: datetime
    flash: list


class SessionStore:
    """Console sessions in the registry database (part of :class:`Registry`): every worker
    process and every restart sees the same sessions. Keyed by the SHA-256 of the session id."""

    engine: Engine

    def create_session(self, sid_hash: str, csrf: str, expires_at: datetime) -> None:
        """Store a new session, and drop the expired ones."""
        now = _now()
        with Session(self.engine) as s, s.begin():
            s.execute(ConsoleSessionRow.__table__.delete().where(
                ConsoleSessionRow.expires_at < now))  # fmt: skip
            s.add(ConsoleSessionRow(sid_hash=sid_hash, csrf=csrf, created_at=now,
                                    expires_at=expires_at, last_seen=now, flash="[]"))  # fmt: skip

    def get_session(self, sid_hash: str) -> StoredSession | None:
        with Session(self.engine) as s:
            row = s.get(ConsoleSessionRow, sid_hash)
            if row is None:
                return None
            return StoredSession(row.sid_hash, row.csrf, _aware(row.expires_at),
                                 _aware(row.last_seen), json.loads(row.flash or "[]"))  # fmt: skip

    def update_session(
        self, sid_hash: str, last_seen: datetime | None = None, flash: list | None = None
    ) -> None:
        values: dict = {}
        if last_seen is not None:
            values["last_seen"] = last_seen
        if flash is not None:
            values["flash"] = json.dumps(flash)[:4000]
        if values:
            with Session(self.engine) as s, s.begin():
                table = ConsoleSessionRow.__table__
                s.execute(table.update().where(table.c.sid_hash == sid_hash).values(**values))

    def drop_session(self, sid_hash: str) -> None:
        with Session(self.engine) as s, s.begin():
            s.execute(ConsoleSessionRow.__table__.delete().where(
                ConsoleSessionRow.sid_hash == sid_hash))  # fmt: skip


def _schema_guard(action: int, arg1, _arg2, _db, _trigger) -> int:
    """SQLite authorizer of the service's own connections, once migrated: no statement through
    them may drop, alter or add a table or trigger, nor write the schema directly (so the audit
    log's triggers stay; anyone who can write the file itself still can)."""
    import sqlite3

    denied = {
        sqlite3.SQLITE_DROP_TRIGGER, sqlite3.SQLITE_DROP_TEMP_TRIGGER,
        sqlite3.SQLITE_CREATE_TRIGGER, sqlite3.SQLITE_CREATE_TEMP_TRIGGER,
        sqlite3.SQLITE_DROP_TABLE, sqlite3.SQLITE_DROP_TEMP_TABLE, sqlite3.SQLITE_ALTER_TABLE,
    }  # fmt: skip
    if action in denied:
        return sqlite3.SQLITE_DENY
    if action == sqlite3.SQLITE_PRAGMA and str(arg1).lower() == "writable_schema":
        return sqlite3.SQLITE_DENY
    return sqlite3.SQLITE_OK


def _engine(url: str, synchronous: str = "FULL", guard: bool = False) -> Engine:
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite":
        return create_engine(url, pool_pre_ping=True)
    if parsed.database in (None, "", ":memory:"):
        raise ValueError("use a file for the SQLite registry (sqlite:///PATH), not :memory:")
    Path(parsed.database).expanduser().parent.mkdir(parents=True, exist_ok=True)
    engine = create_engine(url, connect_args={"timeout": 30})

    @event.listens_for(engine, "connect")
    def _pragmas(dbapi_conn, _record) -> None:  # every pooled connection
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")  # readers never block the writer
        cur.execute(f"PRAGMA synchronous={synchronous}")
        cur.execute("PRAGMA busy_timeout=30000")
        cur.close()
        if guard:
            dbapi_conn.set_authorizer(_schema_guard)

    return engine


class Registry(AuditViews, SessionStore):
    """Users (id, name, active / revoked) and the query audit log, in one SQL database."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.engine = _engine(url)  # users: each commit is on disk before the 2xx (fsync)
        self.version = migrate(self.engine)
        sqlite = self.engine.dialect.name == "sqlite"
        if sqlite:  # migrated: from now on no connection of ours may change the schema
            self.engine.dispose()
            self.engine = _engine(url, guard=True)
        # Audit rows: committed before the answer too, but without waiting for the disk. They
        # survive the service being killed; an OS crash or power cut can drop the last few
        # (SQLite WAL synchronous=NORMAL; PostgreSQL synchronous_commit=off). An fsync per query
        # would cap the service at the disk's fsync rate.
        self._audit_engine = _engine(url, "NORMAL", guard=True) if sqlite else self.engine
        self._lock = threading.Lock()  # serialises user creation (numbers, random ids)
        with self.engine.connect() as conn:
            epoch = conn.execute(text("SELECT value FROM registry_meta WHERE name = 'key_epoch'"))
            self.key_epoch = bytes.fromhex(epoch.scalar_one())  # random, made with the registry

    @property
    def dialect(self) -> str:
        return self.engine.dialect.name

    def grant_service_role(self, role: str) -> None:
        """PostgreSQL, run as the tables' owner: let ``role`` (an existing login role that owns
        nothing here) run the service and nothing more: read and add users, change their status,
        read and *append* audit rows. It cannot update, delete or truncate audit rows, nor drop
        or disable the triggers (only an owner can), nor change the schema."""
        if self.dialect != "postgresql":
            raise ValueError("roles and grants exist on PostgreSQL only")
        if not role.replace("_", "").isalnum():
            raise ValueError(f"a role name is letters, digits and _; got {role!r}")
        with self.engine.begin() as conn:
            schema = conn.execute(text("SELECT current_schema()")).scalar_one()
            for sql in (
                f'GRANT USAGE ON SCHEMA "{schema}" TO {role}',
                f"GRANT SELECT ON schema_version, registry_meta TO {role}",
                f"GRANT SELECT, INSERT, UPDATE ON users TO {role}",
                f"GRANT SELECT, INSERT ON query_log TO {role}",
                f"GRANT SELECT, INSERT, UPDATE, DELETE ON console_sessions TO {role}",
                f'GRANT USAGE ON ALL SEQUENCES IN SCHEMA "{schema}" TO {role}',
            ):
                conn.execute(text(sql))

    def close(self) -> None:
        self.engine.dispose()
        self._audit_engine.dispose()

    # -- users --------------------------------------------------------------------------------
    def add_user(
        self, user_id: str | None = None, name: str = "", rng: random.Random | None = None
    ) -> UserInfo:
        """Register ``user_id`` (a random alphanumeric id when None); UserExists if taken."""
        if user_id is not None:
            validate_user_id(user_id)
        check_name(name)
        rng = rng or random.SystemRandom()
        with self._lock:
            for _ in range(20):
                uid = user_id if user_id is not None else random_user_id(rng)
                try:
                    with Session(self.engine) as s, s.begin():
                        user = User(
                            user_id=uid,
                            name=name,
                            status=ACTIVE,
                            created_at=_now(),
                            key_salt=secrets.token_hex(16),
                        )
                        s.add(user)
                        s.flush()
                        info = _info(user)
                    return info
                except IntegrityError as e:
                    if user_id is not None:
                        raise UserExists(f"user {user_id!r} already exists") from e
        raise RuntimeError("could not draw an unused random user id in 20 tries")

    def get_user(self, user_id: str) -> UserInfo:
        if not could_be_id(user_id):
            raise UserNotFound(user_id)
        with Session(self.engine) as s:
            user = s.scalar(select(User).where(User.user_id == user_id))
            if user is None:
                raise UserNotFound(user_id)
            return _info(user)

    def users(self, user_ids: Iterable[str] = (), numbers: Iterable[int] = ()) -> list[UserInfo]:
        """The registered users among ``user_ids`` or ``numbers`` (one query for a batch)."""
        ids, nums = sorted(i for i in set(user_ids) if could_be_id(i)), sorted(set(numbers))
        if not ids and not nums:
            return []
        cond = User.user_id.in_(ids) if ids else User.number.in_(nums)
        with Session(self.engine) as s:
            return [_info(u) for u in s.scalars(select(User).where(cond))]

    def count_users(self) -> int:
        with Session(self.engine) as s:
            return int(s.scalar(select(func.count()).select_from(User)) or 0)

    def list_users(self, offset: int = 0, limit: int | None = None) -> list[UserInfo]:
        """Users by number; ``offset`` / ``limit`` page them."""
        stmt = select(User).order_by(User.number).offset(max(0, offset))
        if limit is not None:
            stmt = stmt.limit(limit)
        with Session(self.engine) as s:
            return [_info(u) for u in s.scalars(stmt)]

    def count_active_users(self) -> int:
        with Session(self.engine) as s:
            stmt = select(func.count()).select_from(User).where(User.status == ACTIVE)
            return int(s.scalar(stmt) or 0)

    def set_active(self, user_id: str, active: bool) -> UserInfo:
        """Revoke or re-activate; takes effect on the next query (nothing is cached)."""
        if not could_be_id(user_id):
            raise UserNotFound(user_id)
        with Session(self.engine) as s, s.begin():
            user = s.scalar(select(User).where(User.user_id == user_id).with_for_update())
            if user is None:
                raise UserNotFound(user_id)
            user.status = ACTIVE if active else REVOKED
            if active:
                user.revoked_at = None
            elif user.revoked_at is None:  # revoking twice keeps the first time
                user.revoked_at = _now()
            s.flush()
            return _info(user)

    # -- audit log ----------------------------------------------------------------------------
    def log_queries(self, rows: Iterable[tuple[str | None, str, float]]) -> None:
        """Append (user id or None, outcome, latency ms) rows, one per image, all stamped now."""
        self._append(
            {"user_id": u, "outcome": o, "latency_ms": float(ms), "images": 1, "detail": None,
             "requests": 1, "client": None}
            for u, o, ms in rows
        )  # fmt: skip

    def log_refusal(
        self,
        user_id: str | None,
        outcome: str,
        latency_ms: float,
        images: int,
        detail: str,
        client: str | None = None,
        requests: int = 1,
    ) -> None:
        """Append the one summary row of a refused request (``images`` it carried, ``detail``:
        error code and per-image outcomes; cut to DETAIL_MAX printable characters; ``client``:
        its address), or of ``requests`` refusals of one client counted together."""
        if user_id is not None and not could_be_id(user_id):
            user_id = None
        row = {"user_id": user_id, "outcome": outcome[:16], "latency_ms": float(latency_ms),
               "images": int(images), "detail": _clean_detail(detail),
               "client": _clean_detail(client)[:CLIENT_MAX] if client else None,
               "requests": int(requests)}  # fmt: skip
        self._append([row])

    def _append(self, rows: Iterable[dict]) -> None:
        now = _now()
        records = [{"time": now, **r} for r in rows]
        if records:
            with self._audit_engine.begin() as conn:
                if conn.dialect.name == "postgresql":
                    conn.execute(text("SET LOCAL synchronous_commit TO OFF"))
                conn.execute(QueryLog.__table__.insert(), records)

    def usage(self, user_id: str) -> dict[str, int]:
        """How many logged images of each outcome carried ``user_id`` (a refused request counts
        all its images under the id of its first refused image)."""
        if not could_be_id(user_id):
            return {}
        with Session(self.engine) as s:
            rows = s.execute(
                select(QueryLog.outcome, func.sum(QueryLog.images))
                .where(QueryLog.user_id == user_id)
                .group_by(QueryLog.outcome)
            ).all()
        return {outcome: int(n) for outcome, n in rows}

    def audit(self, limit: int = 100) -> list[AuditRow]:
        """The newest ``limit`` audit rows, newest first."""
        with Session(self.engine) as s:
            rows = s.scalars(select(QueryLog).order_by(QueryLog.id.desc()).limit(limit)).all()
            return [_audit_row(r) for r in rows]

    def count_audit(self) -> int:
        """How many audit rows there are."""
        with Session(self.engine) as s:
            return int(s.scalar(select(func.count()).select_from(QueryLog)) or 0)

    def count_refused_requests(self) -> int:
        """How many refused requests the audit log accounts for (a summary row counts all the
        refusals it stands for)."""
        stmt = select(func.coalesce(func.sum(QueryLog.requests), 0)).where(QueryLog.outcome != "ok")
        with Session(self.engine) as s:
            return int(s.scalar(stmt) or 0)
