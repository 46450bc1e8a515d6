"""The machine's physical limits: peak fp32 matmul rate and memory bandwidth (NumPy, same process).

Run: .venv/bin/python -m bench.machine
"""
from __future__ import annotations

import os
import platform
import time

import numpy as np


def peak_matmul_gflops(n: int = 2048, repeats: int = 5) -> float:
    a = np.random.default_rng(0).standard_normal((n, n), dtype=np.float32)
    b = a.T.copy()
    a @ b  # warm-up
    best = min(_timed(lambda: a @ b) for _ in range(repeats))
    return 2 * n**3 / best / 1e9


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
    print(f"peak fp32 matmul: {peak_matmul_gflops():.1f} GFLOP/s; memory bandwidth: {memory_bandwidth_gbs():.1f} GB/s")
