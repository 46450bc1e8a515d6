"""Process-level model resources: each checkpoint is loaded once per process and reused across chunks.

Models are never task arguments (Prefect would try to hash them): tasks pass checkpoint paths and
ask here. A per-process device lock keeps two chunks from running on one device at once. Counters
of loads and model calls let tests prove that finished work makes no model calls.
"""
from __future__ import annotations

import collections
import threading
from pathlib import Path

DEVICE_LOCK = threading.RLock()
CALLS: collections.Counter = collections.Counter()   # "llm.generate", "sd.generate", "clip.encode_*"
LOADS: collections.Counter = collections.Counter()   # "llm", "sd", "clip", "soft_prompt"
RELEASES: collections.Counter = collections.Counter()  # "models": loaded models dropped to make room
_cache: dict[tuple[str, str], object] = {}
_cache_lock = threading.Lock()
_fingerprints: dict[str, str] = {}


def _key(path) -> str:
    return str(Path(path).resolve())


def _load(kind: str, path, loader):
    key = (kind, _key(path))
    with DEVICE_LOCK, _cache_lock:  # this order everywhere: releasing models takes the device lock
        if key not in _cache:
            _make_room(kind, path)
            _cache[key] = loader(Path(path))
            LOADS[kind] += 1
        return _cache[key]


def _make_room(kind: str, path) -> None:
    """If this model would not fit in memory next to those already loaded, release them first.

    A backfill uses one model per stage (Llama, then SD, then CLIP), so on a machine that holds each
    but not all three the stages still run, reloading per run; with room for all, every model stays
    loaded for the process's later runs. With PMG_MEMORY_CHECK=0 nothing is released.
    """
    if not _cache:
        return
    from pmg_models import info, runtime

    try:
        runtime.check_host_memory({kind: info.parameters(path)})
    except runtime.HostMemoryError:
        release_models()


def release_models() -> None:
    """Drop every loaded model and its compiled graphs and return the memory; a model still referenced
    elsewhere keeps working (its graphs compile again on the next call)."""
    from pmg_models import runtime

    with DEVICE_LOCK:  # no chunk is running a compiled graph while they are dropped
        _cache.clear()
        runtime.release_host_memory()
        RELEASES["models"] += 1


def llm(path):
    """The Llama model at `path` (pmg_models.llama.load), loaded once per process."""
    from pmg_models import llama

    return _load("llm", path, llama.load)


def sd(path):
    """The Stable Diffusion pipeline at `path`, loaded once per process."""
    from pmg_models.sd.pipeline import StableDiffusion

    return _load("sd", path, StableDiffusion.from_pretrained)


def clip(path):
    """The CLIP model at `path`, loaded once per process."""
    from pmg_models.clip import CLIPModel

    return _load("clip", path, CLIPModel.from_pretrained)


def soft_prompt(path, llm_fingerprint: str, sd_fingerprint: str):
    """The trained soft prompt at `path`, checked against the LLM and SD it was trained for."""
    from pmg_models import soft_prompt as sp

    return _load("soft_prompt", path, lambda p: sp.load(p, llm_fingerprint=llm_fingerprint,
                                                        sd_fingerprint=sd_fingerprint))


def file_sha256(path) -> str:
    import hashlib

    key = "file:" + _key(path)
    if key not in _fingerprints:
        _fingerprints[key] = hashlib.sha256(Path(path).read_bytes()).hexdigest()
    return _fingerprints[key]


def fingerprint(path) -> str:
    """Checkpoint fingerprint (config + tensor index hash) without loading the weights."""
    from pmg_models import checkpoint

    key = _key(path)
    if key not in _fingerprints:
        _fingerprints[key] = checkpoint.fingerprint(Path(path))
    return _fingerprints[key]


def count(name: str, n: int = 1) -> None:
    CALLS[name] += n


def model_calls() -> int:
    """Total model calls made by this process so far."""
    return sum(CALLS.values())


def reset() -> None:
    """Forget counters (and, for tests, nothing else: loaded models stay cached)."""
    CALLS.clear()
    LOADS.clear()
    RELEASES.clear()


def clear_cache() -> None:
    """Drop loaded models and fingerprints (tests that rewrite checkpoints in place)."""
    with _cache_lock:
        _cache.clear()
        _fingerprints.clear()
