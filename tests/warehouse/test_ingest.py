"""Ingest: injected bad lines give exact rejects; idempotency; newer snapshots; clear errors on bad sources."""
from __future__ import annotations

import csv
import io
import zipfile
from pathlib import Path

import duckdb
import pytest

from tests.warehouse.conftest import pmg
from warehouse.db import DB_FILE, connect_writer
from warehouse.errors import WarehouseError
from warehouse.ingest import ingest


def read_rows(path: Path) -> list[list[str]]:
    return list(csv.reader(io.StringIO(path.read_text(encoding="utf-8"))))


def query(root: Path, sql: str, params=None) -> list[tuple]:
    with connect_writer(root) as con:
        return con.execute(sql, params or []).fetchall()


def inject_ratings(path: Path) -> tuple[dict[int, str], dict]:
    """Insert bad lines into ratings.csv; returns {line_number: reason} expected and the expected good rows."""
    lines = path.read_text(encoding="utf-8").splitlines()
    rows = [l.split(",") for l in lines[1:]]
    good = {(int(u), int(m)): (float(r), int(t)) for u, m, r, t in rows}
    (u0, m0, _, t0), (u1, m1, _, t1) = rows[0], rows[5]
    older_dup = f"{u0},{m0},1.0,{int(t0) - 10}"           # older than the existing row: rejected itself
    newer_dup = f"{u1},{m1},2.5,{int(t1) + 10}"           # newer: kept, the original line is rejected
    bad = [
        ("1,abc,4.0,964982703", "bad id: movieId is not a non-negative integer"),
        (f"-5,{m0},4.0,964982703", "bad id: userId is not a non-negative integer"),
        (f"{u0},{m0},4.0", "wrong column count: expected 4, found 3"),
        (f"{u0},{m0},4.0,964982703,1", "wrong column count: expected 4, found 5"),
        (f"{u0},{m0},4.25,964982703", "rating is not a half star between 0.5 and 5.0"),
        (f"{u0},{m0},5.5,964982703", "rating is not a half star between 0.5 and 5.0"),
        (f"{u0},{m0},0.0,964982703", "rating is not a half star between 0.5 and 5.0"),
        (f"{u0},{m0},4.0,yesterday", "unparseable timestamp"),
        (f"{u0},9999999,4.0,964982703", "unknown movieId"),
        (f"3000000000,{m0},4.0,964982703", "bad id: userId and movieId must be below 2^31"),
        (f"{u0},{m0},four,964982703", "rating is not a number"),
        (older_dup, "duplicate (userId, movieId) rating: the newest one was kept"),
        (newer_dup, None),
        ("", None),                                      # a blank line is not a row
    ]
    out = [lines[0]]
    expected: dict[int, str] = {}
    body = lines[1:]
    for i, line in enumerate(body):
        if i % 3 == 2 and bad:
            text, reason = bad.pop(0)
            out.append(text)
            if reason:
                expected[len(out)] = reason
        out.append(line)
        if line == ",".join(rows[5]):
            original_line = len(out)
    expected[original_line] = "duplicate (userId, movieId) rating: the newest one was kept"
    good[(int(u1), int(m1))] = (2.5, int(t1) + 10)
    path.write_text("\n".join(out) + "\n", encoding="utf-8")
    return expected, good


def test_injected_bad_lines_exact_rejects(source_copy, tmp_path):
    expected, good = inject_ratings(source_copy / "ratings.csv")
    root = tmp_path / "wh"
    report = ingest(source_copy, root)
    got = query(root, "select line_number, reason from ingest_rejects where source_file = 'ratings.csv' order by 1")
    assert dict(got) == expected
    raw = dict(query(root, "select line_number, raw_line from ingest_rejects where source_file = 'ratings.csv'"))
    lines = (source_copy / "ratings.csv").read_text().splitlines()
    assert all(raw[n] == lines[n - 1] for n in expected), "raw_line must be the exact text of that line"
    f = report.files["ratings.csv"]
    assert (f.rows_rejected, f.rows_read) == (len(expected), len(good) + len(expected))
    assert f.rows_read == f.rows_loaded + f.rows_rejected
    loaded = {(u, m): (r, int(t.timestamp())) for u, m, r, t in
              query(root, "select user_id, movie_id, rating, rated_at at time zone 'UTC' from ratings")}
    assert loaded == good
    per_file = query(root, "select source_file, rows_read, rows_loaded + rows_rejected from ingest_files")
    assert all(read == total for _, read, total in per_file)
    totals = query(root, "select rows_read, rows_loaded, rows_rejected from ingests")[0]
    assert totals == (report.rows_read, report.rows_loaded, report.rows_rejected)
    assert totals[0] == totals[1] + totals[2]


def test_bad_movies_links_tags_are_rejected(source_copy, tmp_path):
    movies = source_copy / "movies.csv"
    first_id = read_rows(movies)[1][0]
    n_lines = len(movies.read_text(encoding="utf-8").splitlines())
    with open(movies, "ab") as f:
        f.write(b"abc,Broken Id (1999),Drama\n")
        f.write(b"999991,Caf\xe9 Latin-1 (1999),Drama\n")      # not UTF-8
        f.write(f'{first_id},"Duplicate, The (2001)",Comedy\n'.encode())
    with open(source_copy / "links.csv", "a", encoding="utf-8") as f:
        f.write("8888888,0012345,\n")
        f.write(f"{first_id},tt12,5\n")
        f.write(f"{first_id},0012345,-7\n")
    with open(source_copy / "tags.csv", "a", encoding="utf-8") as f:
        f.write("1,8888888,lost,964982703\n")
    root = tmp_path / "wh"
    report = ingest(source_copy, root)
    reasons = query(root, "select source_file, reason from ingest_rejects order by source_file, line_number")
    assert reasons == [
        ("links.csv", "unknown movieId"),
        ("links.csv", "bad id: imdbId is not numeric"),
        ("links.csv", "bad id: tmdbId is not a non-negative integer"),
        ("movies.csv", "bad id: movieId is not a non-negative integer"),
        ("movies.csv", "invalid encoding: the line is not UTF-8"),
        ("movies.csv", "duplicate movieId: the first one was kept"),
        ("tags.csv", "unknown movieId"),
    ]
    assert query(root, "select line_number from ingest_rejects where source_file = 'movies.csv' order by 1") == [
        (n_lines + 1,), (n_lines + 2,), (n_lines + 3,)]
    # the text of a row rejected after parsing is read back by line number, past the unreadable line
    assert query(root, "select raw_line from ingest_rejects where reason like 'duplicate movieId%'") == [
        (f'{first_id},"Duplicate, The (2001)",Comedy',)]
    for f in report.files.values():
        assert f.rows_read == f.rows_loaded + f.rows_rejected


def test_same_source_twice_changes_nothing(small_source, tmp_path):
    root = tmp_path / "wh"
    first = ingest(small_source, root)
    counts = query(root, "select (select count(*) from ratings), (select count(*) from ingests), (select count(*) from user_changes)")
    again = ingest(small_source, root)
    assert again.skipped_same_source and again.ingest_id == first.ingest_id
    assert query(root, "select (select count(*) from ratings), (select count(*) from ingests), (select count(*) from user_changes)") == counts


def test_crlf_copy_is_the_same_source(small_source, tmp_path):
    crlf = tmp_path / "crlf"
    crlf.mkdir()
    for file in small_source.iterdir():
        (crlf / file.name).write_bytes(b"\xef\xbb\xbf" + file.read_bytes().replace(b"\n", b"\r\n"))
    root = tmp_path / "wh"
    ingest(small_source, root)
    assert ingest(crlf, root).skipped_same_source


def test_newer_snapshot_updates_rows_and_records_changed_users(source_copy, tmp_path):
    root = tmp_path / "wh"
    first = ingest(source_copy, root)
    assert len(first.changed_users) == 30
    lines = (source_copy / "ratings.csv").read_text().splitlines()
    u, m, r, t = lines[1].split(",")
    lines[1] = f"{u},{m},{5.0 if float(r) != 5.0 else 1.0},{int(t) + 100}"   # a changed rating of user u
    movie = read_rows(source_copy / "movies.csv")[-1][0]
    lines.append(f"31,{movie},3.5,1500000000")                               # a new user
    (source_copy / "ratings.csv").write_text("\n".join(lines) + "\n")
    before = query(root, "select count(*) from ratings")[0][0]
    second = ingest(source_copy, root)
    assert not second.skipped_same_source
    assert second.changed_users == sorted({int(u), 31})
    assert query(root, "select count(*) from ratings")[0][0] == before + 1
    assert query(root, "select ingest_id from ratings where user_id = ? and movie_id = ?", [int(u), int(m)]) == [(2,)]
    assert query(root, "select user_id from user_changes where ingest_id = 2 order by 1") == [(int(u),), (31,)]
    assert query(root, "select count(*) from ratings group by user_id, movie_id having count(*) > 1") == []


def test_zip_source(small_source, tmp_path):
    archive = tmp_path / "ml.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for file in small_source.iterdir():
            zf.write(file, f"ml-latest-small/{file.name}")
        zf.writestr("__MACOSX/ml-latest-small/._ratings.csv", "junk")
        zf.writestr("ml-latest-small/genome-scores.csv", "tagId,movieId,relevance\n")
    report = ingest(archive, tmp_path / "wh")
    assert report.files["ratings.csv"].rows_loaded == 1500


def tree_state(root: Path) -> dict:
    return {p.relative_to(root): (p.stat().st_size, p.stat().st_mtime_ns) for p in root.rglob("*")} if root.exists() else {}


@pytest.mark.parametrize("case", ["missing_dir", "missing_file", "bad_zip", "corrupt_zip", "wrong_header",
                                  "zip_without_file"])
def test_bad_sources_fail_cleanly(case, small_source, tmp_path):
    root = tmp_path / "wh"
    ingest(small_source, root)
    src = tmp_path / "bad"
    if case == "missing_dir":
        expected = "does not exist"
    elif case == "missing_file":
        src.mkdir()
        for name in ("movies.csv", "ratings.csv", "links.csv"):
            (src / name).write_bytes((small_source / name).read_bytes())
        expected = "has no tags.csv"
    elif case == "bad_zip":
        src = tmp_path / "bad.zip"
        src.write_bytes(b"PK\x03\x04 this is not really a zip")
        expected = "readable zip"
    elif case == "corrupt_zip":
        src = tmp_path / "corrupt.zip"
        with zipfile.ZipFile(src, "w", zipfile.ZIP_DEFLATED) as zf:
            for file in small_source.iterdir():
                zf.write(file, f"ml/{file.name}")
        data = bytearray(src.read_bytes())
        start = data.find(b"ml/ratings.csv") + 200
        data[start:start + 64] = bytes(64)
        src.write_bytes(bytes(data))
        expected = "readable zip"
    elif case == "wrong_header":
        src.mkdir()
        for file in small_source.iterdir():
            (src / file.name).write_bytes(file.read_bytes())
        (src / "ratings.csv").write_text("user,movie,stars,time\n1,1,4.0,1\n")
        expected = "header"
    else:
        src = tmp_path / "partial.zip"
        with zipfile.ZipFile(src, "w") as zf:
            zf.write(small_source / "movies.csv", "ml/movies.csv")
        expected = "has no"
    before = tree_state(root)
    result = pmg("ingest", str(src), warehouse=root)
    assert result.returncode == 1
    assert result.stderr.startswith("pmg: error:") and expected in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.stderr
    assert tree_state(root) == before


def test_failed_source_does_not_create_a_warehouse(tmp_path):
    result = pmg("ingest", str(tmp_path / "nope"), warehouse=tmp_path / "wh")
    assert result.returncode == 1 and not (tmp_path / "wh").exists()


def test_report_from_cli(small_source, tmp_path):
    result = pmg("ingest", str(small_source), warehouse=tmp_path / "wh", check=True)
    assert "1500 rows" not in result.stderr and "ratings.csv" in result.stdout
    again = pmg("ingest", str(small_source), warehouse=tmp_path / "wh", check=True)
    assert "already ingested" in again.stdout


def test_adjacent_duplicate_in_a_sorted_file_is_found(source_copy, tmp_path):
    path = source_copy / "ratings.csv"
    lines = path.read_text().splitlines()
    u, m, r, t = lines[10].split(",")
    lines.insert(11, f"{u},{m},{r},{int(t) - 1}")                  # same key, older: sorted order kept
    path.write_text("\n".join(lines) + "\n")
    root = tmp_path / "wh"
    report = ingest(source_copy, root)
    assert report.files["ratings.csv"].rows_rejected == 1
    assert query(root, "select line_number, reason from ingest_rejects") == [
        (12, "duplicate (userId, movieId) rating: the newest one was kept")]
