"""kill -9 at several points of a backfill, then re-run: exactly-once results, only unfinished work redone."""
import json
import shutil
import subprocess
import sys

import duckdb
import pytest

from tests.pipeline.conftest import check_invariants, subprocess_env
from warehouse.db import connect_reader

ARGS = ["backfill", "--targets", "holdout", "--candidates", "2", "--steps", "2", "--height", "32", "--width", "32",
        "--chunk-size", "2"]


def pmg(root, env, timeout=300):
    return subprocess.run([sys.executable, "-m", "flows", "--warehouse", str(root), *ARGS], env=env,
                          capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def prepared(tmp_path_factory, tiny_models, dataset, prefect_api):
    """A warehouse whose keywords and preferences are done (the crash runs only generate and score)."""
    from flows.preferences import preferences
    from warehouse.ingest import ingest

    root = tmp_path_factory.mktemp("crash") / "template"
    root.mkdir()
    (root / "pmg.toml").write_text(
        f'[models]\nllm = "{tiny_models / "llm"}"\nsd = "{tiny_models / "sd"}"\nclip = "{tiny_models / "clip"}"\n')
    ingest(dataset, root)
    preferences(warehouse=str(root), targets="holdout", chunk_size=8)
    return root


def copy_warehouse(src, dst):
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("published", "catalog.duckdb", "prefect"))
    con = duckdb.connect(str(dst / "warehouse.duckdb"))
    con.execute("DELETE FROM _published")  # the copy republishes its own snapshots on open
    con.close()
    return dst


def committed(root, stage):
    """(item_key -> run_id) straight from the database file: the truth after a kill."""
    con = duckdb.connect(str(root / "warehouse.duckdb"), read_only=True)
    try:
        return dict(con.execute("SELECT item_key, run_id FROM work_ledger WHERE stage = ? AND status = 'done'",
                                [stage]).fetchall())
    finally:
        con.close()


@pytest.mark.parametrize("point, after", [("mid-generation", 3), ("mid-image-write", 5), ("mid-commit:generate", 2)])
def test_kill_then_rerun_is_exactly_once(point, after, prepared, prefect_api, tmp_path):
    root = copy_warehouse(prepared, tmp_path / "wh")
    crashed = pmg(root, subprocess_env(prefect_api, PMG_TEST_CRASH_AT=point, PMG_TEST_CRASH_AFTER=str(after)))
    assert crashed.returncode == 137, crashed.stderr[-2000:]
    if point == "mid-image-write":
        assert list((root / "images").glob("*/.tmp-*")), "the kill should leave a half-written temp file"
    first = committed(root, "generate")
    assert len(first) < 8
    done = pmg(root, subprocess_env(prefect_api))
    assert done.returncode == 0, done.stderr[-2000:]
    assert "Traceback" not in done.stderr and "Error flushing" not in done.stderr + done.stdout
    check_invariants(root)
    with connect_reader(root) as con:
        runs = con.execute("SELECT run_id, status, counts FROM runs WHERE flow = 'backfill' ORDER BY started_at").fetchall()
        pairs = con.execute("SELECT count(*) FROM posters").fetchall()[0][0]
    (run1, status1, _), (run2, status2, counts2) = runs
    assert (status1, status2) == ("crashed", "completed")
    counts2 = json.loads(counts2)
    final = committed(root, "generate")
    # Work committed before the kill is kept; only the rest is redone, and nothing upstream.
    assert {k: r for k, r in final.items() if r == run1} == first
    assert counts2["generate"]["processed"] == pairs - len(first) == sum(r == run2 for r in final.values())
    assert counts2["preferences"]["processed"] == 0 and counts2["item_keywords"]["processed"] == 0
