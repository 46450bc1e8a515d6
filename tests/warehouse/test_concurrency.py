"""Readers never wait for the writer; a second writer waits or fails clearly; kill -9 loses nothing."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from tests.warehouse.conftest import REPO, pmg
from warehouse.db import connect_reader, connect_writer, read_query
from warehouse.ingest import ingest
from warehouse.synth import synthesize

COUNTS_SQL = "select (select count(*) from ratings) as n, (select max(ingest_id) from ingests) as i"


def spawn_ingest(source, root, env=None) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "flows", "--warehouse", str(root), "ingest", str(source)],
                            cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO), **(env or {})},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_for(path, proc, timeout=60.0) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert proc.poll() is None, proc.stderr.read()
        assert time.monotonic() < deadline, "ingest never reached its commit point"
        time.sleep(0.05)


@pytest.fixture(scope="module")
def bigger_source(tmp_path_factory):
    return synthesize(tmp_path_factory.mktemp("bigger") / "ml", users=150, movies=600, ratings=20_000, seed=5)


def test_sql_queries_succeed_while_another_process_ingests(small_source, bigger_source, tmp_path):
    root = tmp_path / "wh"
    ingest(small_source, root)
    marker = tmp_path / "paused"
    writer = spawn_ingest(bigger_source, root, {"PMG_TEST_INGEST_PAUSE": "2", "PMG_TEST_INGEST_PAUSE_FILE": str(marker)})
    seen, during = [], 0
    while writer.poll() is None or not seen:
        result = pmg("sql", COUNTS_SQL, "--format", "csv", warehouse=root)
        assert result.returncode == 0, result.stderr
        seen.append(tuple(int(v) for v in result.stdout.splitlines()[1].split(",")))
        during += writer.poll() is None and marker.exists()
    assert writer.wait() == 0, writer.stderr.read()
    with connect_reader(root) as con:
        final = read_query(con, COUNTS_SQL)[1][0]
    assert during >= 1, "no query ran while the writer held its open transaction"
    assert set(seen) <= {(1500, 1), final}, f"a reader saw uncommitted or partial data: {set(seen)}"
    assert final[1] == 2 and final[0] > 1500


def test_second_writer_waits_then_fails_clearly(tmp_path):
    root = tmp_path / "wh"
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from warehouse.db import connect_writer\n"
         "with connect_writer(sys.argv[1]):\n    print('held', flush=True); time.sleep(3)", str(root)],
        cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)}, stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "held"
    with pytest.raises(RuntimeError, match=rf"another pmg process is writing to .* \(pid {holder.pid}\)"):
        with connect_writer(root, timeout_s=0.5):
            pass
    started = time.monotonic()
    with connect_writer(root, timeout_s=30) as con:      # waits for the holder, then works
        assert con.execute("select count(*) from ratings").fetchone() == (0,)
    assert time.monotonic() - started > 0.5
    holder.wait()


def test_kill_9_inside_the_ingest_transaction_then_rerun(small_source, bigger_source, tmp_path):
    root = tmp_path / "wh"
    ingest(small_source, root)
    marker = tmp_path / "paused"
    writer = spawn_ingest(bigger_source, root, {"PMG_TEST_INGEST_PAUSE": "60", "PMG_TEST_INGEST_PAUSE_FILE": str(marker)})
    wait_for(marker, writer)
    writer.send_signal(signal.SIGKILL)
    writer.wait()
    with connect_reader(root) as con:                    # readers still see the last committed state
        assert read_query(con, COUNTS_SQL)[1] == [(1500, 1)]
    with connect_writer(root) as con:                    # nothing of the killed ingest is visible
        assert con.execute("select count(*) from ingests").fetchone() == (1,)
        assert con.execute("select count(*) from ratings").fetchone() == (1500,)
        assert con.execute("select count(*) from ingest_rejects").fetchone() == (0,)
    assert_same_as_clean_ingest(small_source, bigger_source, root, tmp_path)


def test_kill_9_at_random_points_then_rerun(small_source, bigger_source, tmp_path):
    root = tmp_path / "wh"
    ingest(small_source, root)
    for delay in (0.3, 0.7, 1.0, 1.3, 1.6, 2.2):
        writer = spawn_ingest(bigger_source, root)
        time.sleep(delay)
        writer.send_signal(signal.SIGKILL)
        writer.wait()
    assert_same_as_clean_ingest(small_source, bigger_source, root, tmp_path)


def assert_same_as_clean_ingest(first, second, root, tmp_path) -> None:
    """Re-running the killed ingest gives exactly what an uninterrupted run gives."""
    result = pmg("ingest", str(second), warehouse=root)
    assert result.returncode == 0, result.stderr
    clean = tmp_path / "clean"
    ingest(first, clean)
    ingest(second, clean)
    sql = ("select (select count(*) from ratings), (select count(*) from movies), (select count(*) from tags),"
           " (select count(*) from links), (select count(*) from ingests), (select count(*) from ingest_rejects),"
           " (select count(*) from user_changes),"
           " (select count(*) from (select user_id, movie_id from ratings group by all having count(*) > 1)),"
           " (select sum(hash(user_id, movie_id, rating, rated_at)) from ratings)")
    with connect_reader(root) as a, connect_reader(clean) as b:
        assert read_query(a, sql)[1] == read_query(b, sql)[1]
