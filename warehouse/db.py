"""Every DuckDB connection of the project: one writer at a time, read-only readers that never wait for it.

Layout of a warehouse directory ROOT:
    warehouse.duckdb     the system of record; only the process holding writer.lock opens it
    writer.lock          fcntl lock + the holder's pid
    published/<table>/   immutable Parquet snapshots of committed tables (see warehouse.publish)
    catalog.duckdb       views over the current snapshots; what readers (`pmg sql`) open

DuckDB lets only one process open a database file while it is written, even read-only, so readers
open the small catalog instead, locked down (no file access outside published/, no settings changes).
"""
from __future__ import annotations

import contextlib
import fcntl
import os
import threading
import time
from pathlib import Path
from typing import Iterator

import duckdb

from warehouse.errors import WarehouseError
from warehouse.migrate import apply_migrations, register_schema_dir  # noqa: F401  (re-exported)
from warehouse.publish import (CATALOG, PUBLISHED, catalog_is_current, mark_changed, publish,  # noqa: F401
                               publish_pending, publishable_tables)

DB_FILE = "warehouse.duckdb"
LOCK_FILE = "writer.lock"
# Statement types a reader may run; everything else is refused before DuckDB sees it.
READ_STATEMENTS = {"SELECT", "EXPLAIN"}
_HELD: set[tuple[str, int]] = set()  # (root, thread) pairs holding the writer lock in this process


@contextlib.contextmanager
def writer_lock(root: Path, timeout_s: float = 60) -> Iterator[None]:
    """Hold root/writer.lock exclusively; wait up to timeout_s for another pmg process to finish."""
    key = (str(root), threading.get_ident())
    if key in _HELD:
        raise RuntimeError(f"this thread already holds the writer connection to {root}; reuse it instead of"
                           " opening a second one")
    if root.exists() and not root.is_dir():
        raise WarehouseError(f"the warehouse {root} is a file; --warehouse (or PMG_WAREHOUSE) names a directory")
    root.mkdir(parents=True, exist_ok=True)
    fd = os.open(root / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
                    raise RuntimeError(
                        f"another pmg process is writing to {root} (pid {holder}); wait for it to finish"
                        f" or stop it, then re-run (waited {timeout_s:g} s)") from None
                time.sleep(0.1)
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        _HELD.add(key)
        try:
            yield
        finally:
            _HELD.discard(key)
    finally:
        os.close(fd)  # closing the descriptor releases the flock


@contextlib.contextmanager
def connect_writer(root: Path | str, timeout_s: float = 60) -> Iterator[duckdb.DuckDBPyConnection]:
    """The one read-write connection to root/warehouse.duckdb, migrated and publish-consistent.

    Creates root if needed and applies pending migrations. Tables marked with `mark_changed(con, [...])`
    (inside the writing transaction) are published when the block exits normally, or by the next writer
    if this process dies first; `publish(con, root, [...])` publishes earlier, e.g. after each chunk.
    """
    root = Path(root).resolve()
    with writer_lock(root, timeout_s):
        con = duckdb.connect(str(root / DB_FILE), config={"autoinstall_known_extensions": False})
        try:
            applied = apply_migrations(con)
            if applied or not catalog_is_current(con, root):
                mark_changed(con, publishable_tables(con))   # new tables or a moved root: published on exit
            else:
                publish_pending(con, root)                   # a previous writer died before publishing
            yield con
            publish_pending(con, root)                       # whatever this session marked changed
        finally:
            con.close()


@contextlib.contextmanager
def connect_reader(root: Path | str) -> Iterator[duckdb.DuckDBPyConnection]:
    """A locked-down read-only connection to the published catalog (works while a writer runs)."""
    root = Path(root).resolve()
    catalog = root / CATALOG
    if not catalog.exists():
        raise WarehouseError(f"no warehouse at {root}; run `pmg ingest SOURCE` (or `pmg demo`) first,"
                             " or pass --warehouse DIR")
    con = duckdb.connect(str(catalog), read_only=True, config={
        "autoinstall_known_extensions": False, "autoload_known_extensions": False,
        "allow_community_extensions": False})
    try:
        # allowed_directories can only be set once the database is started, hence SET before the lock.
        con.execute("set allowed_directories = [?]", [str(root / PUBLISHED) + os.sep])
        con.execute("set enable_external_access = false")
        con.execute("set lock_configuration = true")
        yield con
    finally:
        con.close()


def check_read_only(con: duckdb.DuckDBPyConnection, sql: str) -> None:
    """Refuse anything but one SELECT/EXPLAIN statement, with a clear sentence."""
    try:
        statements = con.extract_statements(sql)
    except duckdb.Error as e:
        raise WarehouseError(f"could not parse the query: {' '.join(str(e).split())}") from None
    if len(statements) != 1:
        raise WarehouseError(f"pmg sql runs exactly one statement, got {len(statements)}")
    kind = statements[0].type.name
    if kind not in READ_STATEMENTS:
        raise WarehouseError(f"pmg sql is read-only: {kind} statements are not allowed, only SELECT queries")


def read_query(con: duckdb.DuckDBPyConnection, sql: str, params=None) -> tuple[list[str], list[tuple]]:
    """Run one checked read-only query on a reader connection; returns (column names, rows)."""
    check_read_only(con, sql)
    try:
        rel = con.sql(sql, params=params) if params else con.sql(sql)
        return list(rel.columns), rel.fetchall()
    except duckdb.PermissionException as e:
        raise WarehouseError(f"refused: pmg sql cannot read or write files, attach databases or load extensions"
                             f" ({' '.join(str(e).split())})") from None
    except duckdb.Error as e:
        message = " ".join(str(e).split())
        if "configuration has been locked" in message or "read-only mode" in message:
            raise WarehouseError(f"refused: pmg sql is read-only ({message})") from None
        raise WarehouseError(f"query failed: {message}") from None


@contextlib.contextmanager
def transaction(con: duckdb.DuckDBPyConnection) -> Iterator[duckdb.DuckDBPyConnection]:
    """BEGIN … COMMIT on the writer; any error rolls back and propagates, so the connection stays usable."""
    con.execute("BEGIN TRANSACTION")
    try:
        yield con
    except BaseException:
        con.execute("ROLLBACK")
        raise
    con.execute("COMMIT")


def rollback_open(con: duckdb.DuckDBPyConnection) -> None:
    """Roll back a transaction left open by an interrupted caller (no-op when none is open)."""
    try:
        con.execute("ROLLBACK")
    except duckdb.TransactionException:
        pass  # nothing was open
