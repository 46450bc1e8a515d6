"""Evaluation: PMG against the non-personalized baseline and the ablations on held-out (user, target) pairs.

Variants (K candidates each): baseline = target keywords only; pmg = target + preference keywords +
soft embeddings; keywords = target + preference keywords; soft = target keywords + soft embeddings;
opt-in world_baseline / world_keywords = the miniature world's renderer drawing those captions.
Scores per candidate: CLIP d_p / d_t against the keyword texts (as the original) and, with a posters
directory, against the history posters / the target poster (image–image), SSIM against the target
and history posters, and LPIPS (pmg_models.lpips) when weights are given. z is computed at every α of the sweep; the selected candidate per α is marked.
Outputs: the `evaluations` table (one row per run, variant, pair, candidate and α), results.csv,
summary.csv, summary.md and alpha_sweep.png in the run's directory.

Idempotence: every run gets a new run id and directory; `run_id=` replaces that run's rows and files.
"""
from __future__ import annotations

import csv
import math
import os
from pathlib import Path
from typing import Sequence

import numpy as np
from prefect import flow

from flows import progress
from flows.train import new_run_id, record_run, resolve_models
from tasks import evaluation as E
from tasks import resources
from tasks.miniworld.posters import CANVAS
from tasks.pmg import conditioning, prompts, scoring

LPIPS_NOTE = ("LPIPS skipped: pass --lpips-weights PATH (safetensors with AlexNet's conv layers and LPIPS' lin "
              "layers, see pmg_models/lpips.py) to add LPIPS vs the target and history posters")
ROW_FIELDS = ("run_id", "variant", "user_id", "target_movie_id", "candidate", "seed", "weight", "w_soft", "alpha",
              "d_p", "d_t", "z", "selected", "d_p_text", "d_t_text", "d_p_image", "d_t_image", "ssim_target",
              "ssim_history", "lpips_target", "lpips_history", "prompt", "image_path")
GEN_BATCH = 8
PAIR_CHUNK = 16   # pairs generated and scored together


def soft_prompt_file(path: Path) -> Path:
    """A soft-prompt file, or the soft_prompt.safetensors inside a training output directory."""
    path = Path(path)
    return path / "soft_prompt.safetensors" if path.is_dir() else path


def soft_scale(method: dict, w_soft: float | None) -> float:
    """The soft tokens' scale: the argument, else the config's [method] soft_scale (what the pipeline uses), else 1."""
    value = float(w_soft if w_soft is not None else method.get("soft_scale", 1.0))
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"the soft tokens' scale (--w-soft / [method] soft_scale) must be >= 0, got {value}")
    return value


def check_world_size(size: int) -> None:
    if size > CANVAS or CANVAS % size:
        raise ValueError(f"--world-reference renders {CANVAS}-pixel posters down to the image size; "
                         f"{size} does not divide {CANVAS} (pass --size)")


def headline_alpha(alphas: Sequence[float], alpha: float) -> tuple[list[float], float]:
    """The sweep (with `alpha` added unless a value within 1e-3 is already in it) and the summary's α."""
    alphas = sorted(dict.fromkeys(scoring.check_alpha(float(a)) for a in alphas))
    alpha = scoring.check_alpha(float(alpha))
    near = [a for a in alphas if abs(a - alpha) <= 1e-3]
    if near:
        return alphas, near[0]
    return sorted(alphas + [float(alpha)]), float(alpha)


def generate_images(pipe, jobs: list[E.Job], soft_emb: np.ndarray | None, steps: int, size: int, guidance: float,
                    w_soft: float) -> list[np.ndarray]:
    """uint8 images for the jobs, in batches that share soft conditioning (all with or all without)."""
    negative = conditioning.negative_prompt("movie")
    out: list[np.ndarray | None] = [None] * len(jobs)
    for i, j in enumerate(jobs):
        if j.variant in E.REFERENCE_VARIANTS:
            out[i] = E.render_reference(j, size)
    for soft in (False, True):
        idx = [i for i, j in enumerate(jobs) if j.soft == soft and j.variant not in E.REFERENCE_VARIANTS]
        for a in range(0, len(idx), GEN_BATCH):
            part = idx[a:a + GEN_BATCH]
            extra = soft_emb[[jobs[i].pair for i in part]] if soft else None
            with resources.DEVICE_LOCK:
                pics = pipe.generate([list(jobs[i].segments) for i in part], [jobs[i].seed for i in part], steps=steps,
                                     guidance=guidance, height=size, width=size, negative_prompt=negative,
                                     extra_tokens=extra, extra_scale=w_soft)
            resources.count("sd.generate", len(part))
            for i, pic in zip(part, pics):
                out[i] = pic
    return out


def clip_scores(model, pairs: list[E.Pair], item_kw, images: list[np.ndarray], jobs: list[E.Job],
                posters: Path | None, poster_emb: dict, with_title: bool = True) -> list[dict]:
    """Per job: d_p_text, d_t_text and (posters permitting) d_p_image, d_t_image as CLIP 100·cos.

    `poster_emb` caches poster embeddings (movie id -> vector or None) across chunks.
    """
    used = sorted({j.pair for j in jobs})
    col = {i: n for n, i in enumerate(used)}
    texts = [t for i in used
             for t in scoring.clip_texts(E.target_kw(pairs[i], item_kw, with_title), pairs[i].pref_keywords or [])]
    movies = sorted({m for i in used for m in [pairs[i].target_movie_id] + [h["movie_id"] for h in pairs[i].history]})
    todo = [m for m in movies if m not in poster_emb]
    found = {m: E.read_poster(posters, m) for m in todo} if posters is not None else {}
    found = {m: a for m, a in found.items() if a is not None}
    with resources.DEVICE_LOCK:
        img = model.encode_image(images)
        txt = model.encode_text(texts)
        new = model.encode_image([found[m] for m in found]) if found else []
    resources.count("clip.encode_image", len(images) + len(found))
    resources.count("clip.encode_text", len(texts))
    poster_emb.update({m: None for m in todo} | dict(zip(found, new)))
    sim_text = model.similarity(img, txt)
    out = []
    for n, j in enumerate(jobs):
        p, c = pairs[j.pair], col[j.pair]
        hist = [poster_emb[h["movie_id"]] for h in p.history if poster_emb.get(h["movie_id"]) is not None]
        target = poster_emb.get(p.target_movie_id)
        out.append({"d_p_text": float(sim_text[n, 2 * c + 1]), "d_t_text": float(sim_text[n, 2 * c]),
                    "d_p_image": float(model.similarity(img[n:n + 1], np.stack(hist)).mean()) if hist else None,
                    "d_t_image": float(model.similarity(img[n:n + 1], target[None])[0, 0]) if target is not None else None})
    return out


def score_chunk(pipe, clip_model, pairs, item_kw, jobs: list[E.Job], soft_emb, posters: Path | None, out_dir: Path,
                run_id: str, poster_emb: dict, o: dict) -> list[dict]:
    """Generate, save and score the images of some jobs; returns their raw rows (before α selection)."""
    images = generate_images(pipe, jobs, soft_emb, o["steps"], o["size"], o["guidance"], o["w_soft"])
    sims = clip_scores(clip_model, pairs, item_kw, images, jobs, posters, poster_emb, o["with_title"])
    rows = []
    for j, img, s in zip(jobs, images, sims):
        p = pairs[j.pair]
        if posters is not None:
            target = E.read_poster(posters, p.target_movie_id)
            hist = [h for h in (E.read_poster(posters, x["movie_id"]) for x in p.history) if h is not None]
            ssim_t, ssim_h = E.ssim_scores(img, target, hist)
            lp_t, lp_h = E.lpips_scores(o["lpips"], img, target, hist) if o["lpips"] is not None else (None, None)
        else:
            ssim_t = ssim_h = math.nan
            lp_t = lp_h = None
        rel = Path("images") / j.variant / f"u{p.user_id}_m{p.target_movie_id}_c{j.candidate}.png"
        rows.append({"run_id": run_id, "variant": j.variant, "user_id": p.user_id, "target_movie_id": p.target_movie_id,
                     "candidate": j.candidate, "seed": j.seed, "weight": j.w, "w_soft": o["w_soft"] if j.soft else None,
                     **s, "ssim_target": ssim_t, "ssim_history": ssim_h, "lpips_target": lp_t, "lpips_history": lp_h,
                     "prompt": conditioning.prompt_text(j.segments), "image_path": rel.as_posix()})
    _save_images(out_dir, rows, images)
    return rows


def write_csv(path: Path, rows: list[dict], fields: Sequence[str]) -> Path:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(fields), extrasaction="ignore")
        w.writeheader()
        for r in rows:
            w.writerow({k: "" if r.get(k) is None or (isinstance(r.get(k), float) and math.isnan(r[k])) else r[k]
                        for k in fields})
    os.replace(tmp, path)
    return path


def _fmt(x, pct: bool = False) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "—"
    return f"{100 * x:+.1f}%" if pct else f"{x:.4f}"


def _share(x: float, unit: str = "%") -> str:
    """A win rate as a whole percentage; "—" when there was nothing to compare."""
    return "—" if math.isnan(x) else f"{100 * x:.0f}{unit}"


def _compared(by: dict[str, dict]) -> list[str]:
    """The report's variants that are compared with a baseline, in report order."""
    return [v for v in E.VARIANTS + E.REFERENCE_VARIANTS if v in by and v not in E.BASELINES]


def component_table(by: dict[str, dict]) -> list[str]:
    """The comparison with the baseline for each part of the blend (CLIP text score, image–image score) alone."""
    rows = _compared(by)
    if not rows or all(math.isnan(by[v]["win_rate_d_p_image"]) for v in rows):
        return []
    lines = ["Each part of d_p and d_t alone (text: vs the keyword texts, as the original's reranker; image: vs the "
             "history posters / the target poster):", "",
             "| variant | d_p text > baseline | Δ d_t text | d_p image > baseline | Δ d_t image |", "|---|---|---|---|---|"]
    for v in rows:
        r = by[v]
        lines.append(f"| {E.TITLES[v]} | {_share(r['win_rate_d_p_text'])} | {_fmt(r['rel_change_d_t_text'], True)} "
                     f"| {_share(r['win_rate_d_p_image'])} | {_fmt(r['rel_change_d_t_image'], True)} |")
    return lines + [""]


def taste_table(by: dict[str, dict]) -> list[str]:
    """The comparison with the baseline on the pairs in the user's taste and on the others (E.taste_columns)."""
    rows = _compared(by)
    if not rows or "pairs_in_taste" not in by[rows[0]]:
        return []
    share = f"{100 * E.IN_TASTE_SHARE:.0f} %"
    lines = [f"By taste: a pair is in the user's taste when ≥ {share} of the target's poster keywords are among the "
             "user's preference keywords (its baseline is personalized already, so d_p has little room to rise); "
             "the outside pairs are those personalization has to change:", "",
             "| variant | pairs in taste | d_p > baseline | Δ d_t | pairs outside | d_p > baseline | Δ d_t |",
             "|---|---|---|---|---|---|---|"]
    for v in rows:
        r = by[v]
        lines.append(f"| {E.TITLES[v]} | {r['pairs_in_taste']} | {_share(r['win_rate_d_p_in_taste'])} "
                     f"| {_fmt(r['rel_change_d_t_in_taste'], True)} | {r['pairs_outside_taste']} "
                     f"| {_share(r['win_rate_d_p_outside_taste'])} | {_fmt(r['rel_change_d_t_outside_taste'], True)} |")
    return lines + [""]


def candidates_table(sweep_rows: Sequence[dict]) -> list[str]:
    """The comparison with the baseline had fewer candidates been generated (E.candidate_sweep); none for K = 1."""
    counts = sorted({r["candidates"] for r in sweep_rows})
    by = {(r["candidates"], r["variant"]): r for r in sweep_rows}
    rows = _compared({r["variant"]: r for r in sweep_rows})
    if len(counts) < 2 or not rows:
        return []
    lines = ["By number of candidates: the same comparison when only each variant's first n candidates are kept "
             "(an n-candidate run's; d_p > baseline / Δ d_t, selection at the same α):", "",
             "| variant | " + " | ".join(f"n = {n}" for n in counts) + " |", "|---|" + "---|" * len(counts)]
    for v in rows:
        cells = (f"{_share(by[n, v]['win_rate_d_p'])} / {_fmt(by[n, v]['rel_change_d_t'], True)}" for n in counts)
        lines.append(f"| {E.TITLES[v]} | " + " | ".join(cells) + " |")
    return lines + [""]


def headline(summary: list[dict]) -> list[str]:
    """One line per compared variant for the terminal: d_p win rate and Δ d_t, and the taste split if present."""
    lines = []
    for r in summary:
        if r["variant"] in E.BASELINES:
            continue
        line = (f"{E.TITLES[r['variant']]}: d_p > baseline in {_share(r['win_rate_d_p'], ' %')} of pairs, "
                f"Δ d_t {_fmt(r['rel_change_d_t'], True)}")
        if "pairs_in_taste" in r:
            line += (f" (in the user's taste: {_share(r['win_rate_d_p_in_taste'], ' %')} of {r['pairs_in_taste']}; "
                     f"outside: {_share(r['win_rate_d_p_outside_taste'], ' %')} of {r['pairs_outside_taste']})")
        lines.append(line)
    return lines


def write_markdown(path: Path, run_id: str, summary: list[dict], variants: Sequence[str], skipped: dict[str, str],
                   notes: list[str], settings: dict, by_candidates: Sequence[dict] = ()) -> Path:
    """summary.md: one table row per variant (skipped variants say why), then the notes and settings."""
    lines = [f"# PMG evaluation `{run_id}`", "",
             f"{settings['pairs']} held-out (user, target) pairs, {settings['candidates']} candidates per variant, "
             f"selection at α = {settings['alpha']:.3f} (z = α·log d_p + (1−α)·log d_t).", "",
             "| variant | pairs | mean d_p | mean d_t | d_p > baseline | Δ d_t vs baseline | d_p text | d_t text "
             "| d_p image | d_t image | SSIM target | SSIM history | LPIPS target | LPIPS history "
             "| Δ LPIPS history vs baseline |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    by = {r["variant"]: r for r in summary}
    for v in E.VARIANTS + tuple(v for v in E.REFERENCE_VARIANTS if v in by):
        if v in by:
            r = by[v]
            win = "—" if v in E.BASELINES else _share(r["win_rate_d_p"])
            lines.append(f"| {E.TITLES[v]} | {r['pairs']} | {_fmt(r['mean_d_p'])} | {_fmt(r['mean_d_t'])} "
                         f"| {win} | {'—' if v in E.BASELINES else _fmt(r['rel_change_d_t'], True)} "
                         f"| {_fmt(r['mean_d_p_text'])} | {_fmt(r['mean_d_t_text'])} | {_fmt(r['mean_d_p_image'])} "
                         f"| {_fmt(r['mean_d_t_image'])} | {_fmt(r['mean_ssim_target'])} "
                         f"| {_fmt(r['mean_ssim_history'])} | {_fmt(r['mean_lpips_target'])} "
                         f"| {_fmt(r['mean_lpips_history'])} | {_fmt(r['rel_change_lpips_history'], True)} |")
        else:
            lines.append(f"| {E.VARIANT_TITLES[v]} | skipped: {skipped.get(v, 'not requested')} |"
                         + " |" * 13)
    lines += ["", "d_p / d_t: CLIP 100·cos of the selected image with the preference / target keyword text, "
              "blended geometrically with the image–image score (history posters / target poster) when posters "
              "exist. \"d_p > baseline\": share of pairs whose selected image has a higher d_p than the baseline's "
              "(ties count half). Δ d_t: relative change of mean d_t against the baseline (the world renderer's "
              "keywords caption: against the world renderer's baseline caption). LPIPS (when weights are "
              "given): lower = more similar; a negative Δ LPIPS history means images closer to the user's history "
              "posters than the baseline's (the paper's personalization measure).", ""]
    lines += component_table(by)
    lines += taste_table(by)
    lines += candidates_table(by_candidates)
    lines += ["## Notes", ""]
    lines += [f"- {n}" for n in notes]
    lines += ["", "## Settings", ""] + [f"- {k}: `{v}`" for k, v in settings.items()]
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("\n".join(lines) + "\n", encoding="utf-8")
    os.replace(tmp, path)
    return path


def write_plot(path: Path, curves: dict[str, list[tuple]], alpha: float) -> Path:
    """d_p against d_t of the selected images, one line per variant across α (annotated)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4.5), dpi=100)
    for v, pts in curves.items():
        pts = [q for q in pts if math.isfinite(q[1]) and math.isfinite(q[2])]
        if not pts:
            continue
        ax.plot([q[2] for q in pts], [q[1] for q in pts], marker="o", ms=4, label=E.TITLES[v])
        groups: dict[tuple, list[float]] = {}   # α values selecting the same images share one label
        for a, dp, dt in pts:
            groups.setdefault((round(dp, 9), round(dt, 9)), []).append(a)
        for (dp, dt), group in groups.items():
            text = f"α={group[0]:.2g}" if len(group) == 1 else f"α={group[0]:.2g}–{group[-1]:.2g}"
            ax.annotate(text, (dt, dp), textcoords="offset points", xytext=(4, 4), fontsize=7,
                        fontweight="bold" if any(abs(a - alpha) < 1e-9 for a in group) else "normal")
    ax.set_xlabel("d_t (target fidelity, mean of selected)")
    ax.set_ylabel("d_p (personalization, mean of selected)")
    ax.set_title("PMG: d_p vs d_t of the selected candidates across α")
    ax.legend(fontsize=8)
    fig.tight_layout()
    tmp = path.with_name(path.stem + ".tmp.png")
    fig.savefig(tmp)
    plt.close(fig)
    os.replace(tmp, path)
    return path


def write_pairs_grid(path: Path, out_dir: Path, rows: list[dict], pairs: Sequence[E.Pair], variants: Sequence[str],
                     alpha: float, posters: Path | None, n_pairs: int = 12, n_history: int = 3) -> Path | None:
    """One row per pair: target poster, each variant's selected image at `alpha`, history posters.

    Missing posters are left blank; nothing is written when there are no selected images.
    """
    from PIL import Image

    chosen = {(r["variant"], r["user_id"], r["target_movie_id"]): r["image_path"] for r in rows
              if r["selected"] and abs(r["alpha"] - alpha) < 1e-9}
    shown = [p for p in pairs if any((v, p.user_id, p.target_movie_id) in chosen for v in variants)][:n_pairs]
    if not shown:
        return None

    def load(file: Path | None):
        if file is None or not Path(file).is_file():
            return None
        with Image.open(file) as im:
            return np.asarray(im.convert("RGB"))

    table = []
    for p in shown:
        cells = [load(E.poster_path(posters, p.target_movie_id))]
        cells += [load(out_dir / chosen[k]) if (k := (v, p.user_id, p.target_movie_id)) in chosen else None
                  for v in variants]
        cells += [load(E.poster_path(posters, h["movie_id"])) for h in p.history[:n_history]]
        table.append(cells)
    size = max(c.shape[0] for row in table for c in row if c is not None)
    cols = 1 + len(variants) + n_history
    blank = np.full((size, size, 3), 235, np.uint8)
    cells = [E.fit_to(c, blank) if c is not None else blank for row in table for c in row + [None] * (cols - len(row))]
    from tasks.miniworld.posters import grid

    sheet = grid(np.stack(cells), cols, scale=max(1, 96 // size))
    tmp = path.with_name(path.stem + ".tmp.png")
    Image.fromarray(sheet).save(tmp)
    os.replace(tmp, path)
    return path


def _insert(rows: list[dict], run_id: str):
    """Writer callback: replace the run's rows (NaN and None become NULL)."""
    def write(con):
        import pandas as pd

        from warehouse import queries

        frame = pd.DataFrame({c: pd.Series([_null(r.get(c)) for r in rows], dtype=object) for c in ROW_FIELDS})
        queries.run(con, "eval_delete_run", {"run_id": run_id})
        con.register("eval_rows", frame)
        try:
            queries.run(con, "eval_insert")
        finally:
            con.unregister("eval_rows")
    return write


def _null(x):
    return None if isinstance(x, float) and math.isnan(x) else x


def evaluate_run(warehouse: str, posters: str | None = None, soft_prompt: str | None = None, config: str | None = None,
                 llm: str | None = None, sd: str | None = None, clip: str | None = None,
                 alphas: Sequence[float] = (0.0, 0.25, 0.5, 0.667, 0.75, 1.0), alpha: float = scoring.DEFAULT_ALPHA,
                 candidates: int | None = None, steps: int | None = None, size: int | None = None,
                 guidance: float | None = None,
                 w_soft: float | None = None, seed: int = 0, limit_users: int | None = None, lpips_weights: str | None = None,
                 out: str | None = None, run_id: str | None = None, n_history: int = 5,
                 prompt_style: str = "vicuna", world_reference: bool = False) -> dict:
    """Run the evaluation; returns a summary dict (run id, paths, per-variant summary, notes)."""
    from pmg_models import soft_prompt as S
    from warehouse.db import connect_reader

    if lpips_weights and not posters:
        raise ValueError("--lpips-weights needs --posters: LPIPS compares the images with the target and history posters")
    alphas, alpha = headline_alpha(alphas, alpha)  # early: a bad α found at the summary would waste the whole run
    conditioning.check_seed(seed)
    if world_reference and size is not None:
        check_world_size(size)  # early: the check after model loading would come only after keyword generation
    models = resolve_models(warehouse, config, llm=llm, sd=sd, clip=clip, soft_prompt=soft_prompt)
    method = models["method"]  # the model config's [method] defaults; arguments given here win
    candidates = int(candidates if candidates is not None else method.get("candidates", 2))
    steps = int(steps if steps is not None else method.get("steps", 20))
    guidance = float(guidance if guidance is not None else method.get("guidance", 7.5))
    w_soft = soft_scale(method, w_soft)
    size = size or method.get("height")
    with_title = bool(method.get("title_in_prompt", True))
    weights = tuple(float(w) for w in method.get("weights", conditioning.DEFAULT_WEIGHTS))
    n_item, n_pref = int(method.get("n_item_keywords", 10)), int(method.get("n_pref_keywords", 8))
    if candidates < 1 or steps < 1:
        raise ValueError("--candidates and --steps must be at least 1")
    posters_dir = Path(posters) if posters else None
    if posters_dir is not None and not posters_dir.is_dir():
        raise ValueError(f"posters directory {posters_dir} does not exist; pass --posters DIR with <movieId>.png files")
    run_id = run_id or new_run_id("evaluate")
    out_dir = Path(out) if out else Path(warehouse) / "evaluations" / run_id
    lpips_model = None
    if lpips_weights:
        from pmg_models.lpips import LPIPS

        lpips_model = LPIPS.from_weights(lpips_weights)
        notes = [f"LPIPS (AlexNet, lpips v0.1 formula) from {lpips_weights}; lower = more similar."]
    else:
        notes = [LPIPS_NOTE]
    if posters_dir is None:
        notes.append("No --posters: image–image scores and SSIM were not computed; d_p and d_t are CLIP text scores.")

    lm, pipe, clip_model = (resources.llm(models["llm"]), resources.sd(models["sd"]), resources.clip(models["clip"]))
    pipe.latent_shape(size, size)  # the model's size rule, before keywords are generated
    soft = path = None
    if models["soft_prompt"] is not None:  # also before the keyword stage, which can take minutes
        path = soft_prompt_file(models["soft_prompt"])
        soft = S.load(path, llm_fingerprint=lm.fingerprint, sd_fingerprint=pipe.fingerprint, llm=lm.config,
                      sd_width=pipe.text_width)
        version = prompts.prompt_version(prompt_style)
        if soft.cfg.prompt_version and soft.cfg.prompt_version != version:
            raise ValueError(f"soft prompt {path} was trained on prompts {soft.cfg.prompt_version}, this evaluation "
                             f"uses {version}; pass the matching prompt style or retrain")
    with connect_reader(Path(warehouse)) as con:
        pairset = E.select_pairs(con, posters_dir, limit_users, n_history, prompt_style)
    pairs, item_kw = pairset.pairs, pairset.item_keywords
    if not pairs:
        raise ValueError(f"no held-out pairs: none of the {pairset.stats['users']} users has a liked movie to hold out "
                         "and a history left; ingest more ratings")
    bar = progress.get()
    bar.stage("keywords", 2, "lists")  # movies' poster keywords, then users' preference keywords
    made_items = E.fill_item_keywords(lm, pairset, [p.target_movie_id for p in pairs] + E.history_movie_ids(pairs),
                                      n=n_item, style=prompt_style, seed=seed)
    bar.advance(1)
    made_prefs = E.fill_preferences(lm, pairset, n=n_pref, style=prompt_style, seed=seed)
    bar.advance(1)
    bar.end_stage()
    notes.append(f"Keywords: {made_items} movies' poster keywords and {made_prefs} users' preference keywords were "
                 "generated for this run (the rest came from the warehouse).")

    soft_emb, skipped = None, {}
    if soft is not None:
        soft_emb = S.embed(soft, lm, [E.soft_text(p, item_kw, prompt_style) for p in pairs])
        variants = list(E.VARIANTS)
        notes.append(f"Soft prompt: {path}.")
    else:
        variants = ["baseline", "keywords"]
        reason = "no soft prompt given (--soft-prompt); PMG without soft embeddings equals 'keywords only'"
        skipped = {"pmg": reason, "soft": "no soft prompt given (--soft-prompt)"}
        notes.append("No soft prompt given (--soft-prompt or the model config's soft_prompt): the soft-embeddings-only "
                     "variant was skipped, and PMG full without its soft part is the 'keywords only' row.")

    size = int(size or pipe.default_size)
    if world_reference:
        check_world_size(size)
        variants += list(E.REFERENCE_VARIANTS)
        notes.append("World reference: the miniature world's renderer drew the baseline and keywords-only captions "
                     "(same seeds; keyword weights and soft tokens do not apply) — what a perfect generator would "
                     "make of these keywords, so the most d_p and d_t can show here. Its keywords row is compared "
                     "with its own baseline row.")
    jobs = E.plan_jobs(pairs, item_kw, variants, candidates, seed, weights=weights, with_title=with_title)
    for j in jobs:  # fail before any image is generated, not in the middle of the run
        if j.variant in E.REFERENCE_VARIANTS and j.candidate == 0:
            E.reference_blocks(j)
    opts = {"steps": steps, "size": size, "guidance": guidance, "w_soft": w_soft, "lpips": lpips_model,
            "with_title": with_title}
    base, poster_emb = [], {}
    bar.stage("evaluate", len(pairs), "pairs")
    for start in range(0, len(pairs), PAIR_CHUNK):  # bounded memory: images live for one chunk of pairs
        part = [j for j in jobs if start <= j.pair < start + PAIR_CHUNK]
        base += score_chunk(pipe, clip_model, pairs, item_kw, part, soft_emb, posters_dir, out_dir, run_id,
                            poster_emb, opts)
        bar.advance(min(PAIR_CHUNK, len(pairs) - start), len(part))
    bar.end_stage()
    if posters_dir is not None:
        missing = sum(1 for p in pairs if poster_emb.get(p.target_movie_id) is None)
        if missing:
            notes.append(f"{missing} of {len(pairs)} target posters are missing in {posters_dir}: those pairs have "
                         "no image–image d_t and no target SSIM.")
    rows = E.score_rows(base, alphas)
    summary = E.summarize(rows, alpha, variants)
    taste = E.taste_columns(rows, alpha, variants, {(p.user_id, p.target_movie_id): E.pair_taste_overlap(p, item_kw)
                                                    for p in pairs})
    for r in summary:
        r.update(taste[r["variant"]])
    by_candidates = E.candidate_sweep(base, alpha, variants)
    floor = E.floor_note(E.floored_shares(base))
    if floor:
        notes.append(floor)
    settings = {"pairs": len(pairs), "candidates": candidates, "weights": list(weights), "alpha": alpha,
                "alphas": alphas, "steps": steps, "size": size, "guidance": guidance, "w_soft": w_soft, "seed": seed, "limit_users": limit_users,
                "world_reference": world_reference,
                "posters": str(posters_dir) if posters_dir else None,
                "soft_prompt": str(models["soft_prompt"]) if models["soft_prompt"] else None,
                "llm": lm.fingerprint, "sd": pipe.fingerprint, "clip": clip_model.fingerprint,
                "prompt_version": prompts.prompt_version(prompt_style)}
    files = {"results_csv": write_csv(out_dir / "results.csv", rows, ROW_FIELDS),
             "summary_csv": write_csv(out_dir / "summary.csv", summary, list(summary[0])),
             "candidates_csv": write_csv(out_dir / "candidates.csv", by_candidates, list(by_candidates[0])),
             "markdown": write_markdown(out_dir / "summary.md", run_id, summary, variants, skipped, notes, settings,
                                        by_candidates),
             "plot": write_plot(out_dir / "alpha_sweep.png", E.sweep(rows, variants), alpha)}
    grid_png = write_pairs_grid(out_dir / "pairs.png", out_dir, rows, pairs, variants, alpha, posters_dir)
    if grid_png is not None:
        files["pairs_grid"] = grid_png
    record_run(warehouse, run_id, "evaluate", settings, {"llm": lm.fingerprint, "sd": pipe.fingerprint,
                                                         "clip": clip_model.fingerprint},
               settings["prompt_version"], "completed", {"pairs": len(pairs), "rows": len(rows), "images": len(base)},
               _insert(rows, run_id), ("evaluations",))
    return {"run_id": run_id, "out_dir": str(out_dir), "pairs": len(pairs), "variants": variants, "alpha": alpha,
            "rows": len(rows), "summary": summary, "notes": notes, **{k: str(v) for k, v in files.items()}}


def _save_images(out_dir: Path, rows: list[dict], images: list[np.ndarray]) -> None:
    from PIL import Image

    for r, img in zip(rows, images):
        path = out_dir / r["image_path"]
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.stem + ".tmp.png")
        Image.fromarray(img).save(tmp)
        os.replace(tmp, path)


@flow(name="evaluate")
def evaluate(warehouse: str, **kwargs) -> dict:
    """Prefect entry point (deployments); see evaluate_run for the parameters."""
    return evaluate_run(warehouse, **kwargs)
