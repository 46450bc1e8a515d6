"""The miniature world's shipped weights: where they live, their pinned SHA-256, and the config that uses them.

`weights/miniworld/` in the repository holds what `pmg train-miniworld` wrote (fp16 tensors): `llama/`
(HF Llama), `sd/` (diffusers layout with the pixel-unshuffle codec), `clip/` (HF CLIP) and
`soft_prompt.safetensors`. Every file is listed in MANIFEST with its SHA-256; `verify` refuses a folder
whose files differ, so the demo never runs on weights it did not ship.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2] / "weights" / "miniworld"
MANIFEST_NAME = "SHA256SUMS"

# The method settings these models were trained for: 32² posters, captions without titles, one keyword
# block per movie, the study's sampler settings (miniworld.md §2.3: 20 DDIM steps, guidance 3). Soft tokens
# at half scale and 4 candidates are the best balance measured on held-out pairs (README, "The paper's
# claim"): at scale 1 the soft tokens repaint the target's palette (60 pairs, 2026-11-29: PMG 78 % / d_t −27 %
# against 82 % / −18 % at half scale).
METHOD = {"steps": 20, "guidance": 3.0, "height": 32, "width": 32, "title_in_prompt": False,
          "n_item_keywords": 4, "n_pref_keywords": 8, "candidates": 4, "soft_scale": 0.5}


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def manifest(root: Path = ROOT) -> dict[str, str]:
    """relative path → SHA-256, from `root/SHA256SUMS` (sha256sum's format)."""
    path = Path(root) / MANIFEST_NAME
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: the miniature world's weights are not installed")
    out = {}
    for line in path.read_text().splitlines():
        if line.strip():
            digest, name = line.split(maxsplit=1)
            out[name.lstrip("*")] = digest
    return out


def write_manifest(root: Path = ROOT) -> dict[str, str]:
    """Hash every file under `root` (except the manifest) and write SHA256SUMS; returns it."""
    root = Path(root)
    files = sorted(p for p in root.rglob("*") if p.is_file() and p.name != MANIFEST_NAME)
    sums = {p.relative_to(root).as_posix(): sha256(p) for p in files}
    (root / MANIFEST_NAME).write_text("".join(f"{d}  {n}\n" for n, d in sums.items()))
    return sums


def verify(root: Path = ROOT) -> dict[str, str]:
    """Check every pinned file; raise ValueError naming the first missing or changed one."""
    root = Path(root)
    sums = manifest(root)
    for name, digest in sums.items():
        path = root / name
        if not path.is_file():
            raise ValueError(f"shipped weight file {path} is missing (pinned in {root / MANIFEST_NAME})")
        if sha256(path) != digest:
            raise ValueError(f"shipped weight file {path} does not match its pinned SHA-256; restore it from git")
    return sums


SHIPPED = ("llama", "sd", "clip", "soft_prompt.safetensors", "metrics.json")  # not the evaluation classifier


def check_complete(world_dir) -> None:
    """Every file a shipped world needs must be in world_dir."""
    missing = [name for name in SHIPPED if not (Path(world_dir) / name).exists()]
    if missing:
        raise FileNotFoundError(f"{world_dir} lacks {', '.join(missing)}: train those stages first")


def install(world_dir, root: Path = ROOT) -> dict[str, str]:
    """Copy what `pmg train-miniworld` wrote to `world_dir` into `root` and pin it; returns the manifest.

    The new folder is assembled next to `root` and swapped in by rename, so a failed copy never
    leaves a half-replaced set of weights.
    """
    world_dir, root = Path(world_dir), Path(root)
    check_complete(world_dir)
    staging = root.with_name(root.name + ".new")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    for name in SHIPPED:
        src = world_dir / name
        (shutil.copytree if src.is_dir() else shutil.copyfile)(src, staging / name)
    sums = write_manifest(staging)
    old = root.with_name(root.name + ".old")
    shutil.rmtree(old, ignore_errors=True)
    if root.exists():
        os.replace(root, old)
    os.replace(staging, root)
    shutil.rmtree(old, ignore_errors=True)
    return sums


def config_text(root: Path = ROOT, soft_prompt: bool = True) -> str:
    """A pmg.toml naming the world's checkpoints (absolute paths) with the [method] they were trained for."""
    root = Path(root).resolve()
    lines = ["# The miniature world's trained tiny models (weights/miniworld, see README).", "[models]",
             f'llm = "{root / "llama"}"', f'sd = "{root / "sd"}"', f'clip = "{root / "clip"}"']
    if soft_prompt and (root / "soft_prompt.safetensors").is_file():
        lines.append(f'soft_prompt = "{root / "soft_prompt.safetensors"}"')
    lines += ["[runtime]", 'device = "cpu"', "[method]"]
    lines += [f"{k} = {json.dumps(v) if not isinstance(v, bool) else str(v).lower()}" for k, v in METHOD.items()]
    return "\n".join(lines) + "\n"
