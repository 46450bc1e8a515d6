"""Inputs of each stage, one row per item with its key and input fingerprint.

The fingerprint covers everything the stage's output depends on (upstream outputs, checkpoint
fingerprints, prompt version, parameters), so the ledger can tell exactly what changed.
"""
from __future__ import annotations

import pandas as pd

from tasks.pmg import conditioning, history
from warehouse.ledger import fingerprint, sql


def _lookup(con, query: str, name: str, frame: pd.DataFrame) -> list[tuple]:
    con.register(name, frame)
    try:
        return con.execute(sql(query)).fetchall()
    finally:
        con.unregister(name)


def _ids(values, column: str) -> pd.DataFrame:
    return pd.DataFrame({column: pd.Series(sorted(set(values)), dtype="int64")})


def item_keywords_map(con, movie_ids) -> dict[int, list[str]]:
    rows = _lookup(con, "pipeline_item_keywords", "ids", _ids(movie_ids, "movie_id"))
    return {m: list(k or []) for m, k in rows}


def item_inputs(con, movie_ids, p: dict) -> list[dict]:
    """item_keywords stage: one row per movie."""
    rows = _lookup(con, "pipeline_movies", "ids", _ids(movie_ids, "movie_id"))
    out = []
    for movie_id, title, genres in rows:
        g = list(genres or [])
        fp = fingerprint("item", p["checkpoints"]["llm"], p["prompt_version"], title, g, p["n_item_keywords"],
                         p["max_new_tokens_item"], p["seed"])
        out.append({"key": str(movie_id), "fingerprint": fp, "movie_id": movie_id, "title": title or "", "genres": g})
    return out


def preference_inputs(con, hist: dict[int, list[dict]], p: dict) -> list[dict]:
    """preferences stage: one row per user (history + the history items' keywords)."""
    kw = item_keywords_map(con, [h["movie_id"] for items in hist.values() for h in items])
    out = []
    for user_id, items in hist.items():
        hfp = history.history_fingerprint(items, p["n_history"], p["prompt_version"])
        item_kw = {str(h["movie_id"]): kw.get(h["movie_id"], []) for h in items}
        fp = fingerprint("pref", p["checkpoints"]["llm"], p["checkpoints"].get("soft_prompt"), hfp, item_kw,
                         p["n_pref_keywords"], p["max_new_tokens_pref"], p["seed"])
        out.append({"key": str(user_id), "fingerprint": fp, "user_id": user_id, "history": items,
                    "item_keywords": item_kw, "history_fingerprint": hfp})
    return out


def generation_inputs(con, pairs: list[tuple[int, int]], p: dict) -> list[dict]:
    """generate stage: one row per (user, target) whose preferences and target keywords exist."""
    users = _ids([u for u, _ in pairs], "user_id")
    prefs = {u: list(k or []) for u, k, _ in _lookup(con, "pipeline_preferences", "ids", users)}
    soft = dict(_lookup(con, "pipeline_embeddings", "ids", users)) if p.get("soft_prompt") else {}
    targets = sorted({t for _, t in pairs})
    kw = item_keywords_map(con, targets)
    titles = {m: t for m, t, _ in _lookup(con, "pipeline_movies", "ids", _ids(targets, "movie_id"))}
    out = []
    for user_id, movie_id in pairs:
        if user_id not in prefs or movie_id not in kw or (p.get("soft_prompt") and user_id not in soft):
            continue  # upstream failed: retried on the next run
        # user and target are inputs too: they pick the seeds
        fp = fingerprint("gen", user_id, movie_id, p["checkpoints"]["sd"], titles.get(movie_id, ""), kw[movie_id], prefs[user_id],
                         p["candidates"], p["weights"], p["steps"], p["guidance"], p["height"], p["width"],
                         p["seed"], conditioning.negative_prompt("movie"), soft.get(user_id), p["soft_scale"],
                         p.get("title_in_prompt", True))
        out.append({"key": f"{user_id}:{movie_id}", "fingerprint": fp, "user_id": user_id,
                    "target_movie_id": movie_id, "title": titles.get(movie_id, ""),
                    "target_item_keywords": kw[movie_id], "pref_keywords": prefs[user_id],
                    "soft_path": soft.get(user_id)})
    return out


def score_inputs(con, pairs: list[tuple[int, int]], p: dict) -> list[dict]:
    """score stage: one row per (user, target) with its generated candidates."""
    frame = pd.DataFrame(pairs, columns=["user_id", "target_movie_id"]).astype("int64")
    gens: dict[tuple[int, int], list[dict]] = {}
    for u, t, gid, cand, path, sha in _lookup(con, "pipeline_generations", "pairs", frame):
        gens.setdefault((u, t), []).append({"generation_id": gid, "candidate": cand, "image_path": path,
                                            "sha": sha})
    prefs = {u: list(k or []) for u, k, _ in
             _lookup(con, "pipeline_preferences", "ids", _ids([u for u, _ in pairs], "user_id"))}
    targets = sorted({t for _, t in pairs})
    kw = item_keywords_map(con, targets)
    titles = {m: t for m, t, _ in _lookup(con, "pipeline_movies", "ids", _ids(targets, "movie_id"))}
    out = []
    for (user_id, movie_id), g in sorted(gens.items()):
        target_text = ", ".join(conditioning.target_keywords(titles.get(movie_id, ""), kw.get(movie_id, []),
                                                             with_title=p.get("title_in_prompt", True)))
        pref_text = ", ".join(prefs.get(user_id, []))
        fp = fingerprint("score", p["checkpoints"]["clip"], p["alpha"], [(x["generation_id"], x["sha"]) for x in g],
                         target_text, pref_text)
        out.append({"key": f"{user_id}:{movie_id}", "fingerprint": fp, "user_id": user_id,
                    "target_movie_id": movie_id, "generations": g, "target_text": target_text,
                    "pref_text": pref_text})
    return out
