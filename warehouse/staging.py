"""Staging Parquet parts and the exactly-once chunk commit.

A chunk's outputs are written as Parquet parts (temp name, fsync, rename: a killed writer leaves
only a temp file, never a footer-less part under a final name), then committed to the warehouse in
one transaction keyed by (run, stage, chunk) together with the chunk's work-ledger rows.
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import duckdb
import pandas as pd

from warehouse import ledger
from warehouse.publish import fsync_path, mark_changed

STAGING_DIR = "staging"
# Tables a chunk may write, with the natural key that one row per key is kept on.
TABLE_KEYS = {
    "item_keywords": ("movie_id",),
    "user_preferences": ("user_id",),
    "preference_embeddings": ("user_id",),
    "generations": ("user_id", "target_movie_id"),
    "scores": ("user_id", "target_movie_id"),
}
_crash_counts: dict[str, int] = {}


def crash_point(point: str) -> None:
    """Test hook: with PMG_TEST_CRASH_AT=<point> (and PMG_TEST_CRASH_AFTER=n, default 1) die like kill -9."""
    if os.environ.get("PMG_TEST_CRASH_AT") != point:
        return
    _crash_counts[point] = _crash_counts.get(point, 0) + 1
    if _crash_counts[point] >= int(os.environ.get("PMG_TEST_CRASH_AFTER", "1")):
        os._exit(137)


def run_dir(root: Path, run_id: str) -> Path:
    return Path(root) / STAGING_DIR / run_id


def part_path(root: Path, run_id: str, stage: str, chunk: int, name: str) -> Path:
    return run_dir(root, run_id) / stage / f"chunk-{chunk:05d}" / f"{name}.parquet"


def write_parquet(path: Path, rows: list[dict] | pd.DataFrame, columns: dict[str, str]) -> Path:
    """Write rows to `path` atomically (temp name, fsync, rename, fsync dir).

    Args:
        columns: column name -> DuckDB type; the part has exactly these columns, cast.
    """
    frame = rows if isinstance(rows, pd.DataFrame) else pd.DataFrame(list(rows), columns=list(columns), dtype=object)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".tmp-{path.name}.{os.getpid()}")
    select = ", ".join(f'CAST("{c}" AS {t}) AS "{c}"' for c, t in columns.items())
    con = duckdb.connect()
    try:
        con.register("frame", frame)
        con.execute(f"COPY (SELECT {select} FROM frame) TO '{_quote(tmp)}' (FORMAT parquet)")
    finally:
        con.close()
    with open(tmp, "rb+") as f:
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fsync_path(path.parent)
    return path


def read_parquet(path: Path, where: str = "", params: list | None = None) -> list[dict]:
    """Rows of a staged Parquet file as dicts (`where` is a fixed SQL condition with ? params)."""
    con = duckdb.connect()
    try:
        q = f"SELECT * FROM read_parquet('{_quote(path)}')" + (f" WHERE {where}" if where else "")
        cur = con.execute(q, params or [])
        names = [d[0] for d in cur.description]
        return [dict(zip(names, r)) for r in cur.fetchall()]
    finally:
        con.close()


def _quote(path: Path) -> str:
    return str(path).replace("'", "''")


def commit_chunk(con, run_id: str, stage: str, chunk: int, parts: dict[str, Path],
                 outcome: pd.DataFrame, clear: tuple[str, ...] = ()) -> bool:
    """Commit one chunk exactly once; returns False if (run, stage, chunk) was already committed.

    Args:
        parts: table name -> staged Parquet part; its rows replace rows with the same key.
        outcome: the chunk's ledger results (see ledger.outcome_frame).
        clear: tables whose rows with the keys of the first part are deleted too (stale dependents).
    """
    for name in (*parts, *clear):
        if name not in TABLE_KEYS:
            raise ValueError(f"table {name!r} is not a pipeline output; choose one of {sorted(TABLE_KEYS)}")
    con.execute("BEGIN TRANSACTION")
    try:
        done = con.execute("SELECT count(*) FROM chunk_commits WHERE run_id = ? AND stage = ? AND chunk = ?",
                           [run_id, stage, chunk]).fetchall()[0][0]
        if done:
            con.execute("ROLLBACK")
            return False
        written = 0
        for i, (name, path) in enumerate(parts.items()):
            written += _replace_rows(con, name, path, clear if i == 0 else ())
        ledger.record(con, stage, run_id, chunk, outcome)
        mark_changed(con, [*parts, *clear, "work_ledger", "chunk_commits"])
        con.execute("INSERT INTO chunk_commits VALUES (?, ?, ?, ?, now()::TIMESTAMP)", [run_id, stage, chunk, written])
        crash_point("mid-commit")
        crash_point(f"mid-commit:{stage}")
        con.execute("COMMIT")
    except BaseException:
        con.execute("ROLLBACK")
        raise
    return True


def _replace_rows(con, name: str, path: Path, clear: tuple[str, ...]) -> int:
    con.execute(f"CREATE OR REPLACE TEMP TABLE incoming AS SELECT * FROM read_parquet('{_quote(path)}')")
    n = con.execute("SELECT count(*) FROM incoming").fetchall()[0][0]
    keys = TABLE_KEYS[name]
    on = " AND ".join(f"t.{k} = i.{k}" for k in keys)  # identifiers come from TABLE_KEYS only
    for table in (name, *clear):
        con.execute(f"DELETE FROM {table} AS t WHERE EXISTS (SELECT 1 FROM incoming AS i WHERE {on})")
    con.execute(f"INSERT INTO {name} BY NAME SELECT * FROM incoming")
    con.execute("DROP TABLE incoming")
    return n


def remove_run(root: Path, run_id: str) -> None:
    """Drop a run's staging directory once its chunks are committed (or the run is abandoned)."""
    shutil.rmtree(run_dir(root, run_id), ignore_errors=True)


def remove_stale(root: Path, keep: set[str] = frozenset()) -> int:
    """Delete staging directories of runs not in `keep` (left by killed runs); returns how many."""
    base = Path(root) / STAGING_DIR
    if not base.exists():
        return 0
    stale = [p for p in base.iterdir() if p.name not in keep]
    for p in stale:
        shutil.rmtree(p, ignore_errors=True)
    return len(stale)
