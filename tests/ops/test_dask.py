"""The same backfill on a local Dask cluster (2 worker processes) matches the thread runner byte for byte."""
import pytest

from tests.ops.conftest import FAST
from warehouse.db import connect_reader

distributed = pytest.importorskip("distributed")


def worker_state():
    """Run on each Dask worker: models loaded by this process, writer connections held."""
    from tasks import resources
    from warehouse import db

    return {"loads": dict(resources.LOADS), "writers": len(db._HELD)}


def outputs(root):
    with connect_reader(root) as con:
        gens = con.execute("SELECT user_id, target_movie_id, candidate, seed, image_sha256 FROM generations "
                           "ORDER BY ALL").fetchall()
        scores = con.execute("SELECT g.user_id, g.target_movie_id, g.candidate, s.d_p, s.d_t, s.z, s.selected "
                             "FROM scores s JOIN generations g USING (generation_id) ORDER BY 1, 2, 3").fetchall()
        prefs = con.execute("SELECT user_id, keywords FROM user_preferences ORDER BY 1").fetchall()
    return gens, scores, prefs


def test_backfill_on_dask_matches_thread_runner(backfilled, make_warehouse):
    from flows.backfill import backfill
    from flows.dask_runner import dask_task_runner, local_cluster_kwargs

    thread_root, on_threads = backfilled   # the same backfill on the thread runner
    dask_root = make_warehouse("dask")
    with distributed.LocalCluster(**local_cluster_kwargs(2)) as cluster, distributed.Client(cluster) as client:
        on_dask = backfill.with_options(task_runner=dask_task_runner(cluster.scheduler_address))(
            warehouse=str(dask_root), targets="holdout", **FAST)
        states = client.run(worker_state)
    assert on_dask["counts"] == on_threads["counts"]
    assert on_dask["counts"]["generate"]["processed"] >= 4
    gens_t, scores_t, prefs_t = outputs(thread_root)
    gens_d, scores_d, prefs_d = outputs(dask_root)
    assert gens_d == gens_t and prefs_d == prefs_t          # same seeds, byte-identical PNGs (sha256)
    assert [s[:3] + s[6:] for s in scores_d] == [s[:3] + s[6:] for s in scores_t]   # same selection
    for a, b in zip(scores_d, scores_t):
        assert a[3:6] == pytest.approx(b[3:6], rel=1e-6, abs=1e-6)
    # both workers ran chunks, each loaded a model at most once, none opened the warehouse
    assert len(states) == 2
    assert all(n <= 1 for s in states.values() for n in s["loads"].values()), states
    assert sum(s["loads"].get("sd", 0) for s in states.values()) >= 1
    assert all(s["writers"] == 0 for s in states.values())
    with connect_reader(dask_root) as con:  # the flow process's memory says nothing of the workers'
        assert con.execute("SELECT peak_rss_mb FROM run_metrics").fetchall() == [(None,)]


def test_the_memory_check_counts_the_processes_that_load_models_on_this_machine():
    from prefect.task_runners import ThreadPoolTaskRunner
    from prefect_dask import DaskTaskRunner

    from flows.dask_runner import dask_task_runner, model_processes

    assert model_processes(ThreadPoolTaskRunner(max_workers=2)) == 1       # this process
    assert model_processes(dask_task_runner(n_workers=3)) == 3               # a temporary local cluster
    assert model_processes(DaskTaskRunner(address="tcp://10.0.0.5:8786")) == 0  # workers elsewhere
