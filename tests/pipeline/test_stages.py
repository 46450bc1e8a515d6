"""Stage functions called directly with the tiny models (no flow around them)."""
from tasks import stages
from tasks.pmg import history

PARAMS = {"max_new_tokens_pref": 64, "n_pref_keywords": 8, "prompt_style": "vicuna", "seed": 0, "run_id": 1,
          "soft_prompt": None}


def test_a_history_too_long_for_the_llm_context_is_shortened_not_failed(tiny_models, tmp_path):
    from tasks import resources

    items = [{"movie_id": m, "title": f"A Rather Long Movie Title Number {m} (1999)",
              "genres": ["Drama", "Thriller", "Mystery"], "rating": 5.0, "rated_at": 1000 - m} for m in range(1, 41)]
    item_kw = {str(m): [f"keyword{m}a", f"keyword{m}b", "rain soaked city", "detectives", "night"]
               for m in range(1, 41)}
    row = {"user_id": 7, "history": items, "item_keywords": item_kw, "fingerprint": "fp", "history_fingerprint": "h"}
    p = {**PARAMS, "models": {"llm": str(tiny_models / "llm")}, "root": str(tmp_path)}
    lm = resources.llm(p["models"]["llm"])
    whole = stages._preference_prompt(history.serialize_items(items, {int(k): v for k, v in item_kw.items()}), p)
    assert len(lm.tokenizer.encode(whole, bos=True)) + 64 > lm.config.max_position_embeddings  # would not fit

    res = stages.preferences([row], p)
    assert [o[2] for o in res.outcome] == ["done"]
    kept = res.tables["user_preferences"][0]["history_movie_ids"]
    assert 1 <= len(kept) < len(items) and kept == list(range(1, len(kept) + 1))  # best-first prefix
