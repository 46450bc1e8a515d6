"""The SD text encoder from mindone `.ckpt` names (fused in_proj, gamma/beta, CLIP and OpenCLIP wrappers)."""
import numpy as np
import pytest

from pmg_models import clip
from pmg_models.checkpoint import CheckpointError, iter_safetensors
from pmg_models.clip_mindone import load_mindone_text_encoder, mindone_text_key
from pmg_models.runtime import to_numpy

# our name → mindone name, per layout (written independently of the loader's tables)
STYLES = {
    "clip": dict(root="cond_stage_model.transformer.", tok="embedding_table", block="transformer_layer.resblocks",
                 attn="attn.attn", fc1="c_fc", fc2="c_proj"),
    "openclip": dict(root="cond_stage_model.model.", tok="token_embedding.embedding_table",
                     block="transformer.resblocks", attn="attn", fc1="mlp.c_fc", fc2="mlp.c_proj"),
}


def to_mindone(weights: dict, style: dict, layers: int) -> dict:
    out, r, g = {}, style["root"], {"weight": "gamma", "bias": "beta"}
    out[r + style["tok"]] = weights["embeddings.token_embedding.weight"]
    out[r + "positional_embedding"] = weights["embeddings.position_embedding.weight"]
    for leaf in ("weight", "bias"):
        out[f"{r}ln_final.{g[leaf]}"] = weights[f"final_layer_norm.{leaf}"]
        for i in range(layers):
            ours, theirs = f"encoder.layers.{i}.", f"{r}{style['block']}.{i}."
            out[f"{theirs}{style['attn']}.in_proj.{leaf}"] = np.concatenate(
                [weights[f"{ours}self_attn.{p}_proj.{leaf}"] for p in "qkv"])
            out[f"{theirs}{style['attn']}.out_proj.{leaf}"] = weights[f"{ours}self_attn.out_proj.{leaf}"]
            out[f"{theirs}ln_1.{g[leaf]}"] = weights[f"{ours}layer_norm1.{leaf}"]
            out[f"{theirs}ln_2.{g[leaf]}"] = weights[f"{ours}layer_norm2.{leaf}"]
            out[f"{theirs}{style['fc1']}.{leaf}"] = weights[f"{ours}mlp.fc1.{leaf}"]
            out[f"{theirs}{style['fc2']}.{leaf}"] = weights[f"{ours}mlp.fc2.{leaf}"]
    return out


@pytest.mark.parametrize("style", sorted(STYLES))
def test_mindone_ckpt_loads_to_the_same_model(tmp_path, style):
    import mindspore as ms

    clip.write_tiny_text_encoder(tmp_path / "te", hidden_act="gelu", layers=2)
    reference = clip.CLIPTextModel.from_pretrained(tmp_path / "te")
    weights = {k.removeprefix("text_model."): v for k, v in iter_safetensors(tmp_path / "te" / "model.safetensors")}
    tensors = to_mindone(weights, STYLES[style], 2)
    tensors["model.diffusion_model.time_embed.0.weight"] = np.zeros((2, 2), np.float32)  # not the text encoder
    ms.save_checkpoint([{"name": k, "data": ms.Tensor(v)} for k, v in tensors.items()], str(tmp_path / "sd.ckpt"))
    loaded = {k: v.asnumpy() for k, v in ms.load_checkpoint(str(tmp_path / "sd.ckpt")).items()}
    model = load_mindone_text_encoder(loaded, reference.config, source="sd.ckpt")
    ids, _ = clip.CLIPTokenizer.from_dir(clip.write_tiny_tokenizer(tmp_path / "tok")).encode(["a dark poster"])
    np.testing.assert_array_equal(to_numpy(model(ids, "penultimate")), to_numpy(reference(ids, "penultimate")))


def test_unmapped_and_missing_names_fail_loudly(tmp_path):
    with pytest.raises(CheckpointError, match="resblocks.0.attn.weird"):
        mindone_text_key("cond_stage_model.transformer.transformer_layer.resblocks.0.attn.weird.weight")
    assert mindone_text_key("cond_stage_model.model.text_projection") is None
    clip.write_tiny_text_encoder(tmp_path / "te", layers=1)
    config = clip.CLIPTextModel.from_pretrained(tmp_path / "te").config
    with pytest.raises(CheckpointError, match="missing"):
        load_mindone_text_encoder({"cond_stage_model.transformer.positional_embedding": np.zeros((77, 32), np.float32)},
                                  config)
