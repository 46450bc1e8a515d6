"""Target and user selection, and the model config file (no models)."""
from pathlib import Path

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


def test_config_method_table_sets_run_defaults_that_flags_override(tmp_path):
    from flows import settings
    from pmg_models import llama
    from pmg_models import sd as sd_models
    from pmg_models import clip_tiny
    from tasks.pmg import conditioning

    for name, init in (("llm", llama.init_tiny), ("sd", sd_models.init_tiny), ("clip", clip_tiny.init_tiny)):
        init(tmp_path / name, seed=0)
    (tmp_path / "pmg.toml").write_text('[models]\nllm = "llm"\nsd = "sd"\nclip = "clip"\n'
                                       '[method]\nsteps = 7\nguidance = 3.0\ntitle_in_prompt = false\n')
    assert load_config(tmp_path).method == {"steps": 7, "guidance": 3.0, "title_in_prompt": False}
    p, _ = settings.resolve(tmp_path, {"guidance": 5.0, "steps": None})
    assert (p["steps"], p["guidance"], p["title_in_prompt"], p["candidates"]) == (7, 5.0, False, 2)
    # out-of-range flags are refused here, before any item runs (a negative seed once failed every item)
    for bad, message in (({"seed": -5}, "--seed must be a non-negative integer"), ({"alpha": 1.5}, "--alpha"),
                         ({"candidates": 0}, "--candidates"), ({"height": 30}, "--height")):
        with pytest.raises(ValueError, match=message):
            settings.resolve(tmp_path, bad)
    assert settings.resolve(tmp_path, {"seed": 2**63 - 1})[0]["seed"] == 2**63 - 1
    assert conditioning.target_keywords("Heat (1995)", ["crime"], with_title=False) == ["movie poster", "crime"]
    assert conditioning.target_keywords("Heat (1995)", ["crime"])[:3] == ["movie poster", "Heat", "named 'Heat'"]
    for bad, message in (('steps = "ten"', 'steps must be an integer, got \'ten\''), ("steps = true", "steps must be an integer"),
                         ('guidance = "x"', "guidance must be a number"), ("weights = []", "weights must be a non-empty list of numbers"),
                         ("title_in_prompt = \"no\"", "title_in_prompt must be true or false")):
        (tmp_path / "pmg.toml").write_text(f'[models]\nllm = "llm"\nsd = "sd"\nclip = "clip"\n[method]\n{bad}\n')
        with pytest.raises(ValueError, match=r"\[method\] " + message):
            load_config(tmp_path)
    (tmp_path / "pmg.toml").write_text('[models]\nllm = "llm"\nsd = "sd"\nclip = "clip"\n[method]\nguidance = 3\n')
    assert load_config(tmp_path).method == {"guidance": 3}  # an integer is a number
    (tmp_path / "pmg.toml").write_text('[models]\nllm = "llm"\nsd = "sd"\nclip = "clip"\n[method]\nstep = 7\n')
    with pytest.raises(ValueError, match=r"unknown key\(s\) \['step'\] in \[method\]"):
        load_config(tmp_path)


def test_a_soft_prompt_trained_for_other_checkpoints_is_refused_up_front():
    """Checked once per run by the backfill flow; before, every user's preference item failed with it."""
    from flows import settings
    from pmg_models.checkpoint import CheckpointError
    from tasks import resources

    world = Path(__file__).resolve().parents[2] / "weights" / "miniworld"
    right = {"llm": resources.fingerprint(world / "llama"), "sd": resources.fingerprint(world / "sd")}
    settings.check_soft_prompt({"soft_prompt": str(world / "soft_prompt.safetensors"), "checkpoints": right})
    settings.check_soft_prompt({"soft_prompt": None, "checkpoints": {}})
    with pytest.raises(CheckpointError, match="trained for the LLM checkpoint with fingerprint"):
        settings.check_soft_prompt({"soft_prompt": str(world / "soft_prompt.safetensors"),
                                    "checkpoints": {**right, "llm": "0123456789abcdef"}})
