"""Decode-shaped linears: the native few-row kernel vs MindSpore's MatMul vs PyTorch, same weights.

A chain of distinct (out × in) weights (default 40 × 2816×1024, 460 MB: more than any cache, like a
decode step's weights) applied to x of 1–32 rows, compiled; rounds alternate between the three and the
median is reported with the weight bytes read per second. Usage:
python -m bench.bench_linear [--rows 1,8,16,32] [--weights 40] [--shape 2816,1024]
"""
from __future__ import annotations

import argparse
import sys
import time

import numpy as np


def chain(ws, few_rows: int):
    import mindspore as ms
    from mindspore import nn
    from pmg_models import ops as P, runtime

    class Chain(nn.Cell):
        def __init__(self):
            super().__init__()
            self.layers = nn.CellList([P.Linear(w.shape[1], w.shape[0], False) for w in ws])
            for layer, w in zip(self.layers, ws):
                layer.weight.set_data(runtime.to_tensor(w))
                layer.matmul_t.FEW_ROWS = few_rows

        def construct(self, x):
            out = 0
            for layer in self.layers:
                out = out + layer(x)[:, :8]
            return out

    return ms.jit(Chain())


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", default="1,8,16,32")
    p.add_argument("--weights", type=int, default=40)
    p.add_argument("--shape", default="2816,1024")
    p.add_argument("--rounds", type=int, default=8)
    args = p.parse_args(argv)
    import torch
    from pmg_models import ops as P, runtime

    out_f, in_f = (int(v) for v in args.shape.split(","))
    rng = np.random.default_rng(0)
    ws = [(rng.standard_normal((out_f, in_f)) * 0.01).astype(np.float32) for _ in range(args.weights)]
    tw = [torch.from_numpy(w) for w in ws]
    gb = sum(w.nbytes for w in ws) / 1e9
    native, matmul = chain(ws, P.MatMulT.FEW_ROWS), chain(ws, 0)
    print(f"{args.weights} weights of {out_f}×{in_f} ({gb * 1e3:.0f} MB); ms per pass (GB/s of weights)\n")
    print("| rows | native few-row | MindSpore MatMul | PyTorch |\n|---|---|---|---|")
    for m in (int(r) for r in args.rows.split(",")):
        x = rng.standard_normal((m, in_f)).astype(np.float32)
        xt, xx = runtime.to_tensor(x), torch.from_numpy(x)

        def peer():
            with torch.inference_mode():
                return sum(torch.nn.functional.linear(xx, w)[:, :8] for w in tw)

        sides = {"native": lambda: native(xt).asnumpy(), "matmul": lambda: matmul(xt).asnumpy(), "torch": peer}
        times = {k: [] for k in sides}
        for fn in sides.values():
            fn()
        for _ in range(args.rounds):
            for k, fn in sides.items():
                t0 = time.perf_counter()
                fn()
                times[k].append(time.perf_counter() - t0)
        cells = [f"{1e3 * np.median(v):.1f} ({gb / np.median(v):.1f})" for v in times.values()]
        note = "" if 1 < m <= P.MatMulT.FEW_ROWS else " (MatMul path)"
        print(f"| {m}{note} | " + " | ".join(cells) + " |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
