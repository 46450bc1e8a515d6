"""Small pieces of the operations layer, without models or a Prefect API."""
import pytest

from flows import artifacts, progress
from flows.dask_runner import local_cluster_kwargs, task_runner_for


def test_artifact_keys_are_valid_prefect_keys():
    assert artifacts.artifact_key("backfill", "summary") == "pmg-backfill-summary"
    assert artifacts.artifact_key("My_Run 2", "report") == "pmg-my-run-2-report"


def test_progress_is_forwarded_and_percent_covers_all_stages(monkeypatch):
    seen = []

    class Inner(progress.Progress):
        def advance(self, items, images=0, failed=0):
            seen.append(items)

    tee = artifacts.ArtifactProgress(Inner(), "pmg-x-progress", "test")
    monkeypatch.setattr(tee, "_update", lambda: None)
    tee.stage("item_keywords", 4, "movies")
    tee.advance(2)
    assert tee.percent() == 12.5 and seen == [2]
    tee.end_stage()
    tee.stage("preferences", 0, "users", skipped=3)   # nothing to do counts as done
    assert tee.percent() == 50.0
    tee.finish()
    assert tee.percent() == 100.0


def test_artifact_failures_never_fail_the_run(monkeypatch, caplog):
    import prefect.artifacts

    def refuse(*args, **kwargs):
        raise RuntimeError("API unreachable")

    for name in ("create_progress_artifact", "create_table_artifact", "create_markdown_artifact"):
        monkeypatch.setattr(prefect.artifacts, name, refuse)
    tee = artifacts.ArtifactProgress(progress.Progress(), "pmg-x-progress", "x")
    tee.stage("item_keywords", 1, "movies")
    tee.advance(1)
    artifacts.create_artifacts("backfill", "r1", {"stages": {}, "processed": 0, "skipped": 0, "failed": 0,
                                                  "images": 0})
    assert "not recorded in Prefect: API unreachable" in caplog.text


def test_report_markdown_handles_a_run_that_generated_nothing():
    m = {"flow": "nightly", "run_id": "n1", "users": 6, "pairs": 6, "images": 0, "processed": 0, "skipped": 44,
         "failed": 0, "seconds": 0.4, "pairs_per_hour": None, "posters": 0, "mean_z": None, "mean_d_p": None,
         "mean_d_t": None, "gallery": None}
    text = artifacts.report_markdown(m)
    assert "— pairs generated/hour" in text and "Gallery: not written" in text and "n1" in text


def test_runner_selection():
    assert type(task_runner_for("thread")).__name__ == "ThreadPoolTaskRunner"
    runner = task_runner_for("dask", n_workers=3)
    assert type(runner).__name__ == "DaskTaskRunner" and runner.cluster_kwargs == local_cluster_kwargs(3)
    assert task_runner_for("dask", "tcp://127.0.0.1:8786").address == "tcp://127.0.0.1:8786"
    with pytest.raises(ValueError, match="--dask-address needs --runner dask"):
        task_runner_for("thread", "tcp://127.0.0.1:8786")
    for n in (-1, 0):  # 0 once fell back to the default of 2 workers
        with pytest.raises(ValueError, match="--dask-workers"):
            task_runner_for("dask", n_workers=n)


def test_pmg_runner_env_selects_dask_for_flows_and_deployments(monkeypatch):
    from flows import runner

    monkeypatch.setenv("PMG_RUNNER", "dask")
    monkeypatch.setenv("PMG_DASK_ADDRESS", "tcp://127.0.0.1:8786")
    assert runner.task_runner().address == "tcp://127.0.0.1:8786"
    monkeypatch.setenv("PMG_RUNNER", "ray")
    with pytest.raises(ValueError, match="unknown task runner 'ray'"):
        runner.task_runner()
    monkeypatch.delenv("PMG_RUNNER")
    monkeypatch.delenv("PMG_DASK_ADDRESS")
    assert type(runner.task_runner()).__name__ == "ThreadPoolTaskRunner"
