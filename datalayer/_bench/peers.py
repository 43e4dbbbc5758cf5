"""Peers for ``datalayer bench``: the accounts primary-key lookup through other libraries.

Each peer reads the row the raw baseline reads (``SELECT id, name, status,
created_at, updated_at, deleted_at FROM accounts WHERE id = …``) the way that
library's documentation does it, on a pool of its own. The libraries come with
the ``bench`` extra and are imported only here, inside functions: datalayer
imports without them.
"""

# No `from __future__ import annotations`: SQLAlchemy reads the ORM class's
# `Mapped[...]` annotations at mapping time, and that class is defined inside a
# function (the import is lazy), where string annotations cannot be resolved.
import importlib.util
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, cast

from psycopg.conninfo import make_conninfo

from .._conninfo import conninfo_params

if TYPE_CHECKING:
    import psycopg
    from sqlalchemy.engine import URL

__all__ = ["PEER_LIBRARIES", "Peer", "available_peers", "missing_peers"]

# Each peer and the module it needs (all three come with `pip install 'datalayer[bench]'`).
PEER_LIBRARIES: dict[str, str] = {
    "sqlalchemy_core_pk_lookup": "sqlalchemy",
    "sqlalchemy_orm_pk_lookup": "sqlalchemy",
    "aiosql_pk_lookup": "aiosql",
}

_AIOSQL_SQL = """
-- name: get_account(id)^
-- The account with this id, or None.
SELECT id, name, status, created_at, updated_at, deleted_at FROM accounts WHERE id = :id;
"""


@dataclass
class Peer:
    """A named lookup to time, and how to release what it holds (engine or pool)."""

    name: str
    call: Callable[[], object]
    close: Callable[[], None]


def missing_peers() -> list[str]:
    """Names of the peers whose library is not installed, in ``PEER_LIBRARIES`` order."""
    return [
        name for name, module in PEER_LIBRARIES.items() if importlib.util.find_spec(module) is None
    ]


def available_peers(database_url: str, account_id: int, pool_size: int = 4) -> list[Peer]:
    """A ready peer for each installed library, each reading account ``account_id``.

    ``database_url`` is a ``postgresql://`` URL or a ``key=value`` conninfo
    string. Every peer opens its own pool of ``pool_size`` connections, named
    after it in ``application_name``; call ``close()`` on each when done.
    Peers whose library is missing are left out (see ``missing_peers()``).
    """
    missing = set(missing_peers())
    peers: list[Peer] = []
    if "sqlalchemy_core_pk_lookup" not in missing:
        peers.append(_sqlalchemy_core(database_url, account_id, pool_size))
    if "sqlalchemy_orm_pk_lookup" not in missing:
        peers.append(_sqlalchemy_orm(database_url, account_id, pool_size))
    if "aiosql_pk_lookup" not in missing:
        peers.append(_aiosql(database_url, account_id, pool_size))
    return peers


def _sqlalchemy_url(database_url: str, application_name: str) -> "URL":
    """The psycopg 3 dialect's URL for ``database_url`` (URL or conninfo alike)."""
    from sqlalchemy.engine import URL

    params = conninfo_params(database_url)
    port = params.pop("port", None)
    return URL.create(
        "postgresql+psycopg",
        username=params.pop("user", None),
        password=params.pop("password", None),
        host=params.pop("host", None),
        port=int(port) if port else None,
        database=params.pop("dbname", None),
        query={**params, "application_name": application_name},  # the rest go to connect()
    )


def _sqlalchemy_core(database_url: str, account_id: int, pool_size: int) -> Peer:
    from sqlalchemy import (
        BigInteger,
        Column,
        DateTime,
        MetaData,
        Table,
        Text,
        create_engine,
        select,
    )

    name = "sqlalchemy_core_pk_lookup"
    accounts = Table(
        "accounts",
        MetaData(),
        Column("id", BigInteger, primary_key=True),
        Column("name", Text, nullable=False),
        Column("status", Text, nullable=False),
        Column("created_at", DateTime(timezone=True), nullable=False),
        Column("updated_at", DateTime(timezone=True), nullable=False),
        Column("deleted_at", DateTime(timezone=True)),
    )
    engine = create_engine(
        _sqlalchemy_url(database_url, f"datalayer-bench-{name}"),
        pool_size=pool_size,
        max_overflow=0,
    )
    stmt = select(accounts).where(accounts.c.id == account_id)

    def call() -> object:
        with engine.connect() as conn:
            return conn.execute(stmt).one()

    return Peer(name, call, engine.dispose)


def _sqlalchemy_orm(database_url: str, account_id: int, pool_size: int) -> Peer:
    from datetime import datetime

    from sqlalchemy import BigInteger, DateTime, create_engine
    from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

    class Base(DeclarativeBase):
        pass

    class Account(Base):
        __tablename__ = "accounts"

        id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
        name: Mapped[str]
        status: Mapped[str]
        created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
        updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
        deleted_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))

    name = "sqlalchemy_orm_pk_lookup"
    engine = create_engine(
        _sqlalchemy_url(database_url, f"datalayer-bench-{name}"),
        pool_size=pool_size,
        max_overflow=0,
    )

    def call() -> object:
        # A new Session per call, as a web request has: no identity map carried over.
        with Session(engine) as session:
            return session.get(Account, account_id)

    return Peer(name, call, engine.dispose)


class _AccountQueries(Protocol):
    """The one query aiosql builds from ``_AIOSQL_SQL`` (aiosql's methods are untyped)."""

    def get_account(
        self, conn: "psycopg.Connection[Any]", *, id: int
    ) -> tuple[Any, ...] | None: ...


def _aiosql(database_url: str, account_id: int, pool_size: int) -> Peer:
    import aiosql
    from psycopg_pool import ConnectionPool

    name = "aiosql_pk_lookup"
    # "psycopg" is aiosql's synchronous adapter for psycopg 3 ("apsycopg" the async one).
    queries = cast("_AccountQueries", aiosql.from_str(_AIOSQL_SQL, "psycopg"))
    pool: ConnectionPool[psycopg.Connection[Any]] = ConnectionPool(
        make_conninfo(database_url, application_name=f"datalayer-bench-{name}"),
        min_size=pool_size,
        max_size=pool_size,
        kwargs={"autocommit": True},
        open=True,
        name=name,
    )
    pool.wait()

    def call() -> object:
        with pool.connection() as conn:
            return queries.get_account(conn, id=account_id)

    return Peer(name, call, pool.close)
