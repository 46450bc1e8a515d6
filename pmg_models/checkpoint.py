"""Checkpoint I/O: safetensors read through a memory map, strict loading into Cells, fingerprints.

Safetensors only (never unpickle). Tensors are read one at a time from a memory map and cast to the
compute dtype on the way in, so loading never holds two full copies of the weights. Loading is
strict: a missing, unexpected or misshaped tensor is an error that names it.
"""
from __future__ import annotations

import hashlib
import json
import math
import mmap
import os
import struct
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

_DTYPES = {"F32": np.float32, "F16": np.float16, "F64": np.float64, "I64": np.int64, "I32": np.int32,
           "I16": np.int16, "I8": np.int8, "U8": np.uint8, "BOOL": np.bool_, "BF16": np.uint16}
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl")


class CheckpointError(ValueError):
    """A checkpoint that cannot be loaded as asked; the message names the file or tensor."""


def read_header(path: Path) -> dict:
    """The JSON header of a safetensors file: name → {dtype, shape, data_offsets}."""
    with open(path, "rb") as f:
        raw = f.read(8)
        if len(raw) != 8:
            raise CheckpointError(f"{path} is not a safetensors file (too short)")
        (n,) = struct.unpack("<Q", raw)
        if n > 100_000_000:
            raise CheckpointError(f"{path} is not a safetensors file (header length {n})")
        try:
            header = json.loads(f.read(n))
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise CheckpointError(f"{path} has a corrupt safetensors header: {e}") from None
    header.pop("__metadata__", None)
    return header


def iter_safetensors(path: Path, dtype=np.float32) -> Iterator[tuple[str, np.ndarray]]:
    """Yield (name, array) from one file; floats become `dtype` (bf16 widened exactly), ints stay."""
    path = Path(path)
    header = read_header(path)
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    data = np.frombuffer(mm, dtype=np.uint8, offset=8 + n)
    for name in sorted(header):
        info = header[name]
        kind = info["dtype"]
        if kind not in _DTYPES:
            raise CheckpointError(f"{path}: tensor {name!r} has unsupported dtype {kind}")
        start, end = info["data_offsets"]
        if end > data.shape[0] or start > end:
            raise CheckpointError(f"{path}: tensor {name!r} lies outside the file (truncated checkpoint?)")
        arr = np.frombuffer(data[start:end], dtype=_DTYPES[kind]).reshape(info["shape"])
        if kind == "BF16":
            arr = (arr.astype(np.uint32) << 16).view(np.float32)
        if np.issubdtype(arr.dtype, np.floating) and dtype is not None:
            arr = arr.astype(dtype, copy=True)
        yield name, arr
        # Mapped file pages count in RSS until released: drop this tensor's pages so loading never holds
        # the file and the weights at once (a view still in use is simply re-read from the file).
        lo = (8 + n + start) // mmap.PAGESIZE * mmap.PAGESIZE
        mm.madvise(mmap.MADV_DONTNEED, lo, 8 + n + end - lo)


def weight_files(directory: Path, stem: str = "model") -> list[Path]:
    """The safetensors files of a model directory: single file or sharded via `<stem>.safetensors.index.json`."""
    directory = Path(directory)
    single = directory / f"{stem}.safetensors"
    index = directory / f"{stem}.safetensors.index.json"
    if single.exists():
        return [single]
    if index.exists():
        shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        missing = [s for s in shards if not (directory / s).exists()]
        if missing:
            raise CheckpointError(f"{index} names shard {missing[0]} which does not exist")
        return [directory / s for s in shards]
    pickles = [p.name for p in directory.glob("*") if p.suffix in PICKLE_SUFFIXES]
    if pickles:
        raise CheckpointError(
            f"{directory} holds only pickle weights ({pickles[0]}); pickles are never loaded. Convert them once with "
            "transformers/diffusers: `model.save_pretrained(dir, safe_serialization=True)`")
    raise CheckpointError(f"no {stem}.safetensors or {stem}.safetensors.index.json in {directory}")


def component_files(directory: Path, stem: str) -> list[Path]:
    """Weight files of one diffusers component; falls back to the `.fp16` variant if that is all there is."""
    directory = Path(directory)
    try:
        return weight_files(directory, stem)
    except CheckpointError:
        if (directory / f"{stem}.fp16.safetensors").exists():
            return [directory / f"{stem}.fp16.safetensors"]
        raise


def parameter_count(files: list[Path]) -> tuple[int, dict[str, int]]:
    """Elements in the safetensors `files` (headers only) and how many of them each stored dtype holds."""
    total, dtypes = 0, {}
    for f in files:
        for info in read_header(f).values():
            n = math.prod(info["shape"])
            total += n
            dtypes[info["dtype"]] = dtypes.get(info["dtype"], 0) + n
    return total, dtypes


def load_into(cell, files: list[Path], key_map: Callable[[str], str | None] = lambda k: k, dtype=np.float32) -> None:
    """Strictly load safetensors `files` into `cell`'s parameters.

    `key_map` maps a checkpoint name to the Cell's parameter name (None = deliberately ignored).
    Raises CheckpointError naming missing, unexpected or misshaped tensors.
    """
    arrays = ((name, arr) for f in files for name, arr in iter_safetensors(f, dtype))
    assign_strict(cell, arrays, key_map, source=str(files[0].parent if files else ""))


def assign_strict(cell, named_arrays, key_map=lambda k: k, source: str = "") -> None:
    """Set parameters from (name, array) pairs one at a time; all must match exactly."""
    import mindspore as ms

    params = {p.name: p for p in cell.get_parameters()}
    seen, unexpected = set(), []
    for name, arr in named_arrays:
        target = key_map(name)
        if target is None:
            continue
        param = params.get(target)
        if param is None:
            unexpected.append(name)
            continue
        if tuple(param.shape) != tuple(arr.shape):
            raise CheckpointError(f"{source}: tensor {name!r} has shape {tuple(arr.shape)}, "
                                  f"the model expects {tuple(param.shape)} for {target}")
        if np.issubdtype(arr.dtype, np.floating):
            arr = arr.astype(ms.dtype_to_nptype(param.dtype), copy=False)
        param.set_data(ms.Tensor.from_numpy(np.ascontiguousarray(arr)))
        seen.add(target)
    missing = sorted(set(params) - seen)
    if unexpected:
        raise CheckpointError(f"{source}: unexpected tensor(s) {unexpected[:10]} (not part of this model)")
    if missing:
        raise CheckpointError(f"{source}: missing tensor(s) {missing[:10]} (checkpoint incomplete or for another model)")


def save_safetensors(path: Path, tensors: dict[str, np.ndarray], metadata: dict[str, str] | None = None) -> None:
    """Write tensors in the safetensors format (atomically: temp name, fsync, rename)."""
    from safetensors.numpy import save_file

    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    # np.ascontiguousarray would turn 0-d tensors (e.g. CLIP logit_scale) into shape [1].
    save_file({k: np.array(v, copy=not np.asarray(v).flags.c_contiguous) for k, v in tensors.items()},
              str(tmp), metadata=metadata)
    with open(tmp, "rb") as f:
        os.fsync(f.fileno())
    tmp.replace(path)


def fingerprint(directory: Path) -> str:
    """sha256 over a checkpoint dir's config/tokenizer files, tensor index and sampled weight bytes.

    Weights are sampled (size + first and last MiB of each file) so a 13 GB checkpoint fingerprints in
    milliseconds while retrained weights of the same shapes still change it.
    """
    directory = Path(directory)
    h = hashlib.sha256()
    files = sorted(p for p in directory.rglob("*") if p.is_file())
    for p in files:
        rel = p.relative_to(directory).as_posix()
        if p.suffix == ".json" or p.name in ("tokenizer.model", "merges.txt", "vocab.json"):
            h.update(rel.encode() + b"\0" + p.read_bytes())
        elif p.suffix == ".safetensors":
            size = p.stat().st_size
            h.update(rel.encode() + b"\0" + str(size).encode())
            with open(p, "rb") as f:
                h.update(f.read(1 << 20))
                f.seek(max(0, size - (1 << 20)))
                h.update(f.read(1 << 20))
            header = read_header(p)
            for name in sorted(header):
                info = header[name]
                h.update(f"{name}:{info['dtype']}:{info['shape']}".encode())
    return h.hexdigest()[:16]
