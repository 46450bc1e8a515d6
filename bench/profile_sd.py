"""Where a UNet step's (or VAE decode's) time goes: per-op-type totals of ours (MindSpore profiler) and of diffusers (torch profiler).

Same weights and inputs as bench_sd; 10 compiled steps each. Not a timed benchmark: the profilers add
their own overhead, so compare shares, not totals, with bench_sd's numbers.
Run: .venv/bin/python -m bench.profile_sd [--config small|tiny] [--part unet|vae] [--batch 2] [--steps 10]
"""
from __future__ import annotations

import argparse
import collections
import csv
import os
import tempfile
from pathlib import Path

os.environ.setdefault("PMG_JIT", "1")

import numpy as np  # noqa: E402

from bench.bench_sd import LATENT, build  # noqa: E402


def ours_by_type(step, steps: int, out_dir: str) -> tuple[dict, int]:
    """{op type: (calls per step, ms per step)} from MindSpore's CPU op detail, and ops per step."""
    import mindspore as ms

    prof = ms.Profiler(output_path=out_dir)
    for _ in range(steps):
        step()
    prof.stop()
    prof.analyse()
    detail = next(Path(out_dir).rglob("cpu_op_detail_info_0.csv"))
    totals = collections.defaultdict(lambda: [0, 0.0])
    for row in csv.DictReader(detail.open()):
        totals[row["op_type"]][0] += int(row["op_occurrences"])
        totals[row["op_type"]][1] += float(row["op_total_time(ms)"])
    ops = sum(calls for calls, _ in totals.values()) // steps
    return {k: (calls / steps, ms / steps) for k, (calls, ms) in totals.items()}, ops


def torch_by_name(step, steps: int) -> dict:
    """{aten op: (calls per step, self ms per step)}."""
    from torch.profiler import profile

    with profile() as prof:
        for _ in range(steps):
            step()
    return {e.key: (e.count / steps, e.self_cpu_time_total / 1000 / steps) for e in prof.key_averages()}


def table(title: str, rows: dict, top: int = 12) -> str:
    lines = [f"| {title} | calls / step | ms / step |", "|---|---|---|"]
    for name, (calls, ms) in sorted(rows.items(), key=lambda kv: -kv[1][1])[:top]:
        lines.append(f"| {name} | {calls:.0f} | {ms:.2f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="small", choices=["small", "tiny"])
    parser.add_argument("--part", default="unet", choices=["unet", "vae"])
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--steps", type=int, default=10)
    args = parser.parse_args()

    import torch

    from pmg_models import runtime
    from pmg_models.sd.pipeline import StableDiffusion

    with tempfile.TemporaryDirectory() as tmp:
        ref = build(args.config, Path(tmp))
        ours = StableDiffusion.from_pretrained(tmp, micro_batch=args.batch if args.part == "vae" else max(1, args.batch // 2))
        rng = np.random.default_rng(0)
        x = rng.standard_normal((args.batch, 4, LATENT, LATENT)).astype(np.float32)
        ctx = rng.standard_normal((args.batch, 77, ours.text_width)).astype(np.float32)
        t = np.full((args.batch,), 500.0, np.float32)
        x_ms, c_ms, t_ms = runtime.to_tensor(x), runtime.to_tensor(ctx), runtime.to_tensor(t)
        xt, ct, tt = torch.from_numpy(x), torch.from_numpy(ctx), torch.from_numpy(t)

        z = x / ours.vae.config.scaling_factor

        def mine():
            if args.part == "vae":
                ours.decode_float(x)
            else:
                runtime.to_numpy(ours._plain(x_ms, t_ms, c_ms))

        for _ in range(3):
            mine()  # compile and warm up
        rows, ops = ours_by_type(mine, args.steps, str(Path(tmp) / "profile"))
        print(f"ours: {ops} ops per step, {sum(ms for _, ms in rows.values()):.1f} ms of op time per step\n")
        print(table("MindSpore op type", rows), "\n")
        with torch.inference_mode():
            def theirs():
                if args.part == "vae":
                    ref.vae.decode(torch.from_numpy(z))
                else:
                    ref.unet(xt, tt, ct)
            for _ in range(3):
                theirs()
            print(table("aten op (self time)", torch_by_name(theirs, args.steps)))


if __name__ == "__main__":
    main()
