"""Describe a checkpoint without building the model: layout, key config, parameter count, fingerprint."""
from __future__ import annotations

import json
from pathlib import Path

from pmg_models import checkpoint
from pmg_models.checkpoint import CheckpointError

_KEY_FIELDS = ("model_type", "architectures", "hidden_size", "num_hidden_layers", "num_attention_heads",
               "num_key_value_heads", "intermediate_size", "vocab_size", "max_position_embeddings",
               "torch_dtype", "dtype", "block_out_channels", "cross_attention_dim", "sample_size",
               "prediction_type", "_class_name", "projection_dim")


# Components stored as a config alone: pmg_models.sd.codec.CLASS_NAME (importing it would load MindSpore).
PARAMETER_FREE = ("PixelUnshuffleCodec",)


def describe(path: Path) -> dict:
    """A JSON-able summary of an HF Llama/CLIP dir, a diffusers SD dir, or a directory of components."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist")
    if (path / "model_index.json").exists():
        return _diffusers(path)
    if (path / "config.json").exists():
        return _component(path)
    raise CheckpointError(f"{path} is neither a Hugging Face model directory (config.json) "
                          "nor a diffusers pipeline directory (model_index.json)")


def _component(path: Path) -> dict:
    config, files = _weights(path)
    params, dtypes = checkpoint.parameter_count(files)
    return {"path": str(path), "kind": config.get("model_type") or config.get("_class_name"),
            "config": {k: config[k] for k in _KEY_FIELDS if k in config},
            "parameters": params, "weight_dtypes": dtypes, "fingerprint": checkpoint.fingerprint(path)}


def _weights(path: Path) -> tuple[dict, list[Path]]:
    """A model or component directory's config and safetensors files (none for a parameter-free one)."""
    config = json.loads((path / "config.json").read_text())
    if config.get("_class_name") in PARAMETER_FREE:
        return config, []
    if "_class_name" in config:  # a diffusers component
        return config, checkpoint.component_files(path, "diffusion_pytorch_model")
    return config, checkpoint.weight_files(path, "model")


def _components(path: Path) -> list[str]:
    """The weight-bearing component folders a diffusers pipeline's model_index.json names."""
    index = json.loads((path / "model_index.json").read_text())
    return [name for name, spec in index.items()
            if not name.startswith("_") and isinstance(spec, list) and (path / name / "config.json").exists()
            and name not in ("scheduler", "tokenizer", "feature_extractor")]


def _diffusers(path: Path) -> dict:
    index = json.loads((path / "model_index.json").read_text())
    parts = {name: _component(path / name) for name in _components(path)}
    return {"path": str(path), "kind": index.get("_class_name"),
            "components": {k: {kk: v[kk] for kk in ("kind", "config", "parameters")} for k, v in parts.items()},
            "parameters": sum(p["parameters"] for p in parts.values()),
            "fingerprint": checkpoint.fingerprint(path)}


def parameters(path: Path) -> int | None:
    """Parameter count of any supported checkpoint from its headers alone (no fingerprint); None if it
    has no safetensors index to read (e.g. a mindformers `.ckpt` directory, whose loader reports its
    own problems)."""
    path = Path(path)
    try:
        dirs = [path / n for n in _components(path)] if (path / "model_index.json").exists() else [path]
        return sum(checkpoint.parameter_count(_weights(d)[1])[0] for d in dirs)
    except (CheckpointError, OSError, ValueError, KeyError):
        return None
