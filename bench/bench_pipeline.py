"""End-to-end pipeline benchmark: `pmg backfill` against the original demo's per-request loop, same run.

One run, one synthetic dataset, one set of checkpoints (a model preset written by this script), the same
generation parameters for both sides:
  (a) users/hour of `pmg backfill --targets holdout` (a child process running the real CLI) against
      bench/peer_sequential.py (fresh models per request, batch 1) on the first --peer-users users
      (the peer's time per request is flat, so its rate is measured on a few requests);
  (b) orchestration overhead: the backfill's wall time minus the time inside model loads and model calls
      (timed in the child by wrapping the model entry points; tasks hold the device lock around each call,
      so the timed intervals do not overlap);
  (c) `pmg nightly` after new ratings for 1% of the users, against the backfill's wall time;
  (d) the backfill process's peak RSS (ru_maxrss of the child) at 10x the users against N users.
The Prefect API is one local server shared by the children (as a deployment would have), started here.
The peer always runs eagerly (PMG_JIT=0): with models reloaded per request, compiling would only slow it.
Prints Markdown rows on stdout; progress goes to stderr.

Run: .venv/bin/python -m bench.bench_pipeline --users 20 [--peer-users 3] [--rss-users 20] [--preset tiny]
"""
from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PRESETS = {
    # the demo's tiny random models
    "tiny": {},
    # a wider, deeper LLM (the stage that dominates on CPU); SD and CLIP stay tiny
    "small": {"hidden_size": 256, "intermediate_size": 688, "num_hidden_layers": 4, "num_attention_heads": 8,
              "num_key_value_heads": 4, "head_dim": 32},
}
TARGETS = ["--targets", "holdout"]


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# -- setup -------------------------------------------------------------------------------------

def make_models(base: Path, preset: str) -> dict[str, Path]:
    """Checkpoints of `preset` under base/<preset>/{llm,sd,clip} (written once)."""
    from pmg_models import clip_tiny, llama
    from pmg_models import sd as sd_models

    d = base / preset
    paths = {"llm": d / "llm", "sd": d / "sd", "clip": d / "clip"}
    if not (paths["llm"] / "config.json").exists():
        llama.init_tiny(paths["llm"], seed=0, **PRESETS[preset])
    if not (paths["sd"] / "model_index.json").exists():
        sd_models.init_tiny(paths["sd"], seed=0)
    if not (paths["clip"] / "config.json").exists():
        clip_tiny.init_tiny(paths["clip"], seed=0)
    return paths


def make_warehouse(work: Path, name: str, users: int, movies: int, models: dict[str, Path]) -> tuple[Path, Path]:
    """Synthetic MovieLens data with `users` users, ingested into a warehouse naming `models`."""
    from warehouse.ingest import ingest
    from warehouse.synth import synthesize

    data = synthesize(work / f"data-{name}", users=users, movies=movies, ratings=users * 30, seed=1)
    root = work / name
    root.mkdir()
    (root / "pmg.toml").write_text("[models]\n" + "".join(f'{k} = "{v}"\n' for k, v in models.items()))
    ingest(data, root)
    return root, data


def changed_copy(root: Path, data: Path, out: Path, fraction: float) -> tuple[Path, int]:
    """A copy of the dataset where the first `fraction` of users got one new, older liked rating each.

    Older than the user's newest liked rating, so the held-out target stays and the history changes.
    """
    from warehouse.db import connect_reader

    with connect_reader(root) as con:
        users = [u for (u,) in con.execute("SELECT DISTINCT user_id FROM posters ORDER BY 1").fetchall()]
        movies = [m for (m,) in con.execute("SELECT movie_id FROM item_keywords ORDER BY 1").fetchall()]
        chosen = users[:max(1, math.ceil(fraction * len(users)))]
        lines = []
        for u in chosen:
            rated = {m for (m,) in con.execute("SELECT movie_id FROM ratings WHERE user_id = ?", [u]).fetchall()}
            newest = con.execute("SELECT max(rated_at) FROM ratings WHERE user_id = ?", [u]).fetchall()[0][0]
            movie = next(m for m in movies if m not in rated)
            lines.append(f"{u},{movie},5.0,{int(newest.timestamp()) - 10**6}")
    shutil.copytree(data, out)
    ratings = out / "ratings.csv"
    raw = ratings.read_bytes()
    eol = b"\r\n" if b"\r\n" in raw else b"\n"
    ratings.write_bytes(raw.rstrip(b"\r\n") + eol + eol.join(x.encode() for x in lines) + eol)
    return out, len(chosen)


# -- the child: the real CLI with model time and peak RSS recorded ------------------------------

def child(result_path: str, argv: list[str]) -> int:
    """Run `pmg argv` in this process; write model-load/-call seconds, call counts and peak RSS as JSON."""
    import resource
    import threading

    from flows.cli import main
    from pmg_models.clip import CLIPModel
    from pmg_models.generation import LlamaLM
    from pmg_models.sd.pipeline import StableDiffusion
    from tasks import resources

    lock = threading.Lock()
    spent = {"load_s": 0.0, "call_s": 0.0, "calls": {}}

    def add(key: str, seconds: float, name: str | None = None) -> None:
        with lock:
            spent[key] += seconds
            if name:
                spent["calls"][name] = spent["calls"].get(name, 0.0) + seconds

    def timed(fn, key: str, name: str | None = None):
        def wrapper(*args, **kwargs):
            start = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                add(key, time.perf_counter() - start, name)
        return wrapper

    for cls, name in ((LlamaLM, "generate"), (StableDiffusion, "generate"), (CLIPModel, "encode_image"),
                      (CLIPModel, "encode_text")):
        setattr(cls, name, timed(getattr(cls, name), "call_s", f"{cls.__name__}.{name}"))
    real_load = resources._load
    resources._load = lambda kind, path, loader: real_load(kind, path, timed(loader, "load_s", f"load.{kind}"))

    start = time.perf_counter()
    rc = main(argv)
    spent.update(rc=rc, flow_s=time.perf_counter() - start, counters=dict(resources.CALLS),
                 maxrss_mb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    Path(result_path).write_text(json.dumps(spent))
    return rc


def run_child(root: Path, args: list[str], env: dict, tag: str) -> dict:
    """`pmg --warehouse root args` in a child process; its record plus the wall time seen from here."""
    with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as f:
        out = Path(f.name)
    cmd = [sys.executable, "-m", "bench.bench_pipeline", "--child", str(out), "--", "--warehouse", str(root), *args]
    log(f"{tag}: pmg {' '.join(args)}")
    start = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        saved = root.parent / f"failed-{root.name}-{time.strftime('%H%M%S')}.log"
        saved.write_text(proc.stdout + proc.stderr)
        raise RuntimeError(f"{tag} failed ({proc.returncode}), full output in {saved}: {proc.stderr[-1500:]}")
    rec = json.loads(out.read_text())
    out.unlink()
    rec["wall_s"] = wall
    log(f"{tag}: {wall:.1f} s wall, {rec['call_s']:.1f} s model calls, {rec['load_s']:.1f} s loads, "
        f"peak RSS {rec['maxrss_mb']:.0f} MB; calls {json.dumps({k: round(v, 1) for k, v in rec['calls'].items()})}")
    return rec


def run_peer(root: Path, params: dict, users: int, env: dict) -> dict:
    code = ("import json, sys; from bench.peer_sequential import run; "
            f"r = run({str(root)!r}, {params!r}, {users}); r.pop('results'); print(json.dumps(r))")
    log(f"peer: {users} request(s), fresh models per request, batch 1")
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"peer failed: {proc.stderr[-3000:]}")
    rec = json.loads(proc.stdout.strip().splitlines()[-1])
    log(f"peer: {rec['wall_s']:.1f} s for {rec['requests']} request(s); loads "
        f"{json.dumps({k: round(v, 1) for k, v in rec['load'].items()})}, calls "
        f"{json.dumps({k: round(v, 1) for k, v in rec['call'].items()})}")
    return rec


# -- the benchmark -----------------------------------------------------------------------------

def gen_args(a) -> list[str]:
    return ["--candidates", str(a.candidates), "--steps", str(a.steps), "--height", str(a.size), "--width",
            str(a.size), "--chunk-size", str(a.chunk_size)]


def bench(a, work: Path) -> list[str]:
    from flows import prefect_env
    from warehouse.db import connect_reader

    models = make_models(work / "models", a.preset)
    env = {**os.environ, "PMG_JIT": "1" if a.jit else "0"}
    with prefect_env.embedded_api(work / "prefect-wh") as url:
        env["PREFECT_API_URL"] = url
        root, data = make_warehouse(work, "wh", a.users, a.movies, models)
        full = run_child(root, ["backfill", *TARGETS, *gen_args(a)], env, f"backfill {a.users} users")
        with connect_reader(root) as con:
            users = con.execute("SELECT count(DISTINCT user_id) FROM posters").fetchall()[0][0]
        params = {"candidates": a.candidates, "steps": a.steps, "height": a.size, "width": a.size}
        peer = run_peer(root, params, a.peer_users, {**env, "PMG_JIT": "0"})
        changed, n_changed = changed_copy(root, data, work / "data-next", 0.01)
        nightly = run_child(root, ["nightly", "--source", str(changed)], env, f"nightly ({n_changed} users changed)")
        rss_base = full
        if a.rss_users != a.users:
            r, _ = make_warehouse(work, "wh-rss", a.rss_users, a.movies, models)
            rss_base = run_child(r, ["backfill", *TARGETS, *gen_args(a)], env, f"backfill {a.rss_users} users")
        rss_big = None
        if a.rss_scale > 1 and a.rss_users * a.rss_scale == a.users:
            rss_big = full  # the timed backfill is the 10x run
        elif a.rss_scale > 1:
            big, _ = make_warehouse(work, "wh-big", a.rss_users * a.rss_scale, a.movies, models)
            rss_big = run_child(big, ["backfill", *TARGETS, *gen_args(a)], env,
                                f"backfill {a.rss_users * a.rss_scale} users")
    return rows(a, users, full, peer, nightly, n_changed, rss_base, rss_big)


def rows(a, users: int, full: dict, peer: dict, nightly: dict, n_changed: int, rss_base: dict,
         rss_big: dict | None) -> list[str]:
    from bench.machine import describe

    ours_rate = users / full["wall_s"] * 3600
    peer_rate = peer["requests"] / peer["wall_s"] * 3600
    model_s = full["call_s"] + full["load_s"]
    overhead = full["wall_s"] - model_s
    cmd = (f"python -m bench.bench_pipeline --users {a.users} --peer-users {a.peer_users} --rss-users {a.rss_users} "
           f"--rss-scale {a.rss_scale} --preset {a.preset} --candidates {a.candidates} --steps {a.steps} "
           f"--size {a.size} --chunk-size {a.chunk_size}{' --jit' if a.jit else ''}")
    load = os.getloadavg()
    head = [f"Pipeline end to end, {describe()}, {time.strftime('%Y-%m-%d %H:%M')}, "
            f"load average {load[0]:.1f}/{load[1]:.1f}/{load[2]:.1f} at the end",
            f"Command: `{cmd}`", "",
            "| measure | ours | peer / base | ratio | target |", "|---|---|---|---|---|"]
    out = [
        f"| users/hour, `pmg backfill` ({users} users) vs per-request loop ({peer['requests']} users) | "
        f"{ours_rate:,.0f} ({full['wall_s']:.1f} s) | {peer_rate:,.0f} ({peer['wall_s'] / peer['requests']:.1f} s/user; "
        f"loads {peer['load_s'] / peer['requests']:.1f} s/user) | {ours_rate / peer_rate:.1f}x | >= 10x |",
        f"| orchestration overhead at {users} users: wall - model calls - loads | {overhead:.1f} s, of which "
        f"{full['wall_s'] - full['flow_s']:.1f} s process start and imports ({full['call_s']:.1f} s calls, "
        f"{full['load_s']:.1f} s loads) | {full['wall_s']:.1f} s wall | "
        f"{100 * overhead / full['wall_s']:.0f}% | <= 10% |",
        f"| `pmg nightly`, {n_changed} of {users} users changed ({100 * n_changed / users:.1f}%) | "
        f"{nightly['wall_s']:.1f} s (overhead {nightly['wall_s'] - nightly['call_s'] - nightly['load_s']:.1f} s) | "
        f"{full['wall_s']:.1f} s backfill | {100 * nightly['wall_s'] / full['wall_s']:.1f}% | <= 5% |",
    ]
    if rss_big is not None:
        out.append(f"| peak RSS of the backfill process, {a.rss_users * a.rss_scale} vs {a.rss_users} users | "
                   f"{rss_big['maxrss_mb']:.0f} MB ({rss_big['wall_s']:.0f} s) | {rss_base['maxrss_mb']:.0f} MB | "
                   f"{rss_big['maxrss_mb'] / rss_base['maxrss_mb']:.2f}x | <= 1.2x |")
    # where the speed-up comes from: seconds per user inside the same model calls on both sides
    for name, ours_key, peer_key in (("LLM", "LlamaLM.generate", "llm.generate"),
                                     ("SD", "StableDiffusion.generate", "sd.generate")):
        o = full["calls"].get(ours_key, 0.0) / users
        q = peer["call"].get(peer_key, 0.0) / peer["requests"]
        out.append(f"| {name} seconds per user inside model calls | {o:.2f} | {q:.2f} | "
                   f"{q / o if o else float('nan'):.1f}x | - |")
    return head + out


def main() -> None:
    if "--child" in sys.argv[1:2]:
        sep = sys.argv.index("--")
        sys.exit(child(sys.argv[2], sys.argv[sep + 1:]))
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=20, help="users of the timed backfill (N)")
    parser.add_argument("--peer-users", type=int, default=3, help="requests the peer runs (its rate is flat)")
    parser.add_argument("--rss-users", type=int, help="base users of the RSS comparison (default N)")
    parser.add_argument("--rss-scale", type=int, default=10, help="RSS at rss-users x this (1 skips it)")
    parser.add_argument("--movies", type=int, default=200)
    parser.add_argument("--preset", choices=sorted(PRESETS), default="tiny")
    parser.add_argument("--candidates", type=int, default=2)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--chunk-size", type=int, default=16)
    parser.add_argument("--jit", action="store_true", help="compiled models for ours (PMG_JIT=1, the CLI's default); default eager, "
                        "as `pmg demo` runs the tiny models")
    parser.add_argument("--work", help="keep the warehouses here (default: a temporary directory)")
    a = parser.parse_args()
    a.rss_users = a.rss_users or a.users
    with contextlib.ExitStack() as stack:
        work = Path(a.work) if a.work else Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="pmg-bench-")))
        work.mkdir(parents=True, exist_ok=True)
        for line in bench(a, work):
            print(line, flush=True)


if __name__ == "__main__":
    main()
