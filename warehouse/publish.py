"""Publish committed tables as immutable Parquet snapshots plus a catalog of views readers open.

A snapshot is written under a temporary name, fsynced and renamed, so no reader ever sees a file
without its footer. The catalog (views over the current snapshots, plus the writer's own views) is
rebuilt under a temporary name and renamed over catalog.duckdb: a reader sees either the old or the
new set of tables, never a mix. Superseded snapshots are kept for RETENTION_S so open readers finish.
"""
from __future__ import annotations

import logging
import os
import time
import uuid
from datetime import datetime, timezone
from pathlib import Path

import duckdb

from warehouse.errors import WarehouseError

CATALOG = "catalog.duckdb"
PUBLISHED = "published"
RETENTION_S = 3600.0
log = logging.getLogger(__name__)


def utcnow() -> datetime:
    return datetime.now(timezone.utc).replace(tzinfo=None)


def quote_ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def quote_literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def publishable_tables(con: duckdb.DuckDBPyConnection) -> list[str]:
    """Base tables of the warehouse that readers see (internal `_name` tables are not published)."""
    rows = con.execute(
        "select table_name from duckdb_tables() where database_name = current_database()"
        " and schema_name = 'main' and not temporary and not starts_with(table_name, '_') order by 1").fetchall()
    return [r[0] for r in rows]


def fingerprint(con: duckdb.DuckDBPyConnection, table: str) -> str:
    """Cheap content fingerprint (row count + order-independent hash sum) to skip unchanged tables."""
    count, total = con.execute(f"select count(*), coalesce(sum(hash(t)), 0) from {quote_ident(table)} t").fetchone()
    return f"{count}:{total}"


def fsync_path(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_snapshot(con: duckdb.DuckDBPyConnection, table: str, directory: Path) -> Path:
    """COPY one table to directory/<table>-<ns>.parquet atomically (temp name, fsync, rename)."""
    directory.mkdir(parents=True, exist_ok=True)
    final = directory / f"{table}-{time.time_ns()}.parquet"
    tmp = directory / f".tmp-{uuid.uuid4().hex}.parquet"
    con.execute(f"copy (select * from {quote_ident(table)}) to {quote_literal(str(tmp))} (format parquet)")
    fsync_path(tmp)
    os.replace(tmp, final)
    fsync_path(directory)
    return final


def publish(con: duckdb.DuckDBPyConnection, root: Path | str, tables: list[str] | None = None) -> list[str]:
    """Publish committed tables (default: all) for readers; only changed tables are re-exported.

    Call it after COMMIT, outside any open transaction (it runs its own small ones). Returns the names
    whose snapshot was rewritten. The catalog is rebuilt every time (it holds only views).
    """
    root = Path(root).resolve()
    existing = publishable_tables(con)
    names = existing if tables is None else list(dict.fromkeys(tables))
    unknown = sorted(set(names) - set(existing))
    if unknown:
        raise WarehouseError(f"cannot publish unknown table(s) {', '.join(unknown)}; publishable: {', '.join(existing)}")
    current = dict(con.execute("select table_name, fingerprint from _published").fetchall())
    paths = dict(con.execute("select table_name, path from _published").fetchall())
    written = []
    for table in names:
        fp = fingerprint(con, table)
        snapshot = Path(paths.get(table, ""))
        # A copied or moved warehouse must not keep reading the original's files.
        if current.get(table) == fp and snapshot.is_relative_to(root / PUBLISHED) and snapshot.exists():
            continue
        written.append((table, str(write_snapshot(con, table, root / PUBLISHED / table)), fp))
    if written:  # one transaction (one fsync) records every new snapshot
        now = utcnow()
        con.execute("begin transaction")
        for table, path, fp in written:
            if table in paths:
                con.execute("insert into _superseded values (?, ?)", [paths[table], now])
            con.execute("delete from _published where table_name = ?", [table])
            con.execute("insert into _published values (?, ?, ?, ?, ?)", [table, path, fp, int(fp.split(":")[0]), now])
        con.execute("commit")
    build_catalog(con, root)
    # only now, with the new catalog in place, are these tables no longer pending (kill-safe order)
    if tables is None:
        con.execute("delete from _publish_pending")
    else:
        con.execute("delete from _publish_pending where list_contains(?, table_name)", [names])
    collect_garbage(con, root)
    return [table for table, _, _ in written]


def build_catalog(con: duckdb.DuckDBPyConnection, root: Path) -> None:
    """Write views over the published snapshots (and the writer's views) to a new catalog, then swap it in."""
    tmp = root / f".catalog-{uuid.uuid4().hex}.duckdb"
    cat = duckdb.connect(str(tmp))
    try:
        live = set(publishable_tables(con))  # a table dropped by a migration disappears for readers too
        for table, path in con.execute("select table_name, path from _published order by 1").fetchall():
            if table not in live:
                continue
            cat.execute(f"create view {quote_ident(table)} as select * from read_parquet({quote_literal(path)})")
        create_views(cat, writer_views(con))
    finally:
        cat.close()
    fsync_path(tmp)
    os.replace(tmp, root / CATALOG)
    fsync_path(root)
    con.execute("create table if not exists _catalog (root varchar, built_at timestamp)")
    con.execute("delete from _catalog")
    con.execute("insert into _catalog values (?, ?)", [str(root), utcnow()])


def writer_views(con: duckdb.DuckDBPyConnection) -> list[tuple[str, str]]:
    return con.execute(
        "select view_name, sql from duckdb_views() where database_name = current_database()"
        " and schema_name = 'main' and not internal and not temporary order by 1").fetchall()


def create_views(cat: duckdb.DuckDBPyConnection, views: list[tuple[str, str]]) -> None:
    """Recreate views in dependency order (retry until no progress); skip ones that cannot bind."""
    pending = list(views)
    while pending:
        failed = []
        for name, sql in pending:
            try:
                cat.execute(sql)
            except duckdb.Error:
                failed.append((name, sql))
        if len(failed) == len(pending):
            log.warning("views not published (they use unpublished tables): %s", ", ".join(n for n, _ in failed))
            return
        pending = failed


def catalog_is_current(con: duckdb.DuckDBPyConnection, root: Path) -> bool:
    """True when root/catalog.duckdb exists and was built for this root directory."""
    if not (root / CATALOG).exists():
        return False
    exists = con.execute("select count(*) from duckdb_tables() where table_name = '_catalog'"
                         " and database_name = current_database()").fetchone()[0]
    if not exists:
        return False
    row = con.execute("select root from _catalog").fetchone()
    return row is not None and row[0] == str(root)


def mark_changed(con: duckdb.DuckDBPyConnection, tables: list[str]) -> None:
    """Record (inside the caller's transaction) that tables changed, so a crash before publish is repaired."""
    con.execute("insert into _publish_pending select unnest(?::varchar[])", [list(tables)])


def publish_pending(con: duckdb.DuckDBPyConnection, root: Path) -> list[str]:
    """Publish tables a previous writer committed but did not publish (e.g. it was killed)."""
    names = [r[0] for r in con.execute("select distinct table_name from _publish_pending order by 1").fetchall()]
    existing = set(publishable_tables(con))
    return publish(con, root, [n for n in names if n in existing]) if names else []


def collect_garbage(con: duckdb.DuckDBPyConnection, root: Path, retention_s: float = RETENTION_S) -> None:
    """Delete snapshots superseded more than retention_s ago and stale temporary files."""
    now = utcnow()
    live = {r[0] for r in con.execute("select path from _published").fetchall()}
    old = con.execute("select path from _superseded where epoch(? - superseded_at) > ?", [now, retention_s]).fetchall()
    for (path,) in old:
        if path not in live:
            Path(path).unlink(missing_ok=True)
    con.execute("delete from _superseded where epoch(? - superseded_at) > ?", [now, retention_s])
    cutoff = time.time() - retention_s
    known = live | {r[0] for r in con.execute("select path from _superseded").fetchall()}
    # temp files and snapshots never recorded (a publish killed mid-way), once old enough
    for stale in [*root.glob(".catalog-*.duckdb*"), *(root / PUBLISHED).glob("*/*.parquet")]:
        if str(stale) not in known and stale.stat().st_mtime < cutoff:
            stale.unlink(missing_ok=True)
