"""The peer of the pipeline benchmark: the original demo's way, one (user, target) request at a time.

Per request it loads the LLM, Stable Diffusion and CLIP fresh (the original reloaded them per request),
asks the LLM for the keywords of the target and of each history movie (no cache across requests), then
for the user's preference keywords, makes the K candidates one image at a time (batch 1), scores each
with CLIP (batch 1) and picks the best. Same pmg_models classes, same tasks/pmg functions, same
checkpoints and parameters as the pipeline; no Prefect, no warehouse writes (it only reads the
selection from the published catalog).

Run: .venv/bin/python -m bench.peer_sequential --warehouse W [--limit-users N] (prints JSON)
"""
from __future__ import annotations

import argparse
import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from tasks.pmg import conditioning, history, keywords, prompts, scoring

STOP = ["###", "</s>"]


@dataclass
class Timer:
    """Seconds spent loading models and inside model calls, by name."""
    load: dict = field(default_factory=dict)
    call: dict = field(default_factory=dict)

    def add(self, kind: str, name: str, seconds: float) -> None:
        bucket = self.load if kind == "load" else self.call
        bucket[name] = bucket.get(name, 0.0) + seconds

    def timed(self, kind: str, name: str, fn, *args, **kwargs):
        start = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            self.add(kind, name, time.perf_counter() - start)


def selection(warehouse, limit_users: int | None = None, n_history: int = 5) -> list[dict]:
    """The backfill's `--targets holdout` requests: user, held-out target and its history, from the catalog."""
    from tasks import targets
    from warehouse.db import connect_reader

    with connect_reader(warehouse) as con:
        users = targets.select_users(con, None, limit_users)
        sel = targets.select_targets(con, users, "holdout")
        hist = targets.histories(con, sel, n_history)
        ids = sorted({m for _, m in sel.pairs})
        rows = con.execute("SELECT movie_id, title, genres FROM movies WHERE list_contains(?, movie_id)",
                           [ids]).fetchall()
    movies = {m: (t or "", list(g or [])) for m, t, g in rows}
    return [{"user_id": u, "target_movie_id": m, "title": movies[m][0], "genres": movies[m][1], "history": hist[u]}
            for u, m in sel.pairs]


def one_request(req: dict, models: dict, p: dict, timer: Timer) -> dict:
    """One (user, target): fresh models, keywords, K candidates at batch 1, CLIP scores, the best."""
    from pmg_models import llama
    from pmg_models.clip import CLIPModel
    from pmg_models.sd.pipeline import StableDiffusion

    lm = timer.timed("load", "llm", llama.load, models["llm"])

    def ask(text: str, max_new: int, n: int) -> list[str]:
        out = timer.timed("call", "llm.generate", lm.generate, [text], max_new_tokens=max_new, temperature=0.0,
                          stop=STOP, seed=p["seed"])
        return keywords.parse_keywords(out[0], n).keywords

    def item_kw(title, genres):
        return ask(prompts.build_item_prompt(title, genres, "", p["n_item_keywords"], p["prompt_style"]),
                   p["max_new_tokens_item"], p["n_item_keywords"])

    target_kw = item_kw(req["title"], req["genres"])
    hist_kw = {h["movie_id"]: item_kw(h["title"], h["genres"]) for h in req["history"]}
    def pref_prompt(text: str) -> str:
        return prompts.build_preference_prompt(text, p["n_pref_keywords"], p["prompt_style"])

    _, items_text = history.fit_to_model(lm, req["history"], hist_kw, pref_prompt, p["max_new_tokens_pref"])
    pref_kw = ask(pref_prompt(items_text), p["max_new_tokens_pref"], p["n_pref_keywords"])
    del lm

    sd = timer.timed("load", "sd", StableDiffusion.from_pretrained, models["sd"])
    negative = conditioning.negative_prompt("movie")
    target = conditioning.target_keywords(req["title"], target_kw)
    pics = []
    for c in conditioning.candidate_grid(p["candidates"], weights=tuple(p["weights"])):
        segments = conditioning.sd_prompt_segments(target, pref_kw, c.w)
        seed = conditioning.candidate_seed(p["seed"], req["user_id"], req["target_movie_id"], c.seed_slot)
        pics.append(timer.timed("call", "sd.generate", sd.generate, [segments], [seed], steps=p["steps"],
                                guidance=p["guidance"], height=p["height"], width=p["width"],
                                negative_prompt=negative)[0])
    del sd

    clip = timer.timed("load", "clip", CLIPModel.from_pretrained, models["clip"])
    target_text, pref_text = ", ".join(target), ", ".join(pref_kw)
    d_p, d_t = [], []
    for pic in pics:
        img = timer.timed("call", "clip.encode_image", clip.encode_image, [pic])
        txt = timer.timed("call", "clip.encode_text", clip.encode_text, [target_text, pref_text])
        sim = clip.similarity(img, txt)
        d_t.append(float(sim[0, 0]))
        d_p.append(float(sim[0, 1]))
    z = np.atleast_1d(scoring.z_score(np.array(d_p), np.array(d_t), p["alpha"]))
    return {"user_id": req["user_id"], "target_movie_id": req["target_movie_id"], "selected": scoring.select_best(z),
            "z": [float(x) for x in z]}


def run(warehouse, params: dict, limit_users: int | None = None, requests: list[dict] | None = None) -> dict:
    """Every request sequentially; returns wall seconds, load/call seconds, request count and the results."""
    from flows import settings

    p, _ = settings.resolve(warehouse, {k: v for k, v in params.items() if k != "chunk_size"})
    reqs = requests if requests is not None else selection(warehouse, limit_users, p["n_history"])
    timer = Timer()
    start = time.perf_counter()
    results = [one_request(r, p["models"], p, timer) for r in reqs]
    wall = time.perf_counter() - start
    return {"requests": len(reqs), "wall_s": wall, "load_s": sum(timer.load.values()),
            "call_s": sum(timer.call.values()), "load": timer.load, "call": timer.call, "results": results}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--warehouse", required=True)
    parser.add_argument("--limit-users", type=int)
    parser.add_argument("--candidates", type=int, default=2)
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--size", type=int, default=32)
    args = parser.parse_args()
    out = run(Path(args.warehouse), {"candidates": args.candidates, "steps": args.steps, "height": args.size,
                                     "width": args.size}, args.limit_users)
    print(json.dumps({k: v for k, v in out.items() if k != "results"}, indent=2))


if __name__ == "__main__":
    main()
