"""`pmg train-soft-prompt` and `pmg evaluate` end to end on a tiny warehouse, tiny random models, procedural posters."""
import csv
import math
import os
from pathlib import Path

import duckdb
import pandas as pd
import pytest

from flows.cli import main
from tasks.evaluation import VARIANT_TITLES


@pytest.fixture(scope="module")
def world(tmp_path_factory, tiny_dirs):
    from tasks.miniworld.posters import render_movie_posters
    from warehouse.ingest import ingest
    from warehouse.synth import synthesize

    base = tmp_path_factory.mktemp("method_cli")
    data = synthesize(base / "ml", users=4, movies=60, ratings=4 * 22, seed=3)
    root = base / "wh"
    root.mkdir()
    (root / "pmg.toml").write_text("[models]\n" + "".join(f'{k} = "{tiny_dirs[k]}"\n' for k in ("llm", "sd", "clip")))
    ingest(data, root)
    movies = pd.read_csv(data / "movies.csv")
    render_movie_posters([(int(m), g.split("|")) for m, g in zip(movies.movieId, movies.genres)], base / "posters", 32)
    _store_keywords(root, movies.movieId.tolist())
    return {"root": root, "posters": base / "posters", "base": base}


def _store_keywords(root, movie_ids):
    """Keywords as a pipeline run would have stored them (the LLM path is tested in test_evaluation.py)."""
    from tasks.evaluation import select_pairs
    from warehouse.db import connect_reader, connect_writer, publish

    with connect_reader(root) as con:
        pairs = select_pairs(con).pairs
    items = pd.DataFrame({"movie_id": movie_ids, "keywords": [["bold colours", f"kw{m}"] for m in movie_ids]})
    prefs = pd.DataFrame({"user_id": [p.user_id for p in pairs], "keywords": [["dark", "noir"] for _ in pairs],
                          "history_fingerprint": [p.history_fingerprint for p in pairs]})
    with connect_writer(root) as con:
        con.register("items", items)
        con.register("prefs", prefs)
        con.execute("INSERT INTO item_keywords BY NAME SELECT * FROM items")
        con.execute("INSERT INTO user_preferences BY NAME SELECT * FROM prefs")
        publish(con, root, ["item_keywords", "user_preferences"])


@pytest.fixture(autouse=True)
def _restore_env():
    saved = dict(os.environ)  # the CLI configures Prefect's environment for its process
    yield
    for k in set(os.environ) - set(saved):
        del os.environ[k]
    os.environ.update(saved)


def _pmg(world, *argv):
    return main(["--warehouse", str(world["root"]), *argv])


def _sql(world, query, params=None):
    from warehouse.db import connect_reader

    with connect_reader(world["root"]) as con:
        return con.execute(query, params or []).fetchall()


def _finite(x):
    return x != "" and math.isfinite(float(x))


def test_train_then_evaluate_then_rerun(world, capsys):
    ck = world["base"] / "soft"
    assert _pmg(world, "train-soft-prompt", "--posters", str(world["posters"]), "--out", str(ck), "--steps", "2",
                "--size", "16", "--limit-users", "3", "--batch", "2", "--eval-every", "1", "--lr", "0.05") == 0
    out = capsys.readouterr().out
    assert "soft prompt:" in out and (ck / "soft_prompt.safetensors").is_file()
    assert (ck / "loss.csv").is_file() and (ck / "loss.png").is_file()
    (n, steps), = _sql(world, "SELECT examples, steps FROM soft_prompt_checkpoints")
    assert n == 3 and steps == 2

    from pmg_models.checkpoint import save_safetensors
    from tests.method_train.test_lpips import _weights

    save_safetensors(world["base"] / "lpips.safetensors", _weights())
    args = ["evaluate", "--posters", str(world["posters"]), "--soft-prompt", str(ck), "--limit-users", "2",
            "--steps", "2", "--size", "32", "--lpips-weights", str(world["base"] / "lpips.safetensors")]
    assert _pmg(world, *args) == 0
    printed = capsys.readouterr()
    assert "keywords" in printed.err and "2/2 lists" in printed.err and "2/2 pairs" in printed.err  # progress
    run_id = _sql(world, "SELECT run_id FROM runs WHERE flow = 'evaluate'")[0][0]
    out_dir = world["root"] / "evaluations" / run_id
    md = (out_dir / "summary.md").read_text()
    assert all(title in md for title in VARIANT_TITLES.values()) and "skipped" not in md.split("## Notes")[0]
    assert "LPIPS (AlexNet" in md
    assert "| variant | d_p text > baseline |" in md  # the blend's parts compared one by one
    assert "| variant | pairs in taste | d_p > baseline |" in md  # and the pairs split by the user's taste
    assert "| variant | n = 1 | n = 2 |" in md  # and by number of candidates (the run has 2)
    sweep = list(csv.DictReader(open(out_dir / "candidates.csv")))
    assert [(r["candidates"], r["variant"]) for r in sweep] == [(n, v) for n in ("1", "2")
                                                                for v in ("baseline", "pmg", "keywords", "soft")]
    assert (out_dir / "alpha_sweep.png").read_bytes()[:4] == b"\x89PNG"
    from PIL import Image

    with Image.open(out_dir / "pairs.png") as sheet:   # 2 pairs × (target poster, 4 variants, 3 history posters)
        assert sheet.size[0] > sheet.size[1] > 0
    assert "grid:" in printed.out
    assert "candidates.csv" in printed.out.split("tables:")[1].splitlines()[0]  # the by-candidates table is listed
    assert "  PMG (keywords + soft embeddings): d_p > baseline in " in printed.out  # the headline, per variant
    assert "of pairs, Δ d_t " in printed.out and "(in the user's taste: " in printed.out
    summary = list(csv.DictReader(open(out_dir / "summary.csv")))
    assert [r["variant"] for r in summary] == ["baseline", "pmg", "keywords", "soft"]
    assert all(_finite(r[k]) for r in summary for k in ("mean_d_p", "mean_d_t", "mean_ssim_target", "mean_ssim_history",
                                                        "mean_d_p_image", "mean_d_t_image", "mean_lpips_target",
                                                        "mean_lpips_history"))
    assert all(_finite(r[k]) for r in summary[1:] for k in ("win_rate_d_p", "rel_change_d_t", "rel_change_lpips_history"))
    assert all(int(r["pairs_in_taste"]) + int(r["pairs_outside_taste"]) == 2 for r in summary)
    rows = list(csv.DictReader(open(out_dir / "results.csv")))
    assert len(rows) == 4 * 2 * 2 * 6  # variants x pairs x candidates x alphas
    assert all((out_dir / r["image_path"]).is_file() for r in rows)
    (count, finite, per_alpha), = _sql(world, "SELECT count(*), count(*) FILTER (WHERE isfinite(d_p) AND isfinite(d_t) "
                                       "AND isfinite(z) AND isfinite(ssim_target)), max(n) FROM (SELECT *, count(*) "
                                       "FILTER (WHERE selected) OVER (PARTITION BY variant, user_id, alpha) AS n "
                                       "FROM evaluations WHERE run_id = ?)", [run_id])
    assert count == len(rows) == finite and per_alpha == 1  # one selected candidate per (variant, pair, alpha)

    assert "0 movies' poster keywords and 0 users' preference keywords were generated" in md  # stored ones used

    # Same --run-id: the run's rows are replaced (here by a smaller run), not added to.
    assert _pmg(world, *args, "--run-id", run_id, "--candidates", "1", "--steps", "1") == 0
    assert _sql(world, "SELECT count(*) FROM evaluations WHERE run_id = ?", [run_id])[0][0] == count // 2
    assert _sql(world, "SELECT count(*) FROM runs WHERE run_id = ?", [run_id])[0][0] == 1

    # No soft prompt, no posters: a new run; soft variants are skipped and said so; image scores are NULL.
    assert _pmg(world, "evaluate", "--limit-users", "1", "--steps", "1", "--size", "32", "--candidates", "1") == 0
    runs = _sql(world, "SELECT run_id FROM runs WHERE flow = 'evaluate' ORDER BY started_at")
    assert len(runs) == 2
    md = (world["root"] / "evaluations" / runs[1][0] / "summary.md").read_text()
    assert "skipped: no soft prompt given" in md and VARIANT_TITLES["soft"] in md and "LPIPS skipped" in md
    (variants, images), = _sql(world, "SELECT list(DISTINCT variant ORDER BY variant), count(d_t_image) FROM evaluations "
                               "WHERE run_id = ?", [runs[1][0]])
    assert variants == ["baseline", "keywords"] and images == 0


def test_clear_errors(world, capsys):
    assert _pmg(world, "evaluate", "--lpips-weights", "/nope.safetensors") == 1
    assert "--lpips-weights needs --posters" in capsys.readouterr().err
    assert _pmg(world, "evaluate", "--posters", str(world["posters"]), "--lpips-weights", "/nope.safetensors") == 1
    assert "/nope.safetensors do not exist" in capsys.readouterr().err
    assert _pmg(world, "train-soft-prompt", "--posters", str(world["base"] / "missing"), "--out", "x") == 1
    assert "posters directory" in capsys.readouterr().err
    assert _pmg(world, "evaluate", "--alphas", "0,2") == 1
    assert "--alphas" in capsys.readouterr().err
    # --alpha is checked before any model loads (it once failed only at the summary, after every image)
    assert _pmg(world, "evaluate", "--alpha", "2", "--llm", str(world["base"] / "no-llm")) == 1
    assert "alpha must lie in [0, 1], got 2.0" in capsys.readouterr().err
    with pytest.raises(SystemExit):  # every --seed is checked by the parser
        _pmg(world, "evaluate", "--seed", "-1")
    assert "argument --seed: must be a non-negative integer" in capsys.readouterr().err
    assert _pmg(world, "train-soft-prompt", "--posters", str(world["posters"]), "--out", "x", "--n-prefix", "0") == 1
    assert "must be at least 1, got P=0, M=4" in capsys.readouterr().err  # was a MindSpore crash after 30 s
    assert _pmg(world, "evaluate", "--size", "30") == 1  # the model's size rule, before any keyword is generated
    err = capsys.readouterr().err
    assert "must be multiples of" in err and "keywords" not in err, err
    world_soft = Path(__file__).resolve().parents[2] / "weights" / "miniworld" / "soft_prompt.safetensors"
    assert _pmg(world, "evaluate", "--soft-prompt", str(world_soft)) == 1  # trained for the world's models
    err = capsys.readouterr().err
    assert "was trained for the LLM checkpoint" in err and "keywords" not in err, err
    assert _pmg(world, "evaluate", "--world-reference", "--size", "48") == 1
    assert "48 does not divide 128" in capsys.readouterr().err
