"""Held-out (user, target) pairs for soft-prompt training and evaluation, and the evaluation's arithmetic.

Pairs follow the pipeline's holdout protocol (tasks.targets): each user's most recent liked movie is
the target and is left out of the history. Keywords come from the warehouse when the pipeline
stored them (item_keywords; user_preferences whose history fingerprint equals the held-out
history's); missing ones are generated here with the same prompts and parser as the pipeline.
Posters are PNG files named `<movieId>.png` in a posters directory.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from tasks import targets
from tasks.pmg import conditioning, history, keywords, metrics, prompts, scoring
from warehouse import queries

VARIANTS = ("baseline", "pmg", "keywords", "soft")
VARIANT_TITLES = {"baseline": "baseline (target keywords only)", "pmg": "PMG (keywords + soft embeddings)",
                  "keywords": "keywords only", "soft": "soft embeddings only"}
# Opt-in (--world-reference): the miniature world's renderer draws the baseline and keywords-only captions,
# i.e. what a perfect generator would make of them: the most d_p and d_t can show with these keywords.
REFERENCE_VARIANTS = ("world_baseline", "world_keywords")
TITLES = {**VARIANT_TITLES, "world_baseline": "world renderer: baseline caption",
          "world_keywords": "world renderer: keywords caption"}
BASELINE_OF = {"world_keywords": "world_baseline"}  # every other variant is compared with "baseline"
BASELINES = ("baseline", "world_baseline")


@dataclass
class Pair:
    user_id: int
    target_movie_id: int
    title: str
    genres: list[str]
    history: list[dict]              # liked items (movie_id, title, genres, rating, rated_at), target left out
    history_fingerprint: str
    pref_keywords: list[str] | None = None

    @property
    def key(self) -> str:
        return f"{self.user_id}:{self.target_movie_id}"


@dataclass
class PairSet:
    pairs: list[Pair]
    item_keywords: dict[int, list[str]]                    # movie -> poster keywords (stored or generated)
    movies: dict[int, tuple[str, list[str]]]               # movie -> (title, genres), targets and histories
    stats: dict = field(default_factory=dict)


def poster_path(posters: Path | None, movie_id: int) -> Path | None:
    if posters is None:
        return None
    path = Path(posters) / f"{int(movie_id)}.png"
    return path if path.is_file() else None


def read_poster(posters: Path | None, movie_id: int) -> np.ndarray | None:
    """uint8 (H, W, 3) poster of a movie, or None when the directory has none."""
    from PIL import Image

    path = poster_path(posters, movie_id)
    if path is None:
        return None
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"))


def _with_ids(con, name: str, column: str, ids: Sequence[int], params: dict | None = None) -> list[tuple]:
    con.register("ids", pd.DataFrame({column: pd.Series(list(ids), dtype="int64")}))
    try:
        return queries.run(con, name, params).fetchall()
    finally:
        con.unregister("ids")


def select_pairs(con, posters: Path | None = None, limit_users: int | None = None, n_history: int = 5,
                 style: str = "vicuna", require_poster: bool = False) -> PairSet:
    """Held-out pairs of the first `limit_users` users; with `require_poster`, only targets that have a poster."""
    users = targets.select_users(con, limit=limit_users)
    sel = targets.select_targets(con, users, targets="holdout")
    hist = targets.histories(con, sel, n_history)
    version = prompts.prompt_version(style)
    stats = {"users": len(users), "without_target": sel.users_without_target, "without_poster": 0,
             "without_history": 0}
    pairs = []
    for user_id, movie_id in sel.pairs:
        if require_poster and poster_path(posters, movie_id) is None:
            stats["without_poster"] += 1
            continue
        items = hist.get(user_id, [])
        if not items:
            stats["without_history"] += 1
            continue
        pairs.append(Pair(user_id, movie_id, "", [], items, history.history_fingerprint(items, n_history, version)))
    movie_ids = sorted({p.target_movie_id for p in pairs} | {h["movie_id"] for p in pairs for h in p.history})
    movies = {int(m): (t or "", list(g or [])) for m, t, g in _with_ids(con, "pipeline_movies", "movie_id", movie_ids)}
    for p in pairs:
        p.title, p.genres = movies.get(p.target_movie_id, ("", []))
    item_kw = {int(m): list(k or []) for m, k in _with_ids(con, "pipeline_item_keywords", "movie_id", movie_ids)}
    stored = {int(u): (list(k or []), fp) for u, k, fp in
              _with_ids(con, "pipeline_preferences", "user_id", [p.user_id for p in pairs])}
    for p in pairs:
        kw, fp = stored.get(p.user_id, (None, None))
        p.pref_keywords = kw if fp == p.history_fingerprint else None
    stats["pairs"] = len(pairs)
    return PairSet(pairs, item_kw, movies, stats)


def fill_item_keywords(lm, pairset: PairSet, movie_ids: Sequence[int], n: int = 10, style: str = "vicuna",
                       max_new_tokens: int = 48, seed: int = 0) -> int:
    """Generate poster keywords for the movies that have none yet (as the pipeline's item stage)."""
    todo = [m for m in dict.fromkeys(movie_ids) if m not in pairset.item_keywords]
    if todo:
        texts = [prompts.build_item_prompt(*pairset.movies.get(m, ("", [])), "", n, style) for m in todo]
        outs = lm.generate(texts, max_new_tokens=max_new_tokens, temperature=0.0, stop=["###", "</s>"], seed=seed)
        for m, raw in zip(todo, outs):
            pairset.item_keywords[m] = keywords.parse_keywords(raw, n).keywords
    return len(todo)


def fill_preferences(lm, pairset: PairSet, n: int = 8, style: str = "vicuna", max_new_tokens: int = 64,
                     seed: int = 0) -> int:
    """Generate preference keywords for pairs without stored ones for their held-out history."""
    todo = [p for p in pairset.pairs if p.pref_keywords is None]
    if todo:
        def prompt_of(text: str) -> str:
            return prompts.build_preference_prompt(text, n, style)

        texts = [prompt_of(history.fit_to_model(lm, p.history, pairset.item_keywords, prompt_of, max_new_tokens)[1])
                 for p in todo]
        outs = lm.generate(texts, max_new_tokens=max_new_tokens, temperature=0.0, stop=["###", "</s>"], seed=seed)
        for p, raw in zip(todo, outs):
            p.pref_keywords = keywords.parse_keywords(raw, n).keywords
    return len(todo)


def history_movie_ids(pairs: Sequence[Pair]) -> list[int]:
    return sorted({h["movie_id"] for p in pairs for h in p.history})


def items_text(pair: Pair, item_kw: dict[int, list[str]]) -> str:
    return history.serialize_items(pair.history, item_kw)


def soft_text(pair: Pair, item_kw: dict[int, list[str]], style: str = "vicuna") -> str:
    """Input of the soft-prompt model for this user (same text at training and generation)."""
    return prompts.build_soft_prompt(items_text(pair, item_kw), style)


def target_kw(pair: Pair, item_kw: dict[int, list[str]], with_title: bool = True) -> list[str]:
    return conditioning.target_keywords(pair.title, item_kw.get(pair.target_movie_id), with_title=with_title)


# A pair is "in the user's taste" when half or more of the target's poster keywords are already among the
# user's preference keywords: its baseline poster is personalized before a preference is added, so d_p has
# little room to rise there. Reported apart, never used to choose pairs.
IN_TASTE_SHARE = 0.5


def taste_overlap(target_keywords: Sequence[str] | None, pref_keywords: Sequence[str] | None) -> float:
    """Share of the target's keywords found (case-insensitively) among the preference keywords; NaN without any."""
    target = {k.casefold() for k in history.clean_keywords(target_keywords, conditioning.MAX_KEYWORDS)}
    if not target:
        return math.nan
    prefs = {k.casefold() for k in history.clean_keywords(pref_keywords, conditioning.MAX_KEYWORDS)}
    return len(target & prefs) / len(target)


def pair_taste_overlap(pair: Pair, item_kw: dict[int, list[str]]) -> float:
    """taste_overlap of the target keywords the prompt carries and the pair's preference keywords."""
    target = history.clean_keywords(item_kw.get(pair.target_movie_id), conditioning.N_TARGET_KEYWORDS)
    return taste_overlap(target, pair.pref_keywords)


# ---------------------------------------------------------------------------------- evaluation
@dataclass(frozen=True)
class Job:
    """One image of the evaluation: variant, pair index, candidate, seed, keyword weight w, soft or not."""
    variant: str
    pair: int
    candidate: int
    seed: int
    w: float
    soft: bool
    segments: tuple


def plan_jobs(pairs: Sequence[Pair], item_kw, variants: Sequence[str], k: int, base_seed: int,
              weights: Sequence[float] = conditioning.DEFAULT_WEIGHTS, with_title: bool = True) -> list[Job]:
    """K candidates per (variant, pair).

    Keyword variants (pmg, keywords) use the pipeline's grid (seed slot, w): with K = 2 the original's
    w ∈ {1, 2} on one seed. Variants without preference keywords (baseline, soft) vary the seed slot
    instead (0..K−1), so their candidates differ. Seed slot s gives the same seed in every variant.
    """
    grid = conditioning.candidate_grid(k, weights=tuple(weights))
    jobs = []
    for v in variants:
        with_kw = v in ("pmg", "keywords", "world_keywords")
        for i, p in enumerate(pairs):
            tkw = target_kw(p, item_kw, with_title)
            for c in (grid if with_kw else [conditioning.Candidate(j, j, 0.0) for j in range(k)]):
                segs = conditioning.sd_prompt_segments(tkw, (p.pref_keywords or []) if with_kw else [], c.w)
                seed = conditioning.candidate_seed(base_seed, p.user_id, p.target_movie_id, c.seed_slot)
                jobs.append(Job(v, i, c.index, seed, c.w, v in ("pmg", "soft"), tuple(segs)))
    return jobs


def reference_blocks(job: Job) -> tuple:
    """(genres, title band) of a job's caption in the miniature world; a clear error if it names no world genre.

    A segment without genre words (a generated keyword list may drop them) is read by its style words.
    """
    from tasks.miniworld import world

    words, genres = [], []
    for text, _ in job.segments:  # the target's segment, then the preferences'
        seg = text.split(",")
        found = world.parse(seg)[0]
        if not found and (style := world.genre_by_style(seg)):
            found = [style]
        if not found and not genres:  # the first block (the background) must come from the target
            raise ValueError(f"--world-reference draws miniature-world captions, but {', '.join(w.strip() for w in seg)!r} "
                             "names no genre of the world; use it with the miniature world's models and warehouse")
        words, genres = words + seg, genres + found
    return genres, world.parse(words)[1]


def render_reference(job: Job, size: int) -> np.ndarray:
    """The miniature world's renderer drawing a job's caption (keyword weights do not apply to it)."""
    from tasks.miniworld import posters

    genres, band = reference_blocks(job)
    return posters.render(genres, band, job.seed, size=size)


def fit_to(ref: np.ndarray, image: np.ndarray) -> np.ndarray:
    """A poster resized (bicubic) to the generated image's size."""
    from PIL import Image

    if ref.shape[:2] == image.shape[:2]:
        return ref
    return np.asarray(Image.fromarray(ref).resize((image.shape[1], image.shape[0]), Image.BICUBIC))


def ssim_scores(image: np.ndarray, target: np.ndarray | None, history_posters: Sequence[np.ndarray]) -> tuple:
    """(SSIM vs target poster, mean SSIM vs history posters); posters resized to the image size; NaN if absent."""
    t = metrics.ssim(image, fit_to(target, image)) if target is not None else math.nan
    h = metrics.mean_ssim_to(image, [fit_to(r, image) for r in history_posters]) if history_posters else math.nan
    return t, h


def lpips_scores(model, image: np.ndarray, target: np.ndarray | None, history_posters: Sequence[np.ndarray]) -> tuple:
    """(LPIPS vs target poster, mean LPIPS vs history posters) with a pmg_models.lpips.LPIPS; NaN if absent."""
    refs = ([target] if target is not None else []) + list(history_posters)
    if not refs:
        return math.nan, math.nan
    d = model.distance([image] * len(refs), [fit_to(r, image) for r in refs])
    t = float(d[0]) if target is not None else math.nan
    hist = d[1:] if target is not None else d
    return t, float(hist.mean()) if len(hist) else math.nan


def score_rows(base: list[dict], alphas: Sequence[float], image_weight: float = scoring.DEFAULT_IMAGE_WEIGHT) -> list[dict]:
    """Per (variant, pair): z at every α over its K candidates and the selected one; rows per candidate and α.

    `base` rows carry variant, user_id, target_movie_id, candidate and the raw d_p_text, d_t_text,
    d_p_image, d_t_image (None when no posters).
    """
    groups: dict[tuple, list[dict]] = {}
    for r in base:
        groups.setdefault((r["variant"], r["user_id"], r["target_movie_id"]), []).append(r)
    out = []
    for rows in groups.values():
        rows = sorted(rows, key=lambda r: r["candidate"])
        col = lambda name: None if rows[0][name] is None else [r[name] for r in rows]  # noqa: E731
        for alpha in alphas:
            sc = scoring.score_candidates(col("d_p_text"), col("d_t_text"), col("d_p_image"), col("d_t_image"),
                                          alpha, image_weight)
            best = scoring.select_best([s.z for s in sc])
            for r, s in zip(rows, sc):
                out.append({**r, "alpha": float(alpha), "d_p": s.d_p, "d_t": s.d_t, "z": s.z,
                            "selected": r["candidate"] == rows[best]["candidate"]})
    return out


SUMMARY_METRICS = ("d_p", "d_t", "d_p_text", "d_t_text", "d_p_image", "d_t_image", "ssim_target", "ssim_history",
                   "lpips_target", "lpips_history")


COMPONENTS = ("text", "image")  # d = blend(text, image): each part is also compared with the baseline


def floored_shares(base: list[dict]) -> dict[str, float]:
    """Share of candidates whose score part lies below SCORE_FLOOR, hence clamped before the blend's log.

    Such a part decides the blend alone (log 1e-4 outweighs any positive score), so where it is common a
    comparison with the baseline reads the part's sign more than the sizes of both parts. Parts never
    measured (no posters) are left out.
    """
    out = {}
    for part in ("d_p_text", "d_t_text", "d_p_image", "d_t_image"):
        values = [r[part] for r in base if r.get(part) is not None and math.isfinite(r[part])]
        if values:
            out[part] = float(np.mean(np.asarray(values) < scoring.SCORE_FLOOR))  # the clamp of scoring._log
    return out


def floor_note(shares: dict[str, float]) -> str | None:
    """The summary's note on clamped score parts, or None when no part was clamped."""
    clamped = {k: v for k, v in shares.items() if v > 0}
    if not clamped:
        return None
    parts = ", ".join(f"{k[:3]} {k[4:]} {100 * v:.0f} %" for k, v in clamped.items())  # d_p_image -> d_p image
    return (f"Score parts at or below 0 (share of all candidates: {parts}) are clamped to {scoring.SCORE_FLOOR:g} "
            "before the geometric blend, where such a part outweighs the other: for those candidates the blend "
            "reads that part's sign, not the sizes of both. A CLIP whose cosines sit near 0 (the miniature "
            "world's image–image scores) shows this; read the table of each part alone as well.")


def _mean(values) -> float:
    v = np.asarray([np.nan if x is None else x for x in values], np.float64)
    v = v[np.isfinite(v)]
    return float(v.mean()) if v.size else math.nan


def summarize(rows: list[dict], alpha: float, variants: Sequence[str]) -> list[dict]:
    """Per variant at α: means of the selected candidates' scores, and the comparison with its baseline."""
    chosen = [r for r in rows if r["selected"] and math.isclose(r["alpha"], alpha, abs_tol=1e-9)]
    by_variant = {v: sorted((r for r in chosen if r["variant"] == v), key=lambda r: (r["user_id"], r["target_movie_id"]))
                  for v in variants}
    bases = {b: {(r["user_id"], r["target_movie_id"]): r for r in by_variant.get(b, [])} for b in BASELINES}
    out = []
    for v in variants:
        sel = by_variant[v]
        row = {"variant": v, "alpha": alpha, "pairs": len(sel), **{f"mean_{m}": _mean(r.get(m) for r in sel)
                                                                     for m in SUMMARY_METRICS}}
        base = bases[BASELINE_OF.get(v, "baseline")]
        paired = [(r, base[(r["user_id"], r["target_movie_id"])]) for r in sel
                  if (r["user_id"], r["target_movie_id"]) in base]
        row.update(win_rate_d_p=math.nan, rel_change_d_p=math.nan, rel_change_d_t=math.nan,
                   win_rate_lpips_history=math.nan, rel_change_lpips_history=math.nan,
                   rel_change_lpips_target=math.nan)
        for part in COMPONENTS:
            row.update({f"win_rate_d_p_{part}": math.nan, f"rel_change_d_t_{part}": math.nan})
        if v not in BASELINES and paired:
            cmp = metrics.compare_to_baseline(*_columns(paired, "d_p", "d_t"))
            row.update(win_rate_d_p=cmp["win_rate_d_p"], rel_change_d_p=cmp["rel_change_d_p"],
                       rel_change_d_t=cmp["rel_change_d_t"])
            for part in COMPONENTS:  # the blend's parts alone: which of them moved
                if all(a.get(f"d_p_{part}") is not None for a, _ in paired):
                    c = metrics.compare_to_baseline(*_columns(paired, f"d_p_{part}", f"d_t_{part}"))
                    row.update({f"win_rate_d_p_{part}": c["win_rate_d_p"], f"rel_change_d_t_{part}": c["rel_change_d_t"]})
            if all(a.get("lpips_history") is not None and a.get("lpips_target") is not None for a, _ in paired):
                # Lower LPIPS = more similar: personalization wins when LPIPS vs history drops.
                lp = metrics.compare_to_baseline(*_columns(paired, "lpips_history", "lpips_target"),
                                                 higher_is_better=False)
                row.update(win_rate_lpips_history=lp["win_rate_d_p"], rel_change_lpips_history=lp["rel_change_d_p"],
                           rel_change_lpips_target=lp["rel_change_d_t"])
        out.append(row)
    return out


def taste_columns(rows: list[dict], alpha: float, variants: Sequence[str],
                  overlap: dict[tuple[int, int], float]) -> dict[str, dict]:
    """Per variant: pairs, d_p win rate and Δ d_t on the pairs in the user's taste and on the others.

    `overlap` maps (user, target) to pair_taste_overlap; pairs whose overlap is NaN fall in neither group.
    """
    out = {v: {} for v in variants}
    for name, inside in (("in_taste", True), ("outside_taste", False)):
        keys = {k for k, o in overlap.items() if not math.isnan(o) and (o >= IN_TASTE_SHARE) == inside}
        part = [r for r in rows if (r["user_id"], r["target_movie_id"]) in keys]
        for r in summarize(part, alpha, variants):
            out[r["variant"]].update({f"pairs_{name}": r["pairs"], f"win_rate_d_p_{name}": r["win_rate_d_p"],
                                      f"rel_change_d_t_{name}": r["rel_change_d_t"]})
    return out


def candidate_counts(k: int) -> list[int]:
    """The candidate counts the report compares: 1, 2, 4, … below k, then k."""
    if k < 1:
        raise ValueError(f"number of candidates must be at least 1, got {k}")
    counts, n = [], 1
    while n < k:
        counts.append(n)
        n *= 2
    return counts + [k]


def candidate_sweep(base: list[dict], alpha: float, variants: Sequence[str]) -> list[dict]:
    """Per candidate count n and variant: the comparison with the baseline when only the first n candidates count.

    The first n candidates of a K-candidate grid are an n-candidate run's (same seed slots and weights, see
    plan_jobs and conditioning.candidate_grid), so one run with K candidates answers what fewer would give.
    """
    out = []
    for n in candidate_counts(max(r["candidate"] for r in base) + 1):
        rows = score_rows([r for r in base if r["candidate"] < n], [alpha])
        for r in summarize(rows, alpha, variants):
            out.append({"candidates": n, "variant": r["variant"], "pairs": r["pairs"], "mean_d_p": r["mean_d_p"],
                        "mean_d_t": r["mean_d_t"], "win_rate_d_p": r["win_rate_d_p"],
                        "rel_change_d_t": r["rel_change_d_t"]})
    return out


def _columns(paired, p: str, t: str) -> tuple:
    """(method p, baseline p, method t, baseline t) value lists of paired (method row, baseline row)."""
    def get(r, k):
        return math.nan if r[k] is None else r[k]
    return ([get(a, p) for a, _ in paired], [get(b, p) for _, b in paired],
            [get(a, t) for a, _ in paired], [get(b, t) for _, b in paired])


def sweep(rows: list[dict], variants: Sequence[str]) -> dict[str, list[tuple[float, float, float]]]:
    """Per variant: (α, mean selected d_p, mean selected d_t) for every α, for the trade-off plot."""
    out = {}
    for v in variants:
        pts = []
        for a in sorted({r["alpha"] for r in rows if r["variant"] == v}):
            sel = [r for r in rows if r["variant"] == v and r["alpha"] == a and r["selected"]]
            pts.append((a, _mean(r["d_p"] for r in sel), _mean(r["d_t"] for r in sel)))
        out[v] = pts
    return out
