"""Llama-shaped linears: the native kernels vs MindSpore's MatMul vs PyTorch, same weights.

A chain of distinct weights alternating (out × in) and (in × out) (default 40 of 2816×1024, 460 MB:
more than any cache, like a decode step's or a prompt's pass over the weights), each product the next
one's input as in a layer (independent products would let MindSpore overlap them), applied to x of
1–32 rows (decode steps: the few-row kernel) or more (a prompt: the panel kernel below 192 rows, the
split sgemm above), compiled; rounds alternate between the three and the median is reported with the
weight bytes read per second and the GFLOP/s. Run it under `python -m bench.mkl_avx512` for PyTorch at
its AVX-512 speed on AMD. Usage:
python -m bench.bench_linear [--rows 1,8,16,32,64,128,256,1024] [--weights 40] [--shape 2816,1024]
"""
from __future__ import annotations

import argparse
import sys
import time

import numpy as np


def chain(ws, native: bool):
    import mindspore as ms
    from mindspore import nn
    from pmg_models import ops as P, runtime

    class Chain(nn.Cell):
        def __init__(self):
            super().__init__()
            self.layers = nn.CellList([P.Linear(w.shape[1], w.shape[0], False) for w in ws])
            for layer, w in zip(self.layers, ws):
                layer.weight.set_data(runtime.to_tensor(w))
                if not native:
                    layer.matmul_t.rows = layer.matmul_t.many = None

        def construct(self, x):
            for layer in self.layers:
                x = layer(x)
            return x

    return ms.jit(Chain())


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", default="1,8,16,32,64,128,256,1024")
    p.add_argument("--weights", type=int, default=40)
    p.add_argument("--shape", default="2816,1024")
    p.add_argument("--rounds", type=int, default=8)
    args = p.parse_args(argv)
    import torch
    from pmg_models import ops as P, runtime

    out_f, in_f = (int(v) for v in args.shape.split(","))
    rng = np.random.default_rng(0)
    shapes = [(out_f, in_f) if i % 2 == 0 else (in_f, out_f) for i in range(args.weights)]
    ws = [(rng.standard_normal(s) / np.sqrt(s[1])).astype(np.float32) for s in shapes]  # activations stay ~1
    tw = [torch.from_numpy(w) for w in ws]
    gb = sum(w.nbytes for w in ws) / 1e9
    native, matmul = chain(ws, True), chain(ws, False)
    print(f"{args.weights} weights of {out_f}×{in_f} and {in_f}×{out_f} in turn ({gb * 1e3:.0f} MB); "
          "ms per pass (GB/s of weights, GFLOP/s)\n")
    print("| rows (native form) | native | MindSpore MatMul | PyTorch |\n|---|---|---|---|")
    for m in (int(r) for r in args.rows.split(",")):
        x = rng.standard_normal((m, in_f)).astype(np.float32)
        xt, xx = runtime.to_tensor(x), torch.from_numpy(x)

        def peer():
            with torch.inference_mode():
                y = xx
                for w in tw:
                    y = torch.nn.functional.linear(y, w)
                return y

        sides = {"native": lambda: native(xt).asnumpy(), "matmul": lambda: matmul(xt).asnumpy(), "torch": peer}
        times = {k: [] for k in sides}
        for fn in sides.values():
            fn()
        for _ in range(args.rounds):
            for k, fn in sides.items():
                t0 = time.perf_counter()
                fn()
                times[k].append(time.perf_counter() - t0)
        flop = 2 * m * gb / 4
        cells = [f"{1e3 * t:.1f} ({gb / t:.1f}, {flop / t:.0f})" for t in map(np.median, times.values())]
        mm, size = P.MatMulT, out_f * in_f
        form = ("oneDNN one-row" if m == 1 and size < mm.HUGE else "few-row" if m <= mm.MANY_FROM
                else "panels" if m < 192 else "split sgemm")
        print(f"| {m} ({form}) | " + " | ".join(cells) + " |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
