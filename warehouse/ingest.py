"""Ingest a MovieLens directory or .zip (ml-latest-small ... ml-32m layout) into the warehouse.

Bulk path only: each file is parsed once by DuckDB `read_csv` with explicit types and rejects capture,
checked with set-based SQL, and merged by key. The whole ingest is one transaction, published to
readers after it commits; a killed ingest leaves the warehouse as it was. Every data line is either
loaded or recorded in `ingest_rejects` with its line number, raw text and reason.
"""
from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
import time
import zipfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import duckdb

from warehouse import queries
from warehouse.db import connect_writer, mark_changed
from warehouse.errors import WarehouseError
from warehouse.publish import utcnow

# Load order matters: ratings, tags and links are checked against the movies loaded before them.
HEADERS = {
    "movies.csv": "movieId,title,genres",
    "links.csv": "movieId,imdbId,tmdbId",
    "ratings.csv": "userId,movieId,rating,timestamp",
    "tags.csv": "userId,movieId,tag,timestamp",
}
# table -> (key columns, value columns); a row is "changed" when its values differ for the same key
KEYS = {
    "movies": (("movie_id",), ("title", "year", "genres")),
    "links": (("movie_id",), ("imdb_id", "tmdb_id")),
    "ratings": (("user_id", "movie_id"), ("rating", "rated_at")),
    "tags": (("user_id", "movie_id", "tag"), ("tagged_at",)),
}
PUBLISHED_TABLES = ["movies", "links", "ratings", "tags", "ingests", "ingest_files", "ingest_rejects", "user_changes"]
RAW_DELIMITER = "\x01"  # a byte MovieLens never contains: read each line whole


@dataclass(frozen=True)
class FileReport:
    rows_read: int
    rows_loaded: int
    rows_rejected: int
    sha256: str


@dataclass
class IngestReport:
    ingest_id: int
    source: str
    source_sha256: str
    files: dict[str, FileReport] = field(default_factory=dict)
    changed_users: list[int] = field(default_factory=list)
    skipped_same_source: bool = False
    seconds: float = 0.0

    @property
    def rows_read(self) -> int:
        return sum(f.rows_read for f in self.files.values())

    @property
    def rows_loaded(self) -> int:
        return sum(f.rows_loaded for f in self.files.values())

    @property
    def rows_rejected(self) -> int:
        return sum(f.rows_rejected for f in self.files.values())


def ingest(source: Path | str, root: Path | str) -> IngestReport:
    """Load a MovieLens directory or zip into the warehouse at root; re-ingesting the same data is a no-op."""
    started = time.perf_counter()
    source = Path(source)
    with source_files(source) as paths:
        for name, path in paths.items():
            check_header(name, path)
        digests = {name: file_sha256(path) for name, path in paths.items()}
        source_sha = hashlib.sha256("".join(f"{n}:{d}\n" for n, d in sorted(digests.items())).encode()).hexdigest()
        with connect_writer(root) as con:
            done = con.execute("select ingest_id from ingests where source_sha256 = ? order by ingest_id limit 1",
                               [source_sha]).fetchone()
            if done:
                return IngestReport(done[0], str(source), source_sha, skipped_same_source=True,
                                    seconds=time.perf_counter() - started)
            report = load(con, paths, str(source.resolve()), source_sha, digests)
            # load() marked its tables changed: connect_writer publishes them (one catalog swap) on exit
    report.seconds = time.perf_counter() - started
    return report


def load(con: duckdb.DuckDBPyConnection, paths: dict[str, Path], source: str, source_sha: str,
         digests: dict[str, str]) -> IngestReport:
    """All of one ingest in a single transaction; returns its report."""
    started_at = utcnow()
    # Staging is session-temporary and committed before the transaction starts: inside a transaction
    # DuckDB numbers new rows from 2^62, and the reject line mapping needs rowid = parsed-row position.
    try:
        queries.run(con, "ingest_prepare")
        for name, path in paths.items():
            queries.run(con, f"ingest_stage_{name.removesuffix('.csv')}", {"path": str(path)})
    except duckdb.Error as e:
        raise WarehouseError(f"could not read {source}: {' '.join(str(e).split())}") from e
    con.execute("begin transaction")
    try:
        ingest_id = con.execute("select coalesce(max(ingest_id), 0) + 1 from ingests").fetchone()[0]
        queries.run(con, "ingest_new_rows")
        changed: dict[str, str] = {}
        for name in HEADERS:
            table = name.removesuffix(".csv")
            queries.run(con, f"ingest_check_{table}")
            if table == "ratings" and queries.run(con, "ingest_sorted_ratings").fetchone()[0]:
                queries.run(con, "ingest_dups_ratings")
            changed[table] = upsert(con, table, ingest_id)
        queries.run(con, "ingest_structural_rejects", {"ingest_id": ingest_id})
        for name, path in paths.items():
            locate_semantic_rejects(con, name, path, ingest_id)
        files = {name: file_report(con, name, digests[name]) for name in paths}
        record(con, ingest_id, source, source_sha, files, started_at, changed)
        mark_changed(con, PUBLISHED_TABLES)
        _pause_for_tests()
        con.execute("commit")
    except BaseException as e:
        con.execute("rollback")
        if isinstance(e, duckdb.Error):
            raise WarehouseError(f"ingest of {source} failed and nothing was changed: {' '.join(str(e).split())}") from e
        raise
    users = [r[0] for r in con.execute("select user_id from user_changes where ingest_id = ? order by 1",
                                       [ingest_id]).fetchall()]
    return IngestReport(ingest_id, source, source_sha, files, users)


def upsert(con: duckdb.DuckDBPyConnection, table: str, ingest_id: int) -> str:
    """Merge new_<table> into table by key; returns the relation holding the inserted or changed rows.

    Identifiers come from the KEYS whitelist only.
    """
    key, values = KEYS[table]
    if con.execute(f"select count(*) = 0 from {table}").fetchone()[0]:
        con.execute(f"insert into {table} by name select *, $id as ingest_id from new_{table}", {"id": ingest_id})
        return f"new_{table}"
    on = " and ".join(f"t.{k} = n.{k}" for k in key)
    differs = " or ".join(f"t.{v} is distinct from n.{v}" for v in values)
    con.execute(f"create or replace temp table delta_{table} as select n.* from new_{table} n"
                f" left join {table} t on {on} where t.{key[0]} is null or {differs}")
    con.execute(f"delete from {table} t using delta_{table} n where {on}")
    con.execute(f"insert into {table} by name select *, $id as ingest_id from delta_{table}", {"id": ingest_id})
    return f"delta_{table}"


def locate_semantic_rejects(con: duckdb.DuckDBPyConnection, name: str, path: Path, ingest_id: int) -> None:
    """Give rows rejected after parsing their physical line number and raw text (only if there are any)."""
    if not con.execute("select count(*) from bad_rows where source_file = ?", [name]).fetchone()[0]:
        return
    queries.run(con, "ingest_raw_lines", {"path": str(path), "delim": RAW_DELIMITER})
    if con.execute("select count(*) from raw_rejects").fetchone()[0]:
        queries.run(con, "ingest_raw_renumber")
    queries.run(con, "ingest_semantic_rejects", {"ingest_id": ingest_id, "file": name, "path": str(path),
                                                 "delim": RAW_DELIMITER})


def file_report(con: duckdb.DuckDBPyConnection, name: str, sha256: str) -> FileReport:
    table = "stg_" + name.removesuffix(".csv")
    parsed = con.execute(f"select count(*) from {table}").fetchone()[0]
    unparsed = con.execute("select count(distinct e.line) from rejects e join reject_scans s using (scan_id, file_id)"
                           " where parse_filename(s.file_path) = ?", [name]).fetchone()[0]
    bad = con.execute("select count(*) from bad_rows where source_file = ?", [name]).fetchone()[0]
    return FileReport(parsed + unparsed, parsed - bad, unparsed + bad, sha256)


def record(con: duckdb.DuckDBPyConnection, ingest_id: int, source: str, source_sha: str,
           files: dict[str, FileReport], started_at, changed: dict[str, str]) -> None:
    """Write the ingests / ingest_files / user_changes rows of this ingest."""
    con.execute(f"insert into user_changes select distinct ?, user_id from"
                f" (select user_id from {changed['ratings']} union all select user_id from {changed['tags']})",
                [ingest_id])
    n_users = con.execute("select count(*) from user_changes where ingest_id = ?", [ingest_id]).fetchone()[0]
    for name, f in files.items():
        con.execute("insert into ingest_files values (?, ?, ?, ?, ?, ?)",
                    [ingest_id, name, f.sha256, f.rows_read, f.rows_loaded, f.rows_rejected])
    totals = [sum(getattr(f, k) for f in files.values()) for k in ("rows_read", "rows_loaded", "rows_rejected")]
    con.execute("insert into ingests by name select ? as ingest_id, ? as source, ? as source_sha256, ? as rows_read,"
                " ? as rows_loaded, ? as rows_rejected, ? as started_at, ? as finished_at, ? as changed_users",
                [ingest_id, source, source_sha, *totals, started_at, utcnow(), n_users])


@contextlib.contextmanager
def source_files(source: Path) -> Iterator[dict[str, Path]]:
    """Paths of the four MovieLens files in a directory or zip (zips are extracted to a temp dir)."""
    check_source(source)
    if source.is_dir():
        yield find_in_dir(source)
        return
    with tempfile.TemporaryDirectory(prefix="pmg-ingest-") as tmp:
        yield extract(source, Path(tmp))


def check_source(source: Path | str) -> None:
    """The source must be an existing directory or a readable zip file."""
    source = Path(source)
    if not source.exists():
        raise WarehouseError(f"{source} does not exist; give a MovieLens directory or .zip")
    if not source.is_dir() and not zipfile.is_zipfile(source):
        raise WarehouseError(f"{source} is neither a directory nor a readable zip file")


def find_in_dir(directory: Path) -> dict[str, Path]:
    """The four files directly in directory, or in its one subdirectory that has them."""
    candidates = [directory, *sorted(p for p in directory.iterdir() if p.is_dir())]
    for candidate in candidates:
        if all((candidate / name).is_file() for name in HEADERS):
            return {name: candidate / name for name in HEADERS}
    missing = [name for name in HEADERS if not (directory / name).is_file()]
    raise WarehouseError(f"{directory} has no {', '.join(missing)}; a MovieLens directory holds "
                         f"{', '.join(HEADERS)}")


def extract(archive: Path, out: Path) -> dict[str, Path]:
    """Extract the four files (shallowest match of each name, ignoring __MACOSX) from a zip."""
    try:
        with zipfile.ZipFile(archive) as zf:
            members = [m for m in zf.infolist() if not m.is_dir() and not m.filename.startswith("__MACOSX")]
            found = {}
            for name in HEADERS:
                matches = sorted((m for m in members if m.filename.rsplit("/", 1)[-1] == name),
                                 key=lambda m: m.filename.count("/"))
                if not matches:
                    raise WarehouseError(f"{archive} has no {name}; a MovieLens zip holds {', '.join(HEADERS)}")
                with zf.open(matches[0]) as src, open(out / name, "wb") as dst:
                    while chunk := src.read(8 << 20):
                        dst.write(chunk)
                found[name] = out / name
            return found
    except (zipfile.BadZipFile, zlib.error, EOFError) as e:
        raise WarehouseError(f"{archive} is not a readable zip file ({e})") from None


def check_header(name: str, path: Path) -> None:
    """The first line must be the MovieLens header of that file (BOM and CRLF allowed)."""
    with open(path, "rb") as f:
        first = f.readline(4096)
    text = first.decode("utf-8-sig", errors="replace").rstrip("\r\n")
    if text != HEADERS[name]:
        raise WarehouseError(f"{path} has header {text[:80]!r} but a MovieLens {name} starts with"
                             f" {HEADERS[name]!r}; is this a MovieLens dataset?")


def file_sha256(path: Path) -> str:
    """SHA-256 of the file with a BOM removed and CRLF normalised to LF (same data, same hash)."""
    digest = hashlib.sha256()
    pending = b""
    first = True
    with open(path, "rb") as f:
        while chunk := f.read(8 << 20):
            chunk = pending + chunk
            if first:
                chunk, first = chunk.removeprefix(b"\xef\xbb\xbf"), False
            pending = b"\r" if chunk.endswith(b"\r") else b""
            body = chunk[: len(chunk) - len(pending)] if pending else chunk
            digest.update(body.replace(b"\r\n", b"\n") if b"\r" in body else body)
    digest.update(pending)
    return digest.hexdigest()


def _pause_for_tests() -> None:
    """Crash tests hold the open transaction here to kill -9 it: env PMG_TEST_INGEST_PAUSE seconds,
    after touching the file PMG_TEST_INGEST_PAUSE_FILE (if set) to say the pause has begun."""
    delay = float(os.environ.get("PMG_TEST_INGEST_PAUSE", "0") or 0)
    if delay:
        if os.environ.get("PMG_TEST_INGEST_PAUSE_FILE"):
            Path(os.environ["PMG_TEST_INGEST_PAUSE_FILE"]).touch()
        time.sleep(delay)
