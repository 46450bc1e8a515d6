"""The machine's physical limits: peak fp32 matmul rate and memory bandwidth (same process).

The GEMM ceiling is the best of the BLAS libraries present (NumPy's, PyTorch's MKL, MindSpore's
oneDNN): their rates differ by vendor — on an AMD EPYC (Zen 5) MKL and OpenBLAS ran AVX2 code at
210-250 GFLOP/s while oneDNN reached 460 — so one library's rate is not the machine's.

Run: .venv/bin/python -m bench.machine
"""
from __future__ import annotations

import os
import platform
import time

import numpy as np

from bench import mkl_avx512


def peak_matmul_gflops(n: int = 2048, repeats: int = 5) -> float:
    a = np.random.default_rng(0).standard_normal((n, n), dtype=np.float32)
    b = a.T.copy()
    return 2 * n**3 / _best(lambda: a @ b, repeats) / 1e9


def gemm_rates(n: int = 2048, repeats: int = 5) -> dict[str, float]:
    """fp32 n³ matmul GFLOP/s of each library that is installed: numpy, torch, mindspore."""
    x = np.random.default_rng(0).standard_normal((n, n), dtype=np.float32)
    flop = 2 * n**3 / 1e9
    rates = {"numpy": peak_matmul_gflops(n, repeats)}
    try:
        import torch
        t = torch.from_numpy(x)
        rates["torch"] = flop / _best(lambda: t @ t, repeats)
    except ImportError:
        pass
    try:
        from mindspore import ops
        from pmg_models import runtime
        runtime.setup()
        m, matmul = runtime.to_tensor(x), ops.MatMul()
        rates["mindspore"] = flop / _best(lambda: matmul(m, m).asnumpy(), repeats)
    except ImportError:
        pass
    return rates


def describe_gemm(rates: dict[str, float]) -> str:
    """`peak fp32 GEMM 460 GFLOP/s (numpy 248, torch 210, mindspore 460)`; says so when the peer's MKL
    was forced onto its AVX-512 path (`python -m bench.mkl_avx512 ...`)."""
    parts = ", ".join(f"{k} {v:.0f}" for k, v in rates.items())
    forced = ", torch's MKL forced to AVX-512" if mkl_avx512.forced() else ""
    return f"peak fp32 GEMM {max(rates.values()):.0f} GFLOP/s ({parts}{forced})"


def heading(title: str) -> tuple[str, float]:
    """`title, machine, GEMM rates, time` for a benchmark's output, and the peak its rows divide by."""
    rates = gemm_rates()
    return f"{title}, {describe()}, {describe_gemm(rates)}, {time.strftime('%Y-%m-%d %H:%M')}", max(rates.values())


def _best(fn, repeats: int) -> float:
    fn()  # warm-up
    return min(_timed(fn) for _ in range(repeats))


def memory_bandwidth_gbs(mb: int = 512, repeats: int = 5) -> float:
    src = np.ones(mb * (1 << 20) // 4, np.float32)
    dst = np.empty_like(src)
    np.copyto(dst, src)
    best = min(_timed(lambda: np.copyto(dst, src)) for _ in range(repeats))
    return 2 * src.nbytes / best / 1e9  # read + write


def _timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def describe() -> str:
    cpu = "unknown CPU"
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{os.cpu_count()} cores, {cpu}, {platform.python_version()}"


if __name__ == "__main__":
    print(f"machine: {describe()}")
    print(f"{describe_gemm(gemm_rates())}; memory bandwidth: {memory_bandwidth_gbs():.1f} GB/s")
