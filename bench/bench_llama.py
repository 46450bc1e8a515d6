"""Llama prefill/decode throughput: pmg_models (MindSpore, compiled) vs transformers (PyTorch CPU).

Same run, same weights (a random HF checkpoint saved as safetensors), same prompt ids, greedy decoding.
Prefill = one prompt pass producing last-position logits (transformers: `logits_to_keep=1`, as
`generate` does). Decode = per-token steps with a KV cache (transformers: DynamicCache + argmax loop).
Each side's time is its best of REPEATS warm calls (so a slow call or two, from other tenants of the
cores, does not decide a row), the two sides' calls taking turns (so a slow spell hits both). Compile
time is the first call minus a warm call. Peak RSS while loading is measured in a fresh subprocess
against the RSS just before the weights are read. Decode is also compared with the memory-bandwidth limit: weight bytes per step ÷ measured copy bandwidth, and prefill with the machine's
fp32 GEMM ceiling (the best of NumPy's BLAS and PyTorch on a 2048³ matmul, same run): the share of it
each side reaches bounds what any speed-up over transformers can be.

    .venv/bin/python -m bench.bench_llama --sizes tiny --batches 1,8
    .venv/bin/python -m bench.bench_llama --sizes tiny,170m --batches 1,8,32 --append BENCHMARKS.md
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPEATS = 5  # warm calls per side and measure; the best counts (it was 2 until 2026-11-28)
PAUSE_S = 0.3  # between calls that take turns: longer than OpenMP's default spin of the threads after a call

SIZES = {
    "tiny": dict(hidden_size=256, intermediate_size=688, num_hidden_layers=4, num_attention_heads=4,
                 num_key_value_heads=4, vocab_size=1000),
    "small": dict(hidden_size=512, intermediate_size=1408, num_hidden_layers=4, num_attention_heads=8,
                  num_key_value_heads=8, vocab_size=8000),
    "170m": dict(hidden_size=1024, intermediate_size=2816, num_hidden_layers=8, num_attention_heads=16,
                 num_key_value_heads=16, vocab_size=32000),
}


def make_checkpoint(size: str, root: Path) -> Path:
    """A random HF Llama dir (safetensors) with a tiny sentencepiece tokenizer copied in."""
    import torch
    import transformers
    from pmg_models import llama

    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(max_position_embeddings=1024, **SIZES[size])
    out = root / size
    transformers.LlamaForCausalLM(cfg).save_pretrained(out, safe_serialization=True)
    tok = llama.init_tiny(root / "tok", seed=0)
    for f in ("tokenizer.model", "tokenizer_config.json", "special_tokens_map.json"):
        shutil.copy(tok / f, out / f)
    return out


def load_rss(path: Path) -> dict:
    """Run in a subprocess: RSS before building the model and peak RSS (VmHWM) through build + load."""
    def status(key):
        for line in open("/proc/self/status"):
            if line.startswith(key):
                return int(line.split()[1]) * 1024
    from pmg_models import checkpoint, llama

    from pmg_models import runtime

    runtime.setup()
    before = status("VmRSS")  # libraries loaded, no model yet
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset VmHWM (peak) to the current RSS
    t0 = time.perf_counter()
    net = llama.build(llama.read_config(path))
    llama.load_weights(net, path)
    seconds = time.perf_counter() - t0
    weight_bytes = sum(f.stat().st_size for f in checkpoint.weight_files(path))
    return {"before": before, "peak": status("VmHWM"), "weight_bytes": weight_bytes, "seconds": seconds}


def bandwidth_gbs() -> float:
    """Copy bandwidth (read + write bytes per second) of a 256 MiB array, best of 5."""
    a = np.ones(64 << 20, np.float32)
    b = np.empty_like(a)
    best = min(_timed(lambda: np.copyto(b, a)) for _ in range(5))
    return 2 * a.nbytes / best / 1e9


def prefill_gflop(cfg, batch: int, prompt_len: int) -> float:
    """FLOPs of a standard prefill (what transformers computes): every layer at every position, causal
    attention (half the score square), the last position's logits. Ours skips the last layer's work for
    all positions but the last, so its share of the peak reads as work-equivalent."""
    h, i, n = cfg.hidden_size, cfg.intermediate_size, cfg.num_hidden_layers
    d = cfg.head_dim
    proj = h * d * (cfg.num_attention_heads * 2 + cfg.num_key_value_heads * 2) + 3 * h * i
    attn = 2 * cfg.num_attention_heads * d * prompt_len * (prompt_len + 1) / 2
    tokens = batch * prompt_len
    return (2 * n * (proj * tokens + attn * batch) + 2 * batch * h * cfg.vocab_size) / 1e9


def _timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def alternating_best(calls: dict, repeats: int = REPEATS, pause: float = PAUSE_S) -> dict:
    """Each call's best time over `repeats` rounds in which the calls take turns.

    On a shared host a slow spell lasts seconds to minutes; timing one side's calls in a block and then the
    other's lets it land on one side only (three runs minutes apart gave a batch-8 prefill ratio of 0.81–1.21×).
    Taking turns puts both sides in the same spells. The pause lets one library's spinning threads go idle
    before the other's call.
    """
    best = {name: float("inf") for name in calls}
    for _ in range(repeats):
        for name, fn in calls.items():
            time.sleep(pause)
            best[name] = min(best[name], _timed(fn))
    return best


def ours_calls(lm, prompts: np.ndarray, new_tokens: int) -> tuple[dict, float]:
    """Ours' prefill and generation as calls, and their compile time (first calls minus warm ones)."""
    from pmg_models.generation import Sampling, cache_bucket, length_bucket

    rows = prompts.tolist()
    b = len(rows)
    seeds = [0] * b
    # the bucket generate() itself picks, so the timed prefill and the generation share one runner
    need = length_bucket(prompts.shape[1]) + new_tokens
    cache, prefill, _ = lm.runner(b, cache_bucket(need, lm.config.max_position_embeddings))
    real = np.zeros((b, cache.length), np.int32)
    real[:, :prompts.shape[1]] = 1
    ids = prompts.astype(np.int32)
    calls = {"prefill": lambda: lm._run_prefill(prefill, ids, real),
             "generate": lambda: lm.generate_ids(rows, new_tokens, Sampling(), seeds)}
    first = {name: _timed(fn) for name, fn in calls.items()}
    warm = {name: _timed(fn) for name, fn in calls.items()}
    return calls, sum(first.values()) - sum(warm.values())


def torch_calls(model, prompts: np.ndarray, new_tokens: int) -> dict:
    """transformers' prefill (last-position logits, as `generate` does) and a greedy loop on its cache."""
    import torch
    import transformers

    ids = torch.tensor(prompts)

    @torch.no_grad()
    def prefill():
        return model(ids, use_cache=True, cache=transformers.DynamicCache(config=model.config),
                     logits_to_keep=1)

    @torch.no_grad()
    def generate():
        out = prefill()
        cache, nxt = out.past_key_values, out.logits[:, -1].argmax(-1, keepdim=True)
        for _ in range(new_tokens - 1):
            out = model(nxt, cache=cache, use_cache=True)
            cache, nxt = out.past_key_values, out.logits[:, -1].argmax(-1, keepdim=True)

    prefill()
    return {"prefill": prefill, "generate": generate}


def bench_pair(lm, hf, prompts: np.ndarray, new_tokens: int) -> tuple[dict, dict]:
    """Ours and the peer on the same prompts, their calls taking turns: (ours, peer) prefill_s, step_s."""
    ours, compile_s = ours_calls(lm, prompts, new_tokens)
    peer = torch_calls(hf, prompts, new_tokens)
    best = alternating_best({("ours", k): f for k, f in ours.items()} | {("peer", k): f for k, f in peer.items()})
    out = []
    for side in ("ours", "peer"):
        pre, gen = best[side, "prefill"], best[side, "generate"]
        out.append({"prefill_s": pre, "step_s": (gen - pre) / (new_tokens - 1)})
    out[0]["compile_s"] = compile_s
    return out[0], out[1]


def load_both(path: Path) -> tuple:
    """Ours and transformers' model from the same checkpoint."""
    import torch
    import transformers
    from pmg_models import llama

    return llama.load(path), transformers.LlamaForCausalLM.from_pretrained(path, dtype=torch.float32).eval()


def run(size: str, batches: list[int], prompt_len: int, new_tokens: int, root: Path, bw: float,
        peak: float) -> list[str]:
    path = make_checkpoint(size, root)
    rss = json.loads(subprocess.run([sys.executable, "-m", "bench.bench_llama", "--load-rss", str(path)],
                                    check=True, capture_output=True, text=True).stdout.strip().splitlines()[-1])
    lm, hf = load_both(path)
    weight_mb = rss["weight_bytes"] / 1e6
    rss_ratio = (rss["peak"] - rss["before"]) / rss["weight_bytes"]
    rows = []
    for b in batches:
        prompts = np.random.default_rng(b).integers(3, lm.config.vocab_size, (b, prompt_len))
        ours, ref = bench_pair(lm, hf, prompts, new_tokens)
        limit_ms = rss["weight_bytes"] / (bw * 1e9) * 1e3  # every decode step reads all weights once
        gflop = prefill_gflop(lm.config, b, prompt_len)
        rows.append(
            f"| {size} ({weight_mb:.0f} MB) | {b} | {b * prompt_len / ours['prefill_s']:.0f} | "
            f"{b * prompt_len / ref['prefill_s']:.0f} | {ref['prefill_s'] / ours['prefill_s']:.2f}× | "
            f"{100 * gflop / ours['prefill_s'] / peak:.0f}% / {100 * gflop / ref['prefill_s'] / peak:.0f}% | "
            f"{b / ours['step_s']:.1f} | {b / ref['step_s']:.1f} | {ref['step_s'] / ours['step_s']:.2f}× | "
            f"{ours['step_s'] * 1e3:.1f} / {limit_ms:.1f} | {ours['compile_s']:.1f} | "
            f"{rss_ratio:.2f}× ({rss['seconds']:.2f} s) |")
    return rows


def cache_scaling(size: str, batches: list[int], lengths: list[int], root: Path) -> list[str]:
    """Ours only: one compiled decode step at 100 filled slots for caches of each capacity. The step
    should cost the same whatever the capacity (transformers' cache has none: it grows per token)."""
    from pmg_models import llama

    lm = llama.load(make_checkpoint(size, root))
    rows = [f"| model | batch | " + " | ".join(f"{n} slots ms" for n in lengths) + " |",
            "|---|---|" + "---|" * len(lengths)]
    for b in batches:
        cells = []
        for length in lengths:
            _, _, decode = lm.runner(b, length)
            real = np.zeros((b, length), np.int32)
            real[:, :100] = 1
            feed, pos = np.full(b, 5, np.int32), np.full(b, 100, np.int32)
            lm._run_decode(decode, feed, pos, real, 100)
            cells.append(min(_timed(lambda: lm._run_decode(decode, feed, pos, real, 100)) for _ in range(10)))
        rows.append(f"| {size} | {b} | " + " | ".join(f"{1e3 * c:.1f}" for c in cells) + " |")
    return rows


def order_check(size: str, batches: list[int], prompt_len: int, root: Path, rounds: int = 2) -> list[str]:
    """Prefill tok/s of each side timed in a block of REPEATS calls, then taking turns with pauses of 0.3 s and
    2 s: if taking turns slowed one side (threads still spinning from the other's call), it would show here."""
    lm, hf = load_both(make_checkpoint(size, root))
    rows = ["| model | batch | round | block ours / peer | turns, 0.3 s ours / peer | turns, 2 s ours / peer |",
            "|---|---|---|---|---|---|"]
    for b in batches:
        prompts = np.random.default_rng(b).integers(3, lm.config.vocab_size, (b, prompt_len))
        calls = {"ours": ours_calls(lm, prompts, 2)[0]["prefill"], "peer": torch_calls(hf, prompts, 2)["prefill"]}
        for r in range(rounds):
            block = {name: min(_timed(fn) for _ in range(REPEATS)) for name, fn in calls.items()}
            turns = [alternating_best(calls, pause=pause) for pause in (PAUSE_S, 2.0)]
            cells = [f"{b * prompt_len / t['ours']:.0f} / {b * prompt_len / t['peer']:.0f}" for t in [block] + turns]
            rows.append(f"| {size} | {b} | {r + 1} | " + " | ".join(cells) + " |")
    return rows


HEADER = ("| model | batch | prefill tok/s ours | prefill tok/s torch | prefill speedup | "
          "prefill % of peak GEMM ours / torch | decode tok/s ours | "
          "decode tok/s torch | decode speedup | decode step ms / bandwidth floor ms | compile s | "
          "load peak RSS / weights (load time) |\n|---|---|---|---|---|---|---|---|---|---|---|---|")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", default="tiny")
    p.add_argument("--batches", default="1,8,32")
    p.add_argument("--prompt-len", type=int, default=128)
    p.add_argument("--new-tokens", type=int, default=32)
    p.add_argument("--append", type=Path, help="append the Markdown table to this file")
    p.add_argument("--cache-lengths", help="instead: ours' decode step ms for these KV-cache capacities, e.g. 128,256,512")
    p.add_argument("--order-check", action="store_true",
                   help="instead: prefill timed in blocks and taking turns, to see whether the order favours a side")
    p.add_argument("--load-rss", type=Path, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    os.environ.setdefault("PMG_JIT", "1")
    if args.load_rss:
        print(json.dumps(load_rss(args.load_rss)))
        return 0
    if args.order_check:
        with tempfile.TemporaryDirectory() as tmp:
            for size in args.sizes.split(","):
                print("\n".join(order_check(size, [int(b) for b in args.batches.split(",")], args.prompt_len,
                                             Path(tmp))))
        return 0
    if args.cache_lengths:
        with tempfile.TemporaryDirectory() as tmp:
            for size in args.sizes.split(","):
                print("\n".join(cache_scaling(size, [int(b) for b in args.batches.split(",")],
                                               [int(n) for n in args.cache_lengths.split(",")], Path(tmp))))
        return 0
    from bench.machine import heading

    bw = bandwidth_gbs()
    title, peak = heading("Llama: pmg_models vs transformers")
    lines = [f"\n### {title}, copy bandwidth {bw:.1f} GB/s, prompt {args.prompt_len}, {args.new_tokens} new tokens\n",
             f"`{' '.join(['python -m bench.bench_llama'] + (argv or sys.argv[1:]))}`\n", HEADER]
    with tempfile.TemporaryDirectory() as tmp:
        for size in args.sizes.split(","):
            lines += run(size, [int(b) for b in args.batches.split(",")], args.prompt_len, args.new_tokens,
                         Path(tmp), bw, peak)
    text = "\n".join(lines) + "\n"
    print(text)
    if args.append:
        with open(args.append, "a") as f:
            f.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
