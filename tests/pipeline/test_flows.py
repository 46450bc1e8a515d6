"""Backfill and nightly end to end on tiny models and a real Prefect API (one per session)."""
import collections
import shutil

import pytest

from tasks import resources
from tests.pipeline.conftest import FAST, check_invariants
from warehouse.db import connect_reader
from warehouse.ingest import ingest


def calls():
    return dict(resources.CALLS)


@pytest.fixture(scope="module")
def backfilled(prefect_api, make_warehouse_module):
    from flows.backfill import backfill

    root = make_warehouse_module("bf")
    resources.reset()
    result = backfill(warehouse=str(root), targets="holdout", **FAST)
    assert all(n <= 1 for n in resources.LOADS.values())  # each model loaded at most once per process
    return root, result, calls()


@pytest.fixture(scope="module")
def make_warehouse_module(tmp_path_factory, tiny_models, dataset):
    tmp = tmp_path_factory.mktemp("flows")

    def make(name):
        root = tmp / name
        root.mkdir()
        (root / "pmg.toml").write_text(
            f'[models]\nllm = "{tiny_models / "llm"}"\nsd = "{tiny_models / "sd"}"\nclip = "{tiny_models / "clip"}"\n')
        ingest(dataset, root)
        return root

    return make


def test_backfill_writes_contract_tables_with_lineage(backfilled):
    root, result, made = backfilled
    counts = result["counts"]
    pairs = counts["selection"]["pairs"]
    assert pairs >= 6
    assert counts["generate"] == {"processed": pairs, "skipped": 0, "failed": 0, "images": 2 * pairs}
    assert counts["score"]["processed"] == pairs and counts["preferences"]["failed"] == 0
    assert made["sd.generate"] == 2 * pairs
    assert check_invariants(root) == 2 * pairs
    with connect_reader(root) as con:
        q = lambda s: con.execute(s).fetchall()  # noqa: E731
        assert q("SELECT count(*) FROM posters") == [(pairs,)]
        run = q(f"SELECT status, json_extract_string(parameters, '$.targets'), checkpoints->>'sd', prompt_version, "
                f"code_version, counts IS NOT NULL FROM runs WHERE run_id = '{result['run_id']}'")[0]
        assert run[0] == "completed" and run[1] == "holdout" and len(run[2]) > 8 and run[3] and run[4] and run[5]
        # seeds per image, one generation per (candidate); selected = highest z
        assert q("SELECT count(DISTINCT seed) > 0, bool_and(seed IS NOT NULL) FROM generations") == [(True, True)]
        # candidates of a pair differ: by weight when there are preference keywords, else by seed
        assert q("SELECT count(*) FROM generations g JOIN user_preferences p USING (user_id) "
                 "GROUP BY g.user_id, g.target_movie_id, len(p.keywords) = 0 "
                 "HAVING count(DISTINCT CASE WHEN len(p.keywords) = 0 THEN g.seed ELSE g.weight END) < 2") == []
        assert q("SELECT count(*) FROM scores s JOIN (SELECT user_id, target_movie_id, max(z) AS z FROM scores "
                 "GROUP BY ALL) m USING (user_id, target_movie_id) WHERE s.selected AND s.z <> m.z") == [(0,)]
        # held-out movie is not part of the history the preferences were built from
        assert q("SELECT count(*) FROM user_preferences p JOIN posters USING (user_id) "
                 "WHERE list_contains(p.history_movie_ids, posters.target_movie_id)") == [(0,)]
        assert q("SELECT count(*) FROM item_keywords")[0][0] > pairs


def test_rerunning_a_finished_backfill_makes_zero_model_calls(backfilled):
    from flows.backfill import backfill

    root, first, _ = backfilled
    resources.reset()
    again = backfill(warehouse=str(root), targets="holdout", **FAST)
    assert calls() == {} and resources.LOADS == collections.Counter()
    for stage in ("item_keywords", "preferences", "generate", "score"):
        assert again["counts"][stage]["processed"] == 0 and again["counts"][stage]["skipped"] > 0


def test_nightly_recomputes_only_users_with_new_ratings(backfilled, dataset, tmp_path):
    from flows.nightly import nightly

    root, first, _ = backfilled
    with connect_reader(root) as con:
        user, target = con.execute("SELECT user_id, target_movie_id FROM posters ORDER BY 1 LIMIT 1").fetchall()[0]
        rated = {m for (m,) in con.execute(f"SELECT movie_id FROM ratings WHERE user_id = {user}").fetchall()}
        movie = con.execute("SELECT movie_id FROM item_keywords ORDER BY movie_id").fetchall()
        other = con.execute(f"SELECT max(rated_at) FROM ratings WHERE user_id = {user}").fetchall()[0][0]
    new_movie = next(m for (m,) in movie if m not in rated)
    changed = tmp_path / "ml-next"
    shutil.copytree(dataset, changed)
    ts = int(other.timestamp()) - 10**6  # an older liked rating: the held-out target stays, the history changes
    data = (changed / "ratings.csv").read_bytes()
    eol = b"\r\n" if b"\r\n" in data else b"\n"
    (changed / "ratings.csv").write_bytes(data.rstrip(b"\r\n") + eol + f"{user},{new_movie},5.0,{ts}".encode() + eol)
    resources.reset()
    result = nightly(warehouse=str(root), source=str(changed))
    c = result["counts"]
    assert result["ingest"]["changed_users"] == 1
    # Only that user's preferences are recomputed; its images only if its keywords changed
    # (same keywords and seeds would give the same images), and nothing of any other user.
    regenerated = c["generate"]["processed"]
    assert c["preferences"]["processed"] == 1 and regenerated <= 1 and c["score"]["processed"] == regenerated
    assert calls().get("sd.generate", 0) == 2 * regenerated and calls()["llm.generate"] <= 2
    assert c["generate"]["skipped"] == first["counts"]["selection"]["pairs"] - regenerated
    check_invariants(root)
    with connect_reader(root) as con:
        touched = con.execute(f"SELECT stage, item_key FROM work_ledger WHERE run_id = '{result['run_id']}'").fetchall()
    assert ("preferences", str(user)) in touched
    assert all(k == str(user) or k.startswith(f"{user}:") or stage == "item_keywords" for stage, k in touched)


def test_failed_rows_are_isolated_reported_and_retried(backfilled, monkeypatch):
    from flows.backfill import backfill

    root, _, _ = backfilled
    with connect_reader(root) as con:
        users = [u for (u,) in con.execute("SELECT DISTINCT user_id FROM ratings ORDER BY 1 LIMIT 3").fetchall()]
        movie = con.execute("SELECT min(movie_id) FROM item_keywords").fetchall()[0][0]
    monkeypatch.setenv("PMG_TEST_FAIL", f"generate:{users[1]}:{movie}")
    failed = backfill(warehouse=str(root), movies=[movie], limit_users=3, **FAST)
    assert failed["counts"]["generate"]["failed"] == 1 and failed["counts"]["generate"]["processed"] == 2
    with connect_reader(root) as con:
        err = con.execute("SELECT error FROM work_ledger WHERE status = 'failed'").fetchall()
    assert len(err) == 1 and "injected failure" in err[0][0]
    monkeypatch.delenv("PMG_TEST_FAIL")
    resources.reset()
    retried = backfill(warehouse=str(root), movies=[movie], limit_users=3, **FAST)
    assert retried["counts"]["generate"]["processed"] == 1 and calls()["sd.generate"] == 2
    check_invariants(root)


def test_soft_prompt_adds_preference_embeddings_used_by_generation(prefect_api, make_warehouse_module, tiny_models):
    import json

    import numpy as np

    from flows.backfill import backfill
    from pmg_models import soft_prompt as sp

    root = make_warehouse_module("soft")
    lm = resources.llm(tiny_models / "llm")
    width = json.loads((tiny_models / "sd" / "text_encoder" / "config.json").read_text())["hidden_size"]
    cfg = sp.SoftPromptConfig.for_models(lm.config, width, resources.fingerprint(tiny_models / "llm"),
                                         resources.fingerprint(tiny_models / "sd"), n_prefix=2, n_tokens=2)
    sp.save(sp.SoftPrompt(cfg, seed=1), root / "soft.safetensors")
    with open(root / "pmg.toml", "a") as f:
        f.write('soft_prompt = "soft.safetensors"\n')
    with connect_reader(root) as con:
        movie = con.execute("SELECT min(movie_id) FROM movies").fetchall()[0][0]
    resources.reset()
    result = backfill(warehouse=str(root), movies=[movie], limit_users=2, **{**FAST, "candidates": 1})
    assert result["counts"]["generate"]["processed"] == 2 and calls()["llm.soft_embed"] == 2
    with connect_reader(root) as con:
        rows = con.execute("SELECT n_tokens, dim, path FROM preference_embeddings").fetchall()
        lineage = con.execute(f"SELECT checkpoints->>'soft_prompt' FROM runs WHERE run_id = '{result['run_id']}'").fetchall()
    assert len(rows) == 2 and all(n == 2 and d == width for n, d, _ in rows)
    assert all(np.load(root / p).shape == (2, width) for _, _, p in rows)
    assert lineage[0][0] and check_invariants(root) == 2


def test_a_machine_that_holds_one_model_at_a_time_still_runs_every_stage(make_warehouse_module, tiny_models,
                                                                         monkeypatch):
    """Memory for the largest model (SD) but not for it next to another: each stage releases the models
    loaded before it, and the posters are byte for byte those of a run that kept all three."""
    from flows.backfill import backfill
    from pmg_models import info, runtime

    query = ("SELECT g.user_id, g.target_movie_id, g.candidate, g.image_sha256, s.d_p, s.d_t, s.selected "
             "FROM generations g JOIN scores s USING (generation_id) ORDER BY ALL")
    reference = make_warehouse_module("all-at-once")
    backfill(warehouse=str(reference), targets="holdout", **FAST)
    budget = int(1.02 * 4 * info.parameters(tiny_models / "sd"))

    def available():  # what MemAvailable would say: the budget minus the models this process holds
        return budget - sum(4 * (info.parameters(path) or 0) for _, path in resources._cache)

    root = make_warehouse_module("one-at-a-time")
    resources.clear_cache()
    resources.reset()
    monkeypatch.setattr(runtime, "available_host_memory", available)
    result = backfill(warehouse=str(root), targets="holdout", **FAST)
    assert resources.RELEASES["models"] == 2   # the Llama before SD, SD before CLIP
    assert set(resources.LOADS) == {"llm", "sd", "clip"} and all(n == 1 for n in resources.LOADS.values())
    assert result["counts"]["score"]["failed"] == 0 and result["counts"]["score"]["processed"] > 0
    with connect_reader(root) as con, connect_reader(reference) as ref:
        assert con.execute(query).fetchall() == ref.execute(query).fetchall()
