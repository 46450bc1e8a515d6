"""Fused fp32 CPU kernels (`cpu_kernels.cc`), built once per machine and run as MindSpore "aot" Custom ops.

The op layer (`pmg_models.ops`) is the only user: it asks `library()` for the shared object and falls
back to its classic-op form when there is none (Ascend, non-fp32, no C++ compiler, PMG_NATIVE_KERNELS=0).
The library is compiled with `-march=native` for the machine it runs on and cached under
`PMG_KERNEL_CACHE` (default `~/.cache/pmg/kernels`), keyed by the source's SHA-256 and the compiler
command; concurrent builds (Dask workers) race harmlessly to an atomic rename. Build time: about 1 s.
"""
from __future__ import annotations

import functools
import hashlib
import importlib.util
import logging
import os
import platform
import shutil
import subprocess
import tempfile
from pathlib import Path

log = logging.getLogger(__name__)
SOURCE = Path(__file__).with_name("cpu_kernels.cc")
# -ffast-math lets GCC vectorise the reductions and call libmvec's expf/erff (same bits on a given machine).
FLAGS = ("-O3", "-march=native", "-ffast-math", "-shared", "-fPIC", "-pthread")
LIBS = ("-ldl",)  # the convolutions find dnnl_sgemm in MindSpore's already-loaded oneDNN


def enabled() -> bool:
    """Native kernels are on unless PMG_NATIVE_KERNELS=0 (the classic ops are then used everywhere)."""
    return os.environ.get("PMG_NATIVE_KERNELS", "1") != "0"


def convolutions() -> bool:
    """Whether convolutions run natively (im2col + the sgemm of MindSpore's oneDNN): CPU, kernels built,
    PMG_NATIVE_CONV not 0. Decides the oneDNN ISA cap (pmg_models/__init__.py): without native
    convolutions, MindSpore's own must keep oneDNN at AVX2."""
    return (enabled() and os.environ.get("PMG_NATIVE_CONV", "1") != "0"
            and os.environ.get("PMG_DEVICE", "cpu").lower() == "cpu"
            and dnnl_library() is not None and library() is not None)


@functools.cache
def dnnl_library() -> Path | None:
    """MindSpore's bundled oneDNN, found without importing mindspore (no oneDNN op may run yet)."""
    spec = importlib.util.find_spec("mindspore")
    for folder in (spec.submodule_search_locations or []) if spec else []:
        path = Path(folder) / "lib" / "libdnnl.so.3"
        if path.is_file():
            return path
    return None


def cache_dir() -> Path:
    return Path(os.environ.get("PMG_KERNEL_CACHE", Path.home() / ".cache" / "pmg" / "kernels"))


def _compiler() -> str | None:
    return shutil.which(os.environ.get("CXX", "g++")) or shutil.which("c++")


@functools.cache
def library() -> str | None:
    """Path of the built shared object, building it on first use; None when native kernels are unavailable."""
    if not enabled() or platform.system() != "Linux":
        return None
    cxx = _compiler()
    if cxx is None:
        log.warning("no C++ compiler found: using MindSpore's classic ops for norms and GEGLU (slower)")
        return None
    key = hashlib.sha256(SOURCE.read_bytes() + " ".join((cxx, *FLAGS, *LIBS, platform.machine())).encode()).hexdigest()[:16]
    # a read-only home (CI, containers) falls back to the temp dir
    for folder in (cache_dir(), Path(tempfile.gettempdir()) / f"pmg-kernels-{os.getuid()}"):
        target = folder / f"pmg_cpu_kernels-{key}.so"
        if target.exists():
            return str(target)
        try:
            return _build(cxx, target)
        except OSError as err:
            log.warning("cannot build native kernels in %s: %s", folder, err)
        except subprocess.CalledProcessError as err:
            log.warning("building %s failed, using MindSpore's classic ops instead:\n%s", SOURCE.name, err.stderr)
            return None
    log.warning("no writable folder for native kernels: using MindSpore's classic ops instead")
    return None


def _build(cxx: str, target: Path) -> str:
    """Compile to a temp file next to `target`, then rename: readers never see a half-written library."""
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(suffix=".so", dir=target.parent)
    os.close(fd)
    try:
        subprocess.run([cxx, *FLAGS, "-o", tmp, str(SOURCE), *LIBS], check=True, capture_output=True, text=True)
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return str(target)
