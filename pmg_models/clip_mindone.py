"""The SD text encoder from a mindone Stable Diffusion `.ckpt` (mindspore-lab/mindone `examples/stable_diffusion_v2`).

mindone stores the text encoder under `cond_stage_model.` in the original CLIP/OpenCLIP layout with
MindSpore spellings: `embedding_table`, `positional_embedding`, `ln_final`, `resblocks.N` with a fused
`in_proj` (q, k, v stacked on the output axis), `c_fc`/`c_proj` MLP, norms as `gamma`/`beta`.
`mindone_text_key` translates one name; `mindone_text_tensors` also splits the fused projections.
The config (width, heads, layers, activation) is not in the `.ckpt`: pass the matching CLIPTextConfig.
"""
from __future__ import annotations

import re

import numpy as np

from pmg_models import checkpoint

PREFIX = "cond_stage_model."
_WRAPPERS = ("transformer.", "model.")            # FrozenCLIPEmbedder.transformer / FrozenOpenCLIPEmbedder.model
_BLOCK = re.compile(r"(?:transformer_layer\.|transformer\.)?resblocks\.(\d+)\.(.+)$")
_BLOCK_PARTS = {"ln_1": "layer_norm1", "ln_2": "layer_norm2", "attn.attn.out_proj": "self_attn.out_proj",
                "attn.out_proj": "self_attn.out_proj", "attn.attn.in_proj": "self_attn.in_proj",
                "attn.in_proj": "self_attn.in_proj", "c_fc": "mlp.fc1", "mlp.c_fc": "mlp.fc1", "mlp.0": "mlp.fc1",
                "c_proj": "mlp.fc2", "mlp.c_proj": "mlp.fc2", "mlp.2": "mlp.fc2"}
_LEAF = {"gamma": "weight", "beta": "bias", "weight": "weight", "bias": "bias"}
_TOP = {"embedding_table": "embeddings.token_embedding.weight",
        "token_embedding.embedding_table": "embeddings.token_embedding.weight",
        "token_embedding.weight": "embeddings.token_embedding.weight",
        "positional_embedding": "embeddings.position_embedding.weight"}
_IGNORED = ("text_projection", "logit_scale", "attn_mask")


def mindone_text_key(name: str) -> str | None:
    """`cond_stage_model.…` name → our CLIPTextTransformer name ('…in_proj.*' stays fused); None = ignore.

    Raises CheckpointError for a text-encoder name with no mapping.
    """
    rest = name[len(PREFIX):] if name.startswith(PREFIX) else name
    for wrapper in _WRAPPERS:
        if rest.startswith(wrapper) and not rest.startswith("transformer.resblocks"):
            rest = rest[len(wrapper):]
            break
    if rest in _TOP:
        return _TOP[rest]
    if rest.endswith(_IGNORED):
        return None
    if rest.startswith("ln_final."):
        return "final_layer_norm." + _LEAF[rest.rsplit(".", 1)[1]]
    m = _BLOCK.match(rest)
    if m:
        part, leaf = m[2].rsplit(".", 1)
        if part in _BLOCK_PARTS and leaf in _LEAF:
            return f"encoder.layers.{m[1]}.{_BLOCK_PARTS[part]}.{_LEAF[leaf]}"
    raise checkpoint.CheckpointError(f"text-encoder tensor {name!r} has no mapping to the CLIP text model")


def mindone_text_tensors(tensors: dict[str, np.ndarray]) -> list[tuple[str, np.ndarray]]:
    """(our name, array) pairs for every `cond_stage_model.*` tensor, fused in_proj split into q/k/v."""
    out = []
    for name, arr in tensors.items():
        if not name.startswith(PREFIX):
            continue
        key = mindone_text_key(name)
        if key is None:
            continue
        if ".self_attn.in_proj." in key:
            for proj, part in zip(("q_proj", "k_proj", "v_proj"), np.split(np.asarray(arr), 3, axis=0)):
                out.append((key.replace("in_proj", proj), np.ascontiguousarray(part)))
        else:
            out.append((key, np.asarray(arr)))
    return out


def load_mindone_text_encoder(tensors: dict[str, np.ndarray], config, source: str = ""):
    """A CLIPTextModel from a mindone SD checkpoint's tensors (e.g. `sd.weights.read_mindone_ckpt`); strict."""
    from pmg_models.clip import CLIPTextModel

    model = CLIPTextModel(config)
    checkpoint.assign_strict(model.net, mindone_text_tensors(tensors), source=f"{source} (text encoder)")
    return model
