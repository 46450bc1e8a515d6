"""Chunk adapters: rows of one chunk in, warehouse rows and ledger outcomes out.

Each stage builds prompts with the PMG method (tasks/pmg), makes batched model calls through the
process-level resources, and isolates failures per row: a failing batch is retried row by row, and
rows that still fail become 'failed' outcomes with the reason (retried on the next run).
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from tasks import resources
from tasks.pmg import conditioning, history, keywords, prompts, scoring
from warehouse import images, ledger, staging


@dataclass
class ChunkResult:
    tables: dict[str, list[dict]] = field(default_factory=dict)   # table -> rows
    outcome: list[tuple] = field(default_factory=list)            # (item_key, fingerprint, status, error)
    images: int = 0

    def done(self, key: str, fp: str) -> None:
        self.outcome.append((key, fp, "done", None))

    def failed(self, key: str, fp: str, error: BaseException | str) -> None:
        reason = error if isinstance(error, str) else f"{type(error).__name__}: {error}"
        self.outcome.append((key, fp, "failed", " ".join(reason.split())[:500]))


def _check_injected_failure(stage: str, key: str) -> None:
    # Tests set PMG_TEST_FAIL=<stage>:<key>[,...] to make one row fail inside a real chunk.
    wanted = os.environ.get("PMG_TEST_FAIL", "")
    if f"{stage}:{key}" in wanted.split(","):
        raise RuntimeError(f"injected failure for {stage} {key}")


def _isolated(stage: str, keys: list[str], batch_fn) -> list[tuple]:
    """batch_fn(indices) -> one result per index, over all rows; on error, again row by row.

    Returns (result, None) or (None, exception) per row.
    """
    def run(idx):
        for i in idx:
            _check_injected_failure(stage, keys[i])
        return batch_fn(idx)

    if not keys:
        return []
    try:
        return [(r, None) for r in run(list(range(len(keys))))]
    except Exception:  # noqa: BLE001 - find the failing rows one by one
        pass
    out = []
    for i in range(len(keys)):
        try:
            out.append((run([i])[0], None))
        except Exception as e:  # noqa: BLE001 - a failing row must not stop its chunk
            out.append((None, e))
    return out


# -- item keywords -----------------------------------------------------------------------------

def item_keywords(rows: list[dict], p: dict) -> ChunkResult:
    """Poster keywords of each movie (once per movie; reused by every user)."""
    res = ChunkResult(tables={"item_keywords": []})
    keys = [str(r["movie_id"]) for r in rows]
    texts = [prompts.build_item_prompt(r["title"], list(r["genres"] or []), "", p["n_item_keywords"], p["prompt_style"])
             for r in rows]

    def batch(idx):
        return _generate([texts[i] for i in idx], p, p["max_new_tokens_item"])

    for r, (raw, err) in zip(rows, _isolated("item_keywords", keys, batch)):
        key = str(r["movie_id"])
        if err is not None:
            res.failed(key, r["fingerprint"], err)
            continue
        parsed = keywords.parse_keywords(raw, p["n_item_keywords"])
        res.tables["item_keywords"].append({"movie_id": r["movie_id"], "keywords": parsed.keywords,
                                            "raw_output": raw, "parse_ok": parsed.ok, "run_id": p["run_id"]})
        res.done(key, r["fingerprint"])
    return res


# -- user preferences --------------------------------------------------------------------------

def preferences(rows: list[dict], p: dict) -> ChunkResult:
    """Preference keywords of each user from the serialized history, plus soft embeddings when configured."""
    soft = bool(p.get("soft_prompt"))
    res = ChunkResult(tables={"user_preferences": [], **({"preference_embeddings": []} if soft else {})})
    keys = [str(r["user_id"]) for r in rows]
    kept = {}  # row index -> the history items its prompt used

    def batch(idx):
        fitted = _fit_histories([rows[i] for i in idx], p)
        kept.update((i, items) for i, (items, _) in zip(idx, fitted))
        raw = _generate([_preference_prompt(text, p) for _, text in fitted], p, p["max_new_tokens_pref"])
        emb = _soft_embeddings([text for _, text in fitted], p) if soft else [None] * len(idx)
        return list(zip(raw, emb))

    for i, (r, (made, err)) in enumerate(zip(rows, _isolated("preferences", keys, batch))):
        key = str(r["user_id"])
        if err is not None:
            res.failed(key, r["fingerprint"], err)
            continue
        raw, emb = made
        parsed = keywords.parse_keywords(raw, p["n_pref_keywords"])
        res.tables["user_preferences"].append({
            "user_id": r["user_id"], "keywords": parsed.keywords, "raw_output": raw,
            "history_fingerprint": r["history_fingerprint"],
            "history_movie_ids": [h["movie_id"] for h in kept[i]], "parse_ok": parsed.ok,
            "run_id": p["run_id"]})
        if emb is not None:
            rel, _ = images.put_array(Path(p["root"]), emb)
            res.tables["preference_embeddings"].append({
                "user_id": r["user_id"], "history_fingerprint": r["history_fingerprint"],
                "n_tokens": int(emb.shape[0]), "dim": int(emb.shape[1]), "path": rel, "run_id": p["run_id"]})
        res.done(key, r["fingerprint"])
    return res


def _preference_prompt(items_text: str, p: dict) -> str:
    return prompts.build_preference_prompt(items_text, p["n_pref_keywords"], p["prompt_style"])


def _fit_histories(rows: list[dict], p: dict) -> list[tuple[list, str]]:
    """Each user's history, shortened (least-liked items first) until the preference prompt and its new
    tokens fit the LLM's context; `history_movie_ids` records what was kept."""
    with resources.DEVICE_LOCK:
        lm = resources.llm(p["models"]["llm"])
    return [history.fit_to_model(lm, r["history"], {int(k): v for k, v in r["item_keywords"].items()},
                                 lambda text: _preference_prompt(text, p), p["max_new_tokens_pref"])
            for r in rows]


def _soft_embeddings(items_texts: list[str], p: dict) -> list[np.ndarray]:
    from pmg_models import soft_prompt as sp

    texts = [prompts.build_soft_prompt(t, p["prompt_style"]) for t in items_texts]
    with resources.DEVICE_LOCK:
        lm = resources.llm(p["models"]["llm"])
        soft = resources.soft_prompt(p["soft_prompt"], p["checkpoints"]["llm"], p["checkpoints"]["sd"])
        emb = sp.embed(soft, lm, texts)
    resources.count("llm.soft_embed", len(texts))
    return list(emb)


def _generate(texts: list[str], p: dict, max_new_tokens: int) -> list[str]:
    with resources.DEVICE_LOCK:
        lm = resources.llm(p["models"]["llm"])
        out = lm.generate(texts, max_new_tokens=max_new_tokens, temperature=0.0, stop=["###", "</s>"],
                          seed=p["seed"])
    resources.count("llm.generate", len(texts))
    return list(out)


# -- generation --------------------------------------------------------------------------------

def generate(rows: list[dict], p: dict) -> ChunkResult:
    """K candidates per (user, target) over the (seed, w) grid; PNGs stored before the commit."""
    res = ChunkResult(tables={"generations": []})
    negative = conditioning.negative_prompt("movie")
    jobs = []  # one per image: (row index, candidate, segments, seed)
    for i, r in enumerate(rows):
        target_kw = conditioning.target_keywords(r["title"], r["target_item_keywords"],
                                                 with_title=p.get("title_in_prompt", True))
        for c in conditioning.candidates_for(r["pref_keywords"], p["candidates"], p["weights"]):
            segments = conditioning.sd_prompt_segments(target_kw, r["pref_keywords"], c.w)
            seed = conditioning.candidate_seed(p["seed"], r["user_id"], r["target_movie_id"], c.seed_slot)
            jobs.append((i, c, segments, seed, r.get("soft_path")))
    keys = [r["key"] for r in rows]

    def batch(idx):
        wanted = set(idx)
        mine = [j for j in jobs if j[0] in wanted]
        pics = _images([j[2] for j in mine], [j[3] for j in mine], negative, p, [j[4] for j in mine])
        per_row = {i: [] for i in idx}
        for job, pic in zip(mine, pics):
            per_row[job[0]].append((job, pic))
        return [per_row[i] for i in idx]

    for r, (made, err) in zip(rows, _isolated("generate", keys, batch)):
        if err is not None:
            res.failed(r["key"], r["fingerprint"], err)
            continue
        for (_, c, segments, seed, _soft), pic in made:
            rel, sha = images.put_png(Path(p["root"]), pic)
            res.images += 1
            res.tables["generations"].append({
                "generation_id": ledger.fingerprint(r["fingerprint"], c.index)[:20], "run_id": p["run_id"],
                "user_id": r["user_id"], "target_movie_id": r["target_movie_id"], "candidate": c.index,
                "seed": seed, "weight": c.w, "prompt": conditioning.prompt_text(segments),
                "negative_prompt": negative, "steps": p["steps"], "height": p["height"], "width": p["width"],
                "image_path": rel, "image_sha256": sha})
        res.done(r["key"], r["fingerprint"])
    return res


def _images(prompt_segments: list, seeds: list[int], negative: str, p: dict, soft_paths: list) -> list:
    with resources.DEVICE_LOCK:
        pipe = resources.sd(p["models"]["sd"])
    out = []
    step = max(1, int(p["image_batch"]))
    for s in range(0, len(seeds), step):
        paths = soft_paths[s:s + step]
        extra = np.stack([images.load_array(Path(p["root"]), x) for x in paths]) if paths[0] else None
        with resources.DEVICE_LOCK:
            staging.crash_point("mid-generation")
            out.extend(pipe.generate(prompt_segments[s:s + step], seeds[s:s + step], steps=p["steps"],
                                     guidance=p["guidance"], height=p["height"], width=p["width"],
                                     negative_prompt=negative, extra_tokens=extra, extra_scale=p["soft_scale"]))
        resources.count("sd.generate", len(seeds[s:s + step]))
    return out


# -- scoring -----------------------------------------------------------------------------------

def score(rows: list[dict], p: dict) -> ChunkResult:
    """CLIP d_p (image vs preference text) and d_t (image vs target text), z, the selected candidate."""
    res = ChunkResult(tables={"scores": []})
    keys = [r["key"] for r in rows]

    def batch(idx):
        return _similarities([rows[i] for i in idx], p)

    for r, (sims, err) in zip(rows, _isolated("score", keys, batch)):
        if err is not None:
            res.failed(r["key"], r["fingerprint"], err)
            continue
        d_p, d_t = sims
        z = np.atleast_1d(scoring.z_score(d_p, d_t, p["alpha"]))
        best = scoring.select_best(z)
        for k, g in enumerate(r["generations"]):
            res.tables["scores"].append({
                "generation_id": g["generation_id"], "run_id": p["run_id"], "user_id": r["user_id"],
                "target_movie_id": r["target_movie_id"], "d_p": float(d_p[k]), "d_t": float(d_t[k]),
                "alpha": float(p["alpha"]), "z": float(z[k]), "selected": k == best})
        res.done(r["key"], r["fingerprint"])
    return res


def _similarities(rows: list[dict], p: dict) -> list[tuple[np.ndarray, np.ndarray]]:
    from PIL import Image

    with resources.DEVICE_LOCK:
        model = resources.clip(p["models"]["clip"])
    root = Path(p["root"])
    pics, texts = [], []
    for r in rows:
        for g in r["generations"]:
            with Image.open(root / g["image_path"]) as im:
                pics.append(np.asarray(im.convert("RGB")))
        texts += [r["target_text"], r["pref_text"]]
    with resources.DEVICE_LOCK:
        img = model.encode_image(pics)
        txt = model.encode_text(texts)
    resources.count("clip.encode_image", len(pics))
    resources.count("clip.encode_text", len(texts))
    sim = model.similarity(img, txt)
    out, at = [], 0
    for j, r in enumerate(rows):
        n = len(r["generations"])
        out.append((sim[at:at + n, 2 * j + 1], sim[at:at + n, 2 * j]))  # (d_p, d_t)
        at += n
    return out


STAGES = {"item_keywords": item_keywords, "preferences": preferences, "generate": generate, "score": score}
