"""`pmg status`: recent runs with state and counts, and what the next nightly would recompute."""
import shutil

from flows import cli
from tests.ops.conftest import FAST
from flows.status import next_nightly
from warehouse.db import connect_reader
from warehouse.ingest import ingest


def status(root, capsys) -> str:
    assert cli.main(["--warehouse", str(root), "status"]) == 0
    return capsys.readouterr().out


def add_older_liked_rating(dataset, out, root) -> int:
    """A copy of the dataset where one user also liked a movie, long ago; returns that user."""
    with connect_reader(root) as con:
        user = con.execute("SELECT min(user_id) FROM posters").fetchone()[0]
        rated = {m for (m,) in con.execute(f"SELECT movie_id FROM ratings WHERE user_id = {user}").fetchall()}
        known = [m for (m,) in con.execute("SELECT movie_id FROM item_keywords ORDER BY 1").fetchall()]
        oldest = con.execute(f"SELECT min(rated_at) FROM ratings WHERE user_id = {user}").fetchone()[0]
    shutil.copytree(dataset, out)
    data = (out / "ratings.csv").read_bytes()
    eol = b"\r\n" if b"\r\n" in data else b"\n"
    line = f"{user},{next(m for m in known if m not in rated)},5.0,{int(oldest.timestamp()) - 86400}"
    (out / "ratings.csv").write_bytes(data.rstrip(b"\r\n") + eol + line.encode() + eol)
    return user


def test_status_lists_runs_and_nothing_pending_after_a_backfill(backfilled, capsys):
    root, result = backfilled
    text = status(root, capsys)
    assert result["run_id"] in text and "completed" in text
    assert f"pairs {result['counts']['selection']['pairs']}" in text
    assert "nothing to recompute" in text and "Failed items (retried by the next run): none" in text


def test_status_predicts_what_the_nightly_recomputes(prefect_api, make_warehouse, dataset, tmp_path, capsys):
    from flows.backfill import backfill
    from flows.nightly import nightly

    root = make_warehouse("wh")
    first = backfill(warehouse=str(root), targets="holdout", **FAST)
    user = add_older_liked_rating(dataset, tmp_path / "ml-next", root)
    ingest(tmp_path / "ml-next", root)
    plan = next_nightly(root)
    assert plan.users == [user] and plan.movies == []
    assert plan.pairs and all(u == user for u, _ in plan.pairs)
    text = status(root, capsys)
    assert "preferences of 1 users" in text and f"users: {user}" in text

    done = nightly(warehouse=str(root))
    c = done["counts"]
    assert c["preferences"]["processed"] == 1 and c["item_keywords"]["processed"] == 0
    assert c["generate"]["processed"] <= len(plan.pairs)
    after = status(root, capsys)
    assert "nothing to recompute" in after
    assert after.index(done["run_id"]) < after.index(first["run_id"])  # newest first
