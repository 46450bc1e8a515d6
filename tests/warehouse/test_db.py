"""Migrations, publishing (only changed tables, atomic files, crash repair) and named queries."""
from __future__ import annotations

import pytest

from warehouse import db, migrate, queries
from warehouse.db import connect_reader, connect_writer, mark_changed, publish, read_query
from warehouse.errors import WarehouseError
from warehouse.ingest import ingest


def snapshot_paths(con) -> dict[str, str]:
    return dict(con.execute("select table_name, path from _published").fetchall())


def test_migrations_apply_once_in_order(tmp_path):
    with connect_writer(tmp_path / "wh") as con:
        versions = [r[0] for r in con.execute("select version from schema_version order by version").fetchall()]
        assert versions[0] == 1 and versions == sorted(versions)
    with connect_writer(tmp_path / "wh") as con:            # re-open: nothing re-applied
        assert [r[0] for r in con.execute("select version from schema_version order by 1").fetchall()] == versions


def test_registered_schema_dir_is_picked_up(tmp_path, monkeypatch):
    extra = tmp_path / "schema"
    extra.mkdir()
    (extra / "950_extra.sql").write_text("create table if not exists extra_things (id integer);\n"
                                         "create or replace view extra_view as select count(*) n from extra_things;")
    (extra / "notes.txt").write_text("ignored")
    monkeypatch.setattr(migrate, "SCHEMA_DIRS", list(migrate.SCHEMA_DIRS))
    migrate.register_schema_dir(extra)
    with connect_writer(tmp_path / "wh") as con:
        assert con.execute("select name from schema_version where version = 950").fetchone() == ("950_extra.sql",)
    with connect_reader(tmp_path / "wh") as con:             # new tables and views are published
        assert read_query(con, "select n from extra_view")[1] == [(0,)]
    (extra / "950_clash.sql").write_text("select 1;")
    with pytest.raises(WarehouseError, match="share number 950"):
        migrate.migration_files()


def test_publish_rewrites_only_changed_tables(small_source, tmp_path):
    root = tmp_path / "wh"
    ingest(small_source, root)
    with connect_writer(root) as con:
        before = snapshot_paths(con)
        con.execute("insert into runs (run_id, flow, status) values ('r1', 'test', 'done')")
        assert publish(con, root, ["runs"]) == ["runs"]
        assert publish(con, root) == []                        # nothing else changed
        after = snapshot_paths(con)
    assert after["ratings"] == before["ratings"] and after["runs"] != before["runs"]
    with connect_reader(root) as con:
        assert read_query(con, "select run_id from runs")[1] == [("r1",)]
    published = list((root / "published").rglob("*.parquet"))
    assert published and not [p for p in published if p.name.startswith(".tmp-")]


def test_changes_marked_in_a_transaction_are_published_on_exit(tmp_path):
    root = tmp_path / "wh"
    with connect_writer(root) as con:
        con.execute("begin transaction")
        con.execute("insert into runs (run_id, flow, status) values ('r1', 'test', 'done')")
        mark_changed(con, ["runs"])
        con.execute("commit")
    with connect_reader(root) as con:
        assert read_query(con, "select run_id from runs")[1] == [("r1",)]


def test_committed_but_unpublished_changes_are_published_by_the_next_writer(tmp_path, monkeypatch):
    root = tmp_path / "wh"
    with connect_writer(root):
        pass
    monkeypatch.setattr(db, "publish_pending", lambda con, root: [])   # as if the process died after COMMIT
    with connect_writer(root) as con:
        con.execute("begin transaction")
        con.execute("insert into runs (run_id, flow, status) values ('r2', 'test', 'done')")
        mark_changed(con, ["runs"])
        con.execute("commit")
    monkeypatch.undo()
    with connect_reader(root) as con:
        assert read_query(con, "select count(*) from runs")[1] == [(0,)]
    with connect_writer(root):
        pass
    with connect_reader(root) as con:
        assert read_query(con, "select run_id from runs")[1] == [("r2",)]


def test_publish_unknown_table_is_an_error(tmp_path):
    with connect_writer(tmp_path / "wh") as con, pytest.raises(WarehouseError, match="unknown table"):
        publish(con, tmp_path / "wh", ["no_such_table"])


def test_named_queries_use_parameters(tmp_path):
    (queries.QUERY_DIR / "ingest_prepare.sql").exists()
    with pytest.raises(WarehouseError, match="no query named"):
        queries.load("does_not_exist")
    with pytest.raises(WarehouseError, match="bad query name"):
        queries.load("../etc/passwd")
    with connect_writer(tmp_path / "wh") as con:
        queries.run(con, "ingest_prepare")
        con.execute("insert into bad_rows values ('x.csv', 1, 'because')")
        assert con.execute("select reason from bad_rows where source_file = $f", {"f": "x.csv"}).fetchall() == [("because",)]


def test_reader_on_missing_warehouse_is_a_clear_error(tmp_path):
    with pytest.raises(WarehouseError, match="no warehouse at"):
        with connect_reader(tmp_path / "nothing"):
            pass


def test_a_warehouse_path_that_is_a_file_is_a_clear_error(tmp_path):
    (tmp_path / "wh").write_text("not a warehouse")
    with pytest.raises(WarehouseError, match="is a file; --warehouse"):
        with connect_writer(tmp_path / "wh"):
            pass


def test_nested_writer_in_one_thread_fails_fast(tmp_path):
    with connect_writer(tmp_path / "wh"):
        with pytest.raises(RuntimeError, match="already holds the writer"):
            with connect_writer(tmp_path / "wh", timeout_s=30):
                pass
    with connect_writer(tmp_path / "wh"):                    # released afterwards
        pass


def test_a_copied_warehouse_reads_its_own_files_not_the_originals(small_source, tmp_path):
    import shutil

    original = tmp_path / "original"
    ingest(small_source, original)
    copy = tmp_path / "copy"
    shutil.copytree(original, copy)
    with connect_writer(copy) as con:
        publish(con, copy)
    shutil.rmtree(original)  # the copy must not depend on it
    with connect_reader(copy) as con:
        cols, rows = read_query(con, "select count(*) from ratings")
    assert rows[0][0] == 1500
