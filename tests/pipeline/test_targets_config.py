"""Target and user selection, and the model config file (no models)."""
import pytest

from tasks import targets
from tasks.config import load_config, tiny_defaults
from warehouse.db import connect_writer


@pytest.fixture
def wh(make_warehouse):
    return make_warehouse()


def test_holdout_targets_exclude_the_held_out_movie_from_history(wh):
    with connect_writer(wh) as con:
        users = targets.select_users(con)
        sel = targets.select_targets(con, users, "holdout")
        hist = targets.histories(con, sel, 5)
        last_liked = dict(con.execute(
            "SELECT user_id, arg_max(movie_id, (rated_at, movie_id)) FROM ratings WHERE rating >= 4 GROUP BY 1").fetchall())
    assert sel.pairs and len({u for u, _ in sel.pairs}) == len(sel.pairs)  # one target per user
    for u, m in sel.pairs:
        assert m == last_liked[u]
        assert m not in [h["movie_id"] for h in hist[u]]
        assert 0 < len(hist[u]) <= 5
        ratings = [h["rating"] for h in hist[u]]
        assert ratings == sorted(ratings, reverse=True)


def test_movie_targets_file_targets_users_file_and_limit(wh, tmp_path):
    with connect_writer(wh) as con:
        users = targets.select_users(con)
        movie = con.execute("SELECT min(movie_id) FROM movies").fetchall()[0][0]
        assert targets.select_users(con, limit=3) == users[:3]
        (tmp_path / "u.csv").write_text(f"user_id\n{users[1]}\n{users[3]}\n")
        assert targets.select_users(con, tmp_path / "u.csv") == [users[1], users[3]]
        sel = targets.select_targets(con, users[:2], movies=[movie])
        assert sel.pairs == [(users[0], movie), (users[1], movie)] and not sel.exclude
        (tmp_path / "t.csv").write_text(f"user_id,movie_id\n{users[0]},{movie}\n999999,{movie}\n")
        sel = targets.select_targets(con, users, str(tmp_path / "t.csv"))
        assert sel.pairs == [(users[0], movie)]
        with pytest.raises(ValueError, match="not in the warehouse"):
            targets.select_targets(con, users, movies=[10**9])
        with pytest.raises(ValueError, match="exactly one"):
            targets.select_targets(con, users)
        with pytest.raises(ValueError, match="does not exist"):
            targets.select_targets(con, users, str(tmp_path / "missing.csv"))


def test_config_defaults_to_tiny_models_and_reads_toml(tmp_path):
    assert load_config(tmp_path) == tiny_defaults(tmp_path)
    (tmp_path / "pmg.toml").write_text('[models]\nllm = "a"\nsd = "/abs/sd"\nclip = "c"\n[runtime]\ndevice = "cpu"\n')
    cfg = load_config(tmp_path)
    assert cfg.llm == tmp_path / "a" and str(cfg.sd) == "/abs/sd" and cfg.soft_prompt is None
    (tmp_path / "bad.toml").write_text('[models]\nllm = "a"\n')
    with pytest.raises(ValueError, match="needs sd, clip"):
        load_config(tmp_path, tmp_path / "bad.toml")
