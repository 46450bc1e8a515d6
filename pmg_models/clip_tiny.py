"""Tiny random CLIP checkpoints in the real Hugging Face layouts, written with NumPy + safetensors only.

Used by tests, `pmg models init-tiny` and the demo: transformers loads them as CLIPTextModel / CLIPModel /
CLIPProcessor, so parity tests and our loaders read the same files.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from pmg_models.clip_image import ImageProcessorConfig
from pmg_models.clip_tokenizer import write_tiny_tokenizer


def _save(path: Path, tensors: dict[str, np.ndarray]) -> None:
    """safetensors write via a temp name (checkpoint.save_safetensors would turn the 0-d logit_scale into 1-d)."""
    from safetensors.numpy import save_file

    tmp = path.with_name(path.name + ".tmp")
    save_file(tensors, str(tmp), metadata={"format": "pt"})
    tmp.replace(path)


def _layer_tensors(rng, prefix: str, hidden: int, intermediate: int) -> dict[str, np.ndarray]:
    def normal(*shape, std=0.02):
        return (rng.standard_normal(shape) * std).astype(np.float32)

    out = {}
    for name in ("q_proj", "k_proj", "v_proj", "out_proj"):
        out[f"{prefix}.self_attn.{name}.weight"] = normal(hidden, hidden, std=hidden ** -0.5)
        out[f"{prefix}.self_attn.{name}.bias"] = normal(hidden)
    out[f"{prefix}.mlp.fc1.weight"] = normal(intermediate, hidden, std=hidden ** -0.5)
    out[f"{prefix}.mlp.fc1.bias"] = normal(intermediate)
    out[f"{prefix}.mlp.fc2.weight"] = normal(hidden, intermediate, std=intermediate ** -0.5)
    out[f"{prefix}.mlp.fc2.bias"] = normal(hidden)
    for norm in ("layer_norm1", "layer_norm2"):
        out.update(_norm(rng, f"{prefix}.{norm}", hidden))
    return out


def _norm(rng, prefix: str, hidden: int) -> dict[str, np.ndarray]:
    return {f"{prefix}.weight": (1 + 0.1 * rng.standard_normal(hidden)).astype(np.float32),
            f"{prefix}.bias": (0.1 * rng.standard_normal(hidden)).astype(np.float32)}


def text_tensors(rng, cfg: dict, prefix: str = "text_model") -> dict[str, np.ndarray]:
    """Random weights for a CLIPTextModel config dict, keyed `<prefix>.…` as HF saves them."""
    d, inter = cfg["hidden_size"], cfg["intermediate_size"]
    out = {f"{prefix}.embeddings.token_embedding.weight":
           (0.02 * rng.standard_normal((cfg["vocab_size"], d))).astype(np.float32),
           f"{prefix}.embeddings.position_embedding.weight":
           (0.01 * rng.standard_normal((cfg["max_position_embeddings"], d))).astype(np.float32)}
    for i in range(cfg["num_hidden_layers"]):
        out.update(_layer_tensors(rng, f"{prefix}.encoder.layers.{i}", d, inter))
    out.update(_norm(rng, f"{prefix}.final_layer_norm", d))
    return out


def vision_tensors(rng, cfg: dict, prefix: str = "vision_model") -> dict[str, np.ndarray]:
    d, p, c = cfg["hidden_size"], cfg["patch_size"], cfg["num_channels"]
    n = (cfg["image_size"] // p) ** 2 + 1
    out = {f"{prefix}.embeddings.class_embedding": (d ** -0.5 * rng.standard_normal(d)).astype(np.float32),
           f"{prefix}.embeddings.patch_embedding.weight":
           (rng.standard_normal((d, c, p, p)) * (c * p * p) ** -0.5).astype(np.float32),
           f"{prefix}.embeddings.position_embedding.weight": (0.02 * rng.standard_normal((n, d))).astype(np.float32)}
    for i in range(cfg["num_hidden_layers"]):
        out.update(_layer_tensors(rng, f"{prefix}.encoder.layers.{i}", d, cfg["intermediate_size"]))
    out.update(_norm(rng, f"{prefix}.pre_layrnorm", d))
    out.update(_norm(rng, f"{prefix}.post_layernorm", d))
    return out


def text_config(hidden_size=32, layers=2, heads=4, intermediate=37, vocab_size=1024, projection_dim=None,
                hidden_act="quick_gelu", bos_token_id=49406, eos_token_id=49407, pad_token_id=1) -> dict:
    return {"architectures": ["CLIPTextModel"], "model_type": "clip_text_model", "attention_dropout": 0.0,
            "bos_token_id": bos_token_id, "eos_token_id": eos_token_id, "pad_token_id": pad_token_id,
            "hidden_act": hidden_act, "hidden_size": hidden_size, "initializer_factor": 1.0,
            "initializer_range": 0.02, "intermediate_size": intermediate, "layer_norm_eps": 1e-5,
            "max_position_embeddings": 77, "num_attention_heads": heads, "num_hidden_layers": layers,
            "projection_dim": projection_dim or hidden_size, "vocab_size": vocab_size, "torch_dtype": "float32"}


def _token_ids(directory: Path, tokenizer_dir: Path | None) -> dict:
    """vocab_size/bos/eos/pad ids of the tokenizer this encoder will be used with, so pooling finds the eos.

    `tokenizer_dir`, else an SD sibling `../tokenizer/`, else the default tiny tokenizer.
    """
    import tempfile

    from pmg_models.clip_tokenizer import CLIPTokenizer

    if tokenizer_dir is None and (directory.parent / "tokenizer" / "vocab.json").exists():
        tokenizer_dir = directory.parent / "tokenizer"
    if tokenizer_dir is not None:
        tok = CLIPTokenizer.from_dir(tokenizer_dir)
    else:
        with tempfile.TemporaryDirectory() as tmp:
            tok = CLIPTokenizer.from_dir(write_tiny_tokenizer(tmp))
    return {"vocab_size": len(tok.vocab), "bos_token_id": tok.bos_id, "eos_token_id": tok.eos_id,
            "pad_token_id": tok.pad_id}


def write_tiny_text_encoder(directory, seed: int = 0, hidden_size: int = 32, layers: int = 2, heads: int = 4,
                            intermediate: int = 37, vocab_size: int | None = None, projection_dim: int | None = None,
                            hidden_act: str = "quick_gelu", tokenizer_dir=None) -> Path:
    """A random CLIPTextModel (SD `text_encoder/` layout: config.json + model.safetensors, keys `text_model.*`).

    Token ids and vocab_size (at least the tokenizer's) come from `tokenizer_dir`, else a sibling `tokenizer/`
    (SD layout), else from the default `write_tiny_tokenizer` vocabulary.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    ids = _token_ids(directory, Path(tokenizer_dir) if tokenizer_dir is not None else None)
    if vocab_size is not None:
        ids["vocab_size"] = max(vocab_size, ids["vocab_size"])
    cfg = text_config(hidden_size, layers, heads, intermediate, projection_dim=projection_dim,
                      hidden_act=hidden_act, **ids)
    tensors = text_tensors(np.random.default_rng(seed), cfg)
    _save(directory / "model.safetensors", tensors)
    (directory / "config.json").write_text(json.dumps(cfg, indent=2))
    return directory


def init_tiny(directory, seed: int = 0) -> Path:
    """A tiny random HF CLIP dir (CLIPModel + CLIPProcessor files) loadable by transformers."""
    directory = Path(directory)
    write_tiny_tokenizer(directory)
    text = text_config(hidden_size=32, layers=2, heads=4, intermediate=37, projection_dim=16,
                       **_token_ids(directory, directory))
    vision = {"model_type": "clip_vision_model", "attention_dropout": 0.0, "hidden_act": "quick_gelu",
              "hidden_size": 32, "image_size": 32, "patch_size": 8, "num_channels": 3, "intermediate_size": 37,
              "layer_norm_eps": 1e-5, "num_attention_heads": 4, "num_hidden_layers": 2, "projection_dim": 16,
              "initializer_factor": 1.0, "initializer_range": 0.02}
    text.pop("architectures")
    cfg = {"architectures": ["CLIPModel"], "model_type": "clip", "projection_dim": 16,
           "logit_scale_init_value": 2.6592, "initializer_factor": 1.0, "torch_dtype": "float32",
           "text_config": text, "vision_config": vision}
    rng = np.random.default_rng(seed)
    tensors = {**text_tensors(rng, text), **vision_tensors(rng, vision),
               "text_projection.weight": (rng.standard_normal((16, 32)) * 32 ** -0.5).astype(np.float32),
               "visual_projection.weight": (rng.standard_normal((16, 32)) * 32 ** -0.5).astype(np.float32),
               "logit_scale": np.array(2.6592, np.float32)}
    _save(directory / "model.safetensors", tensors)
    (directory / "config.json").write_text(json.dumps(cfg, indent=2))
    image = ImageProcessorConfig(shortest_edge=32, crop_height=32, crop_width=32)
    (directory / "preprocessor_config.json").write_text(json.dumps(image.to_hf(), indent=2))
    return directory
