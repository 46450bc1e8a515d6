"""The runtime module: CPU settings, dtype policy, host RNG."""
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import pmg_models
from pmg_models import kernels, runtime


def _isa_after_import(**env):
    """ONEDNN_MAX_CPU_ISA as `import pmg_models` leaves it in a fresh process with `env` added."""
    base = {k: v for k, v in os.environ.items() if k not in ("ONEDNN_MAX_CPU_ISA", "PMG_NATIVE_CONV")}
    code = "import os, pmg_models; print(os.environ.get('ONEDNN_MAX_CPU_ISA'))"
    out = subprocess.run([sys.executable, "-c", code], env={**base, **env}, capture_output=True, text=True, check=True)
    return out.stdout.strip()


def test_onednn_isa_is_capped_only_without_native_convolutions():
    # MindSpore's own convolutions need the AVX2 cap (oneDNN's AVX-512 one for plain NCHW is its reference
    # loop); the native ones do not, and matmuls then get AVX-512.
    assert kernels.convolutions()
    assert _isa_after_import() == "None"
    assert _isa_after_import(PMG_NATIVE_CONV="0") == "AVX2"
    assert _isa_after_import(PMG_NATIVE_KERNELS="0") == "AVX2"
    assert _isa_after_import(PMG_NATIVE_CONV="0", ONEDNN_MAX_CPU_ISA="AVX512_CORE") == "AVX512_CORE"


def test_no_model_builds_mindspores_convolution_directly():
    """Every convolution goes through ops.Conv2d, which is what makes dropping the ISA cap safe."""
    root = Path(pmg_models.__file__).parents[1]
    offenders = [str(f.relative_to(root)) for d in ("pmg_models", "tasks", "flows", "pmg") if (root / d).is_dir()
                 for f in (root / d).rglob("*.py") if f.name != "ops.py" and "nn.Conv2d(" in f.read_text()]
    assert not offenders


def test_cpu_is_fp32():
    assert runtime.device() == "cpu"
    assert runtime.np_compute_dtype() is np.float32


def test_unknown_device_is_a_clear_error(monkeypatch):
    monkeypatch.setenv("PMG_DEVICE", "tpu")
    with pytest.raises(ValueError, match="PMG_DEVICE='tpu'"):
        runtime.device()


def test_host_noise_is_seeded_and_batch_independent():
    a = runtime.noise((2, 4, 8, 8), seed=7)
    b = runtime.noise((2, 4, 8, 8), seed=7)
    assert a.dtype == np.float32 and np.array_equal(a, b)
    assert not np.array_equal(a, runtime.noise((2, 4, 8, 8), seed=8))
    # Golden values pin the generator (PCG64 + standard_normal) so CPU and Ascend runs agree.
    np.testing.assert_allclose(runtime.noise((3,), seed=0), [1.117622, -1.3871249, -0.4265716], rtol=1e-6)
    with pytest.raises(ValueError, match="seeds must be non-negative integers, got -1"):
        runtime.noise((3,), seed=-1)


def test_host_memory_check_refuses_weights_larger_than_available_memory(monkeypatch):
    monkeypatch.setattr(runtime, "available_host_memory", lambda: 10 * 10**9)
    runtime.check_host_memory({"Llama": 2 * 10**9, "CLIP": None})  # 8 GB of fp32 weights fit in 10 GB
    with pytest.raises(runtime.HostMemoryError) as e:
        runtime.check_host_memory({"Llama": 2 * 10**9, "Stable Diffusion": 10**9, "CLIP": None})
    assert str(e.value).startswith("the model weights need 12.0 GB as float32 on CPU (Llama 8.0 GB, Stable "
                                   "Diffusion 4.0 GB) but this machine has 10.0 GB of memory available")
    with pytest.raises(runtime.HostMemoryError, match=r"need 16\.0 GB .*\(Llama 8\.0 GB; in each of 2 worker processes\)"):
        runtime.check_host_memory({"Llama": 2 * 10**9}, processes=2)  # two local Dask workers, each with a copy
    monkeypatch.setenv("PMG_MEMORY_CHECK", "0")
    runtime.check_host_memory({"Llama": 10**12})
    monkeypatch.delenv("PMG_MEMORY_CHECK")
    monkeypatch.setattr(runtime, "available_host_memory", lambda: None)  # not Linux: nothing to compare with
    runtime.check_host_memory({"Llama": 10**12})


def test_available_host_memory_is_read_from_meminfo():
    available = runtime.available_host_memory()
    assert available is not None and 10**8 < available < 10**13
