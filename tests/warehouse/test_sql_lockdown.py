"""`pmg sql` is read-only and locked down: writes, file access, ATTACH, extensions and settings are refused."""
from __future__ import annotations

import json

import pytest

from tests.warehouse.conftest import pmg
from warehouse.db import connect_reader, read_query
from warehouse.errors import WarehouseError
from warehouse.ingest import ingest

CONTRACT = ["movies", "ratings", "tags", "links", "ingests", "ingest_rejects", "runs"]


@pytest.fixture(scope="module")
def root(small_source, tmp_path_factory):
    root = tmp_path_factory.mktemp("lockdown") / "wh"
    ingest(small_source, root)
    return root


def forbidden(root) -> list[str]:
    db = root / "warehouse.duckdb"
    return [
        "insert into ratings values (1, 1, 4.0, now()::timestamp, 1)",
        "update ratings set rating = 1",
        "delete from ratings",
        "drop table ratings",
        "create table stolen as select * from ratings",
        "create temp table scratch as select 1",
        "alter table ratings add column x integer",
        "create macro m(x) as x",
        "select * from read_csv('/etc/passwd')",
        "select * from read_text('/etc/passwd')",
        "select * from read_blob('/etc/hostname')",
        f"select * from read_parquet('{db}')",
        f"select * from read_csv('{root}/published/../writer.lock')",
        "select * from glob('/etc/*')",
        "select * from read_json('/etc/passwd')",
        "copy ratings to '/tmp/pmg-stolen.csv'",
        "copy (select 1) to 'pmg-stolen.parquet' (format parquet)",
        "export database '/tmp/pmg-export'",
        f"attach '{db}' as w",
        "attach ':memory:' as m",
        "install httpfs",
        "load httpfs",
        "set threads = 1",
        "set enable_external_access = true",
        "reset lock_configuration",
        "pragma enable_profiling",
        "checkpoint",
        "vacuum",
        "begin transaction",
        "select 1; drop table ratings",
    ]


def test_at_least_fifteen_statements_are_refused_clearly(root):
    statements = forbidden(root)
    assert len(statements) >= 15
    with connect_reader(root) as con:
        for sql in statements:
            with pytest.raises(WarehouseError) as err:
                read_query(con, sql)
            message = str(err.value)
            assert any(k in message for k in ("read-only", "refused", "exactly one statement")), (sql, message)
        assert read_query(con, "select count(*) from ratings")[1] == [(1500,)]


def test_selects_over_every_table_work(root):
    with connect_reader(root) as con:
        names = [r[0] for r in read_query(con, "select table_name from information_schema.tables")[1]]
        assert set(CONTRACT) <= set(names)
        for name in names:
            columns, rows = read_query(con, f'select * from "{name}" limit 3')
            assert columns
        assert read_query(con, "explain select * from movies")[1]
        assert read_query(con, "with r as (select movie_id, avg(rating) a from ratings group by 1)"
                               " select count(*) from r join movies using (movie_id)")[1][0][0] > 0


def test_cli_refuses_with_one_sentence_and_exit_1(root):
    for sql in ("drop table ratings", "select * from read_csv('/etc/passwd')", "set threads=1"):
        result = pmg("sql", sql, warehouse=root)
        assert result.returncode == 1, sql
        assert result.stderr.startswith("pmg: error:") and len(result.stderr.strip().splitlines()) == 1
    ok = pmg("sql", "select title, year, genres from movies order by movie_id limit 2", "--format", "json",
             warehouse=root, check=True)
    data = json.loads(ok.stdout)
    assert len(data) == 2 and isinstance(data[0]["genres"], list)
    csv_out = pmg("sql", "select count(*) as n from ratings", "--format", "csv", warehouse=root, check=True)
    assert csv_out.stdout.splitlines() == ["n", "1500"]
    table = pmg("sql", "select count(*) as n from ratings", warehouse=root, check=True)
    assert "1500" in table.stdout


def test_duckdb_itself_refuses_even_without_the_statement_guard(root):
    import duckdb

    db = root / "warehouse.duckdb"
    with connect_reader(root) as con:
        for sql in ["insert into ratings values (1, 1, 4.0, now()::timestamp, 1)", "copy ratings to '/tmp/pmg-x.csv'",
                    f"attach '{db}' as w", "set enable_external_access = true", "set allowed_directories = ['/']",
                    "load httpfs", "create table t (i integer)", "export database '/tmp/pmg-export'"]:
            with pytest.raises(duckdb.Error):
                con.execute(sql)


def test_sql_and_ingest_start_without_model_or_prefect_imports(root):
    import subprocess
    import sys

    from tests.warehouse.conftest import REPO
    code = ("import sys; import warehouse.ingest; from flows.cli import main; main(['--warehouse', sys.argv[1], 'sql', 'select 1']);"
            " print(sorted(m for m in ('mindspore', 'prefect', 'torch', 'pandas') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code, str(root)], capture_output=True, text=True, cwd=REPO, check=True)
    assert out.stdout.strip().splitlines()[-1] == "[]"
