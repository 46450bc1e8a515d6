"""A finished backfill leaves Prefect artifacts (summary, progress, report), a run_metrics row and a gallery."""
import json

from flows import cli
from flows.artifacts import artifact_key


def read_artifact(key: str):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    with get_client(sync_client=True) as client:
        found = client.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[key])))
    assert found, f"no artifact with key {key}"
    return max(found, key=lambda a: a.created)


def test_run_metrics_row_visible_to_pmg_sql(backfilled, capsys):
    root, result = backfilled
    query = (f"SELECT flow, users, pairs, images, processed, failed, posters, mean_z IS NOT NULL, gallery, "
             f"peak_rss_mb FROM run_metrics WHERE run_id = '{result['run_id']}'")
    assert cli.main(["--warehouse", str(root), "sql", query, "--format", "json"]) == 0
    (row,) = json.loads(capsys.readouterr().out)
    counts = result["counts"]
    pairs = counts["selection"]["pairs"]
    assert row["flow"] == "backfill" and row["pairs"] == pairs and row["posters"] == pairs
    assert row["images"] == counts["generate"]["images"] == 2 * pairs and row["failed"] == 0
    assert row["processed"] == sum(counts[s]["processed"] for s in ("item_keywords", "preferences", "generate", "score"))
    assert row["gallery"] == str(root / "gallery" / "index.html") == result["gallery"]
    assert (root / "gallery" / "index.html").is_file()
    # the thread runner's models live in this process: its peak since the run started (MB)
    assert 50 < row["peak_rss_mb"] < 24 * 1024


def test_prefect_artifacts_summary_progress_report(backfilled):
    root, result = backfilled
    summary = read_artifact(artifact_key("backfill", "summary"))
    rows = json.loads(summary.data) if isinstance(summary.data, str) else summary.data
    by_stage = {r["stage"]: r for r in rows}
    assert set(by_stage) == {"item_keywords", "preferences", "generate", "score", "total"}
    assert by_stage["generate"]["images"] == result["counts"]["generate"]["images"]
    assert summary.type == "table" and result["run_id"] in summary.description

    report = read_artifact(artifact_key("backfill", "report"))
    assert report.type == "markdown" and result["run_id"] in report.data
    assert str(root / "gallery" / "index.html") in report.data and "selected posters" in report.data
    assert "| peak memory of the flow process | " in report.data and " MB |" in report.data

    bar = read_artifact(artifact_key("backfill", "progress"))
    assert bar.type == "progress" and float(bar.data) == 100.0
