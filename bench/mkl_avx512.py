"""Run a benchmark with the peer's MKL on its AVX-512 kernels, as on an Intel CPU.

MKL (PyTorch's BLAS) picks its code path by CPU vendor: on an AMD EPYC with AVX-512 it still runs AVX2
code, so transformers' matmuls there ran at half of what the CPU can do (2048³ fp32: 210 GFLOP/s,
MindSpore's oneDNN 460). MKL asks `mkl_serv_intel_cpu_true()`; a one-line library preloaded in front of
it answers yes, and MKL takes the AVX-512 path (467 GFLOP/s on the same machine). Ratios measured this
way compare us with the peer at its best, as on an Intel Xeon. Nothing of ours uses MKL (MindSpore
calls oneDNN, NumPy OpenBLAS), and the benchmark's heading shows the peer's GEMM rate either way.

    .venv/bin/python -m bench.mkl_avx512 bench.bench_llama --sizes 170m --batches 1,8,32
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

SHIM = "int mkl_serv_intel_cpu_true(void) { return 1; }\n"
ENV_FLAG = "PMG_BENCH_MKL_AVX512"


def shim_library(directory: Path) -> Path:
    """Compile the shim into `directory` (a C compiler is already required for the native kernels)."""
    cc = shutil.which(os.environ.get("CC", "cc")) or shutil.which("gcc")
    if cc is None:
        raise SystemExit("bench.mkl_avx512 needs a C compiler (cc or gcc) to build its one-line shim")
    src, lib = directory / "mkl_intel_cpu.c", directory / "libmkl_intel_cpu.so"
    src.write_text(SHIM)
    subprocess.run([cc, "-shared", "-fPIC", "-O2", "-o", str(lib), str(src)], check=True)
    return lib


def forced() -> bool:
    """True inside a benchmark started by this wrapper."""
    return os.environ.get(ENV_FLAG) == "1"


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0].startswith("-"):
        print(__doc__)
        return 2
    with tempfile.TemporaryDirectory() as tmp:
        lib = shim_library(Path(tmp))
        preload = " ".join(filter(None, [str(lib), os.environ.get("LD_PRELOAD", "")]))
        env = {**os.environ, "LD_PRELOAD": preload, ENV_FLAG: "1"}
        return subprocess.call([sys.executable, "-m", *argv], env=env)


if __name__ == "__main__":
    sys.exit(main())
