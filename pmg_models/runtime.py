"""Device, dtype policy, compilation and host RNG: the one module that knows which device we run on.

Every other module asks this one (`is_ascend()`, `compute_dtype()`, `jit()`, `noise()`), so moving
from CPU to Ascend is a matter of `PMG_DEVICE=ascend`. Nothing here was verified on Ascend hardware.
"""
from __future__ import annotations

import functools
import os
import threading

import numpy as np

import pmg_models  # noqa: F401  (sets ONEDNN_MAX_CPU_ISA before mindspore runs any op)
import mindspore as ms

DEVICES = {"cpu": "CPU", "ascend": "Ascend"}
DTYPES = {"float32": ms.float32, "float16": ms.float16, "bfloat16": ms.bfloat16}
_setup_lock = threading.Lock()


def device() -> str:
    """The configured device name: 'cpu' (default) or 'ascend' (env PMG_DEVICE)."""
    name = os.environ.get("PMG_DEVICE", "cpu").lower()
    if name not in DEVICES:
        raise ValueError(f"PMG_DEVICE={name!r} is not supported; choose one of {sorted(DEVICES)}")
    return name


def is_ascend() -> bool:
    return device() == "ascend"


@functools.cache
def setup() -> str:
    """Configure MindSpore once per process; returns the device name. Safe to call repeatedly."""
    with _setup_lock:
        name = device()
        ms.set_device(DEVICES[name])
        if name == "cpu":
            # Async PyNative costs 0.2-10 ms per op on 2 cores; blocking launch removes the hand-offs.
            ms.runtime.launch_blocking()
        return name


def compute_dtype():
    """fp32 on CPU (bf16 has no CPU kernels, fp16 is no faster); PMG_DTYPE on Ascend (default fp16)."""
    if not is_ascend():
        return ms.float32
    name = os.environ.get("PMG_DTYPE", "float16")
    if name not in DTYPES:
        raise ValueError(f"PMG_DTYPE={name!r} is not supported; choose one of {sorted(DTYPES)}")
    return DTYPES[name]


def np_compute_dtype():
    """The NumPy dtype weights are cast to before they become Parameters (bf16 stays fp32 on the host)."""
    dt = compute_dtype()
    return np.float16 if dt == ms.float16 else np.float32


class HostMemoryError(RuntimeError):
    """Model weights that cannot fit in the memory this machine has available."""


def available_host_memory() -> int | None:
    """MemAvailable from /proc/meminfo in bytes; None where it cannot be read (not Linux)."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def check_host_memory(parameters: dict[str, int | None], processes: int = 1) -> None:
    """Refuse, before any model is built, weights that alone exceed the available memory (CPU only).

    `parameters`: model name → parameter count (None = unknown, not counted); `processes`: how many
    processes on this machine will each hold all of them (a local Dask cluster's workers). Without this a 7B Llama
    in fp32 (27 GB) on a 24 GB machine is killed by the kernel halfway through loading, with no message.
    PMG_MEMORY_CHECK=0 skips the check (e.g. for swap the kernel does not report as available).
    """
    if is_ascend() or os.environ.get("PMG_MEMORY_CHECK", "1") == "0":
        return  # on Ascend the weights live in device memory
    itemsize = np.dtype(np_compute_dtype()).itemsize
    known = {name: n * itemsize for name, n in parameters.items() if n}
    need, available = sum(known.values()) * processes, available_host_memory()
    if available is None or need <= available:
        return
    parts = ", ".join(f"{name} {size / 1e9:.1f} GB" for name, size in known.items())
    if processes > 1:
        parts += f"; in each of {processes} worker processes"
    raise HostMemoryError(
        f"the model weights need {need / 1e9:.1f} GB as {np.dtype(np_compute_dtype()).name} on CPU ({parts}) but "
        f"this machine has {available / 1e9:.1f} GB of memory available; use smaller checkpoints, a machine with "
        "more memory, or PMG_DEVICE=ascend (PMG_MEMORY_CHECK=0 skips this check)")


def release_host_memory() -> None:
    """Free what dropped models leave behind: MindSpore's compiled graphs (of every model: the ones still
    in use compile again on their next call) and the allocator's free pages, so the next model's load
    and the memory check see the room (glibc keeps freed memory from the OS otherwise)."""
    import ctypes
    import gc

    gc.collect()
    ms.ms_memory_recycle()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc: the memory is still reused by this process
        pass


def jit_enabled() -> bool:
    """Compiled hot paths are on unless PMG_JIT=0 (PyNative is handy for debugging and fast tests)."""
    return os.environ.get("PMG_JIT", "1") != "0"


def jit(fn):
    """Compile `fn` with ms.jit when enabled; the function must be a `def` whose first arg is `self` for methods."""
    setup()
    return ms.jit(fn) if jit_enabled() else fn


def mutable(values):
    """Mark a tuple/list of tensors as graph inputs, so a jitted call does not recompile per call."""
    return ms.mutable(tuple(values))


def host_rng(seed: int) -> np.random.Generator:
    """A NumPy generator: the same seed gives the same numbers on CPU and Ascend."""
    if int(seed) < 0:  # NumPy's own message ("expected non-negative integer") names no seed
        raise ValueError(f"seeds must be non-negative integers, got {seed}")
    return np.random.Generator(np.random.PCG64(int(seed)))


def noise(shape, seed: int) -> np.ndarray:
    """Standard-normal float32 noise drawn on the host from one seed."""
    return host_rng(seed).standard_normal(shape, dtype=np.float32)


def to_tensor(array, dtype=None) -> ms.Tensor:
    """Host array → Tensor in the compute dtype (or `dtype`)."""
    setup()
    t = ms.Tensor(np.ascontiguousarray(array))
    return t.astype(dtype) if dtype is not None and t.dtype != dtype else t


def to_numpy(tensor) -> np.ndarray:
    """Tensor → float32/int NumPy array on the host (also synchronizes the device)."""
    arr = tensor.asnumpy()
    return arr.astype(np.float32) if arr.dtype in (np.float16,) or str(arr.dtype) == "bfloat16" else arr
