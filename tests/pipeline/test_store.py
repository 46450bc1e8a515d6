"""Image store, staging parts, the work ledger and the exactly-once chunk commit (no models)."""
import duckdb
import numpy as np
import pytest

from warehouse import images, ledger, staging
from warehouse.migrate import apply_migrations


@pytest.fixture
def con(tmp_path):
    c = duckdb.connect(str(tmp_path / "w.duckdb"))
    apply_migrations(c)
    yield c
    c.close()


def test_image_store_is_content_addressed_and_idempotent(tmp_path):
    img = np.zeros((8, 8, 3), np.uint8)
    img[2:4] = 200
    rel, sha = images.put_png(tmp_path, img)
    assert rel == f"images/{sha[:2]}/{sha}.png"
    assert images.verify(tmp_path, rel, sha)
    assert images.put_png(tmp_path, img) == (rel, sha)
    assert len(list((tmp_path / "images").rglob("*"))) == 2  # one dir, one file


def test_image_store_removes_temp_leftovers(tmp_path):
    d = tmp_path / "images" / "ab"
    d.mkdir(parents=True)
    (d / ".tmp-abc.123").write_bytes(b"half")
    assert images.remove_temp_files(tmp_path) == 1
    assert not list(d.iterdir())


def test_fingerprint_is_order_independent_for_dicts():
    assert ledger.fingerprint({"a": 1, "b": [1, 2]}) == ledger.fingerprint({"b": [1, 2], "a": 1})
    assert ledger.fingerprint({"a": 1}) != ledger.fingerprint({"a": 2})


def _part(tmp_path, name, rows, columns):
    return staging.write_parquet(staging.part_path(tmp_path, "r1", "s", 0, name), rows, columns)


KW_COLUMNS = {"movie_id": "INTEGER", "keywords": "VARCHAR[]", "raw_output": "VARCHAR",
              "parse_ok": "BOOLEAN", "run_id": "VARCHAR"}


def test_commit_chunk_is_exactly_once_and_upserts(con, tmp_path):
    rows = [{"movie_id": 1, "keywords": ["a", "b"], "raw_output": "x", "parse_ok": True, "run_id": "r1"},
            {"movie_id": 2, "keywords": [], "raw_output": None, "parse_ok": False, "run_id": "r1"}]
    part = _part(tmp_path, "item_keywords", rows, KW_COLUMNS)
    out = ledger.outcome_frame([("1", "f1", "done", None), ("2", "f2", "failed", "boom")])
    assert staging.commit_chunk(con, "r1", "item_keywords", 0, {"item_keywords": part}, out)
    assert not staging.commit_chunk(con, "r1", "item_keywords", 0, {"item_keywords": part}, out)
    assert con.execute("SELECT count(*) FROM item_keywords").fetchall() == [(2,)]
    assert con.execute("SELECT keywords FROM item_keywords WHERE movie_id=1").fetchall() == [(["a", "b"],)]
    # Only the failed item and changed fingerprints are pending.
    todo = ledger.pending(con, "item_keywords", {"1": "f1", "2": "f2", "3": "f3"})
    assert todo == {"2": "f2", "3": "f3"}
    assert ledger.pending(con, "item_keywords", {"1": "changed"}) == {"1": "changed"}
    # A later run replaces rows by key (no duplicates) and counts attempts.
    rows2 = [{"movie_id": 2, "keywords": ["c"], "raw_output": "y", "parse_ok": True, "run_id": "r2"}]
    part2 = staging.write_parquet(staging.part_path(tmp_path, "r2", "s", 0, "item_keywords"), rows2, KW_COLUMNS)
    out2 = ledger.outcome_frame([("2", "f2", "done", None)])
    assert staging.commit_chunk(con, "r2", "item_keywords", 0, {"item_keywords": part2}, out2)
    assert con.execute("SELECT movie_id, keywords FROM item_keywords ORDER BY 1").fetchall() == [(1, ["a", "b"]), (2, ["c"])]
    assert con.execute("SELECT attempts, status FROM work_ledger WHERE item_key='2'").fetchall() == [(2, "done")]
    assert ledger.pending(con, "item_keywords", {"1": "f1", "2": "f2"}) == {}


def test_failed_commit_rolls_back_everything(con, tmp_path):
    rows = [{"movie_id": 1, "keywords": ["a"], "raw_output": "x", "parse_ok": True, "run_id": "r1"}]
    part = _part(tmp_path, "item_keywords", rows, KW_COLUMNS)
    with pytest.raises(ValueError):
        staging.commit_chunk(con, "r1", "item_keywords", 0, {"item_keywords": part, "movies": part},
                             ledger.outcome_frame([("1", "f", "done", None)]))
    bad = ledger.outcome_frame([("1", "f", "done", None)])
    bad["status"] = None  # violates nothing, but a missing part file must roll back the transaction
    with pytest.raises(duckdb.Error):
        staging.commit_chunk(con, "r1", "item_keywords", 0, {"item_keywords": tmp_path / "missing.parquet"}, bad)
    assert con.execute("SELECT count(*) FROM item_keywords").fetchall() == [(0,)]
    assert con.execute("SELECT count(*) FROM work_ledger").fetchall() == [(0,)]
    assert con.execute("SELECT count(*) FROM chunk_commits").fetchall() == [(0,)]


def test_staged_part_is_never_visible_half_written(tmp_path):
    path = staging.part_path(tmp_path, "r", "s", 3, "t")
    staging.write_parquet(path, [{"a": 1}], {"a": "INTEGER"})
    assert [p.name for p in path.parent.iterdir()] == ["t.parquet"]
    assert staging.read_parquet(path, "a = ?", [1]) == [{"a": 1}]
    assert staging.remove_stale(tmp_path, keep={"other"}) == 1
