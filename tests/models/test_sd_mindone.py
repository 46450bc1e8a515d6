"""mindone SD `.ckpt` files (LDM names, MindSpore spellings) load through the key map."""
import re
import shutil

import numpy as np
import pytest
import mindspore as ms

from pmg_models import checkpoint
from pmg_models.sd import init_tiny, weights
from pmg_models.sd.weights import ldm_unet_key, ldm_vae_key

# diffusers → mindone spelling of resnet parts (written independently of the loader's table)
RESNET = {"norm1": "in_layers_norm", "conv1": "in_layers_conv.conv", "norm2": "out_layers_norm",
          "conv2": "out_layers_conv.conv", "time_emb_proj": "emb_layers.1", "conv_shortcut": "skip_connection.conv"}
VAE_RESNET = {"conv_shortcut": "nin_shortcut"}
VAE_ATTN = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}


def _ms_norm(name: str) -> str:
    """mindone names LayerNorm/GroupNorm parameters gamma/beta."""
    if re.search(r"(norm\w*|in_layers_norm|out_layers_norm)\.(weight|bias)$", name) or name.startswith("out.0."):
        return name.replace(".weight", ".gamma").replace(".bias", ".beta")
    return name


def to_mindone_unet(name: str, per: int, up_attn: list[bool]) -> str:
    m = re.match(r"down_blocks\.(\d+)\.(resnets|attentions|downsamplers)\.(\d+)\.(.*)", name)
    if m:
        b, kind, i, rest = int(m[1]), m[2], int(m[3]), m[4]
        if kind == "downsamplers":
            return f"input_blocks.{(b + 1) * (per + 1)}.0.op.{rest}"
        idx = 1 + b * (per + 1) + i
        if kind == "resnets":
            part, tail = rest.split(".", 1)
            return _ms_norm(f"input_blocks.{idx}.0.{RESNET[part]}.{tail}")
        return _ms_norm(f"input_blocks.{idx}.1.{rest}")
    m = re.match(r"up_blocks\.(\d+)\.(resnets|attentions|upsamplers)\.(\d+)\.(.*)", name)
    if m:
        b, kind, i, rest = int(m[1]), m[2], int(m[3]), m[4]
        if kind == "upsamplers":
            return f"output_blocks.{b * (per + 2) + per + 1}.{2 if up_attn[b] else 1}.conv.{rest}"
        idx = b * (per + 2) + i
        if kind == "resnets":
            part, tail = rest.split(".", 1)
            return _ms_norm(f"output_blocks.{idx}.0.{RESNET[part]}.{tail}")
        return _ms_norm(f"output_blocks.{idx}.1.{rest}")
    m = re.match(r"mid_block\.(resnets|attentions)\.(\d)\.(.*)", name)
    if m:
        if m[1] == "attentions":
            return _ms_norm(f"middle_block.1.{m[3]}")
        part, tail = m[3].split(".", 1)
        return _ms_norm(f"middle_block.{2 * int(m[2])}.{RESNET[part]}.{tail}")
    fixed = {"conv_in": "input_blocks.0.0.conv", "time_embedding.linear_1": "time_embed.0",
             "time_embedding.linear_2": "time_embed.2", "conv_norm_out": "out.0", "conv_out": "out.2.conv"}
    stem, leaf = name.rsplit(".", 1)
    return _ms_norm(f"{fixed[stem]}.{leaf}")


def to_mindone_vae(name: str, n: int) -> str:
    part, rest = name.split(".", 1)
    if part in ("quant_conv", "post_quant_conv"):
        return name
    m = re.match(r"(down|up)_blocks\.(\d+)\.(resnets|downsamplers|upsamplers)\.(\d+)\.(.*)", rest)
    if m:
        i = int(m[2]) if m[1] == "down" else n - 1 - int(m[2])
        if m[3] == "resnets":
            sub, tail = m[5].split(".", 1)
            return f"{part}.{m[1]}.{i}.block.{m[4]}.{VAE_RESNET.get(sub, sub)}.{tail}"
        return f"{part}.{m[1]}.{i}.{m[1]}sample.{m[5]}"
    m = re.match(r"mid_block\.resnets\.(\d)\.(.*)", rest)
    if m:
        return f"{part}.mid.block_{int(m[1]) + 1}.{m[2]}"
    m = re.match(r"mid_block\.attentions\.0\.(.*)\.(weight|bias)$", rest)
    if m:
        return f"{part}.mid.attn_1.{VAE_ATTN[m[1]]}.{m[2]}"
    return f"{part}.{rest.replace('conv_norm_out', 'norm_out')}"


def to_mindone_text(directory) -> dict:
    """HF CLIPTextModel tensors → mindone SD 2.x (OpenCLIP) names, plus the 24th block SD 2 skips."""
    from safetensors.numpy import load_file

    hf = {k.removeprefix("text_model."): v for k, v in load_file(str(directory / "model.safetensors")).items()}
    pre = "cond_stage_model.transformer."
    out = {pre + "embedding_table": hf["embeddings.token_embedding.weight"],
           pre + "positional_embedding": hf["embeddings.position_embedding.weight"],
           pre + "ln_final.gamma": hf["final_layer_norm.weight"], pre + "ln_final.beta": hf["final_layer_norm.bias"],
           pre + "text_projection": np.eye(32, dtype=np.float32)}
    layers = 1 + max(int(k.split(".")[2]) for k in hf if k.startswith("encoder.layers."))
    for i in range(layers + 1):           # one block more than the HF config: OpenCLIP's last, unused
        src, dst = f"encoder.layers.{min(i, layers - 1)}.", f"{pre}transformer_layer.resblocks.{i}."
        for leaf in ("weight", "bias"):
            out[dst + f"attn.attn.in_proj.{leaf}"] = np.concatenate(
                [hf[src + f"self_attn.{p}_proj.{leaf}"] for p in "qkv"])
            out[dst + f"attn.attn.out_proj.{leaf}"] = hf[src + f"self_attn.out_proj.{leaf}"]
            out[dst + f"c_fc.{leaf}"] = hf[src + f"mlp.fc1.{leaf}"]
            out[dst + f"c_proj.{leaf}"] = hf[src + f"mlp.fc2.{leaf}"]
        for ln, hf_ln in (("ln_1", "layer_norm1"), ("ln_2", "layer_norm2")):
            out[dst + f"{ln}.gamma"] = hf[src + f"{hf_ln}.weight"]
            out[dst + f"{ln}.beta"] = hf[src + f"{hf_ln}.bias"]
    return out


@pytest.fixture(scope="module")
def mindone_ckpt(tmp_path_factory):
    from pmg_models.sd.weights import load_unet, load_vae

    root = tmp_path_factory.mktemp("mindone")
    sd = init_tiny(root / "tiny", seed=4, variant="sd1")
    unet, vae = load_unet(sd / "unet"), load_vae(sd / "vae")
    per = unet.config.layers_per_block[0]
    up_attn = [t == "CrossAttnUpBlock2D" for t in unet.config.up_block_types]
    n_vae = len(vae.config.block_out_channels)
    items, source = [], {}
    for p in unet.get_parameters():
        name = "model.diffusion_model." + to_mindone_unet(p.name, per, up_attn)
        items.append({"name": name, "data": ms.Tensor(p.asnumpy())})
        source[name] = ("unet", p.name)
    for p in vae.get_parameters():
        arr = p.asnumpy()
        if ".mid_block.attentions.0.to_" in p.name and arr.ndim == 2:
            arr = arr[:, :, None, None]          # LDM VAE attention is 1x1 convs
        name = "first_stage_model." + to_mindone_vae(p.name, n_vae)
        items.append({"name": name, "data": ms.Tensor(arr)})
        source[name] = ("vae", p.name)
    for name, arr in to_mindone_text(sd / "text_encoder").items():
        items.append({"name": name, "data": ms.Tensor(arr)})
    items.append({"name": "betas", "data": ms.Tensor(np.linspace(0, 1, 10).astype(np.float32))})
    path = root / "sd_v1_mindone.ckpt"
    ms.save_checkpoint(items, str(path))
    return path, unet, vae, sd, source


def test_known_names_map():
    from pmg_models.sd.unet import UNetConfig

    cfg = UNetConfig()  # SD defaults: 4 blocks, 2 layers each
    assert ldm_unet_key("input_blocks.4.1.transformer_blocks.0.attn1.to_q.weight", cfg) == \
        "down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q.weight"
    assert ldm_unet_key("input_blocks.4.0.in_layers_norm.gamma", cfg) == "down_blocks.1.resnets.0.norm1.weight"
    assert ldm_unet_key("input_blocks.3.0.op.conv.weight", cfg) == "down_blocks.0.downsamplers.0.conv.weight"
    assert ldm_unet_key("output_blocks.5.2.conv.conv.bias", cfg) == "up_blocks.1.upsamplers.0.conv.bias"
    assert ldm_unet_key("output_blocks.2.1.conv.weight", cfg) == "up_blocks.0.upsamplers.0.conv.weight"
    assert ldm_unet_key("middle_block.2.emb_layers.1.weight", cfg) == "mid_block.resnets.1.time_emb_proj.weight"
    assert ldm_unet_key("out.0.gamma", cfg) == "conv_norm_out.weight"
    assert ldm_vae_key("decoder.up.3.block.0.norm1.weight", 4) == "decoder.up_blocks.0.resnets.0.norm1.weight"
    assert ldm_vae_key("encoder.mid.attn_1.proj_out.bias", 4) == "encoder.mid_block.attentions.0.to_out.0.bias"


def test_mindone_ckpt_loads_through_the_key_map(mindone_ckpt):
    from pmg_models.sd.unet import UNet2DConditionModel
    from pmg_models.sd.vae import AutoencoderKL

    path, unet, vae, _, _ = mindone_ckpt
    fresh_unet, fresh_vae = UNet2DConditionModel(unet.config), AutoencoderKL(vae.config)
    skipped = weights.load_mindone(path, fresh_unet, fresh_vae)
    assert skipped and all(name.startswith("cond_stage_model.") for name in skipped)
    for ours, ref in ((fresh_unet, unet), (fresh_vae, vae)):
        want = {p.name: p.asnumpy() for p in ref.get_parameters()}
        for p in ours.get_parameters():
            np.testing.assert_array_equal(p.asnumpy(), want[p.name], err_msg=p.name)


def test_mindone_missing_tensor_is_named(mindone_ckpt, tmp_path):
    from pmg_models.sd.unet import UNet2DConditionModel
    from pmg_models.sd.vae import AutoencoderKL

    path, unet, vae, _, _ = mindone_ckpt
    params = ms.load_checkpoint(str(path))
    drop = "model.diffusion_model.middle_block.1.proj_in.weight"
    params.pop(drop)
    short = tmp_path / "short.ckpt"
    ms.save_checkpoint([{"name": k, "data": v} for k, v in params.items()], str(short))
    with pytest.raises(checkpoint.CheckpointError, match="mid_block.attentions.0.proj_in.weight"):
        weights.load_mindone(short, UNet2DConditionModel(unet.config), AutoencoderKL(vae.config))


def test_pipeline_takes_all_weights_from_a_mindone_ckpt(mindone_ckpt, tmp_path):
    from safetensors.numpy import load_file, save_file

    from pmg_models.sd.pipeline import StableDiffusion

    path, _, _, sd, _ = mindone_ckpt
    a = StableDiffusion.from_pretrained(sd)
    # scramble the folder's text weights: the ckpt's text tower must be what gets used
    other = tmp_path / "other"
    shutil.copytree(sd, other)
    f = other / "text_encoder" / "model.safetensors"
    save_file({k: v[::-1].copy() for k, v in load_file(str(f)).items()}, str(f))
    b = StableDiffusion.from_pretrained(other, mindone_ckpt=path)
    np.testing.assert_array_equal(a.encode_prompt(["a red poster"])[0], b.encode_prompt(["a red poster"])[0])
    lat = a.prepare_latents([2], 32, 32)
    np.testing.assert_array_equal(a.decode(lat), b.decode(lat))
    assert b.fingerprint != a.fingerprint and len(b.fingerprint) == 16


def test_text_mapping_splits_qkv_and_drops_the_last_block():
    rng = np.random.default_rng(0)
    w = rng.standard_normal((6, 2)).astype(np.float32)
    pre = "cond_stage_model.transformer.transformer_layer.resblocks."
    out, dropped = weights.ldm_text_tensors({pre + "0.attn.attn.in_proj.weight": w, pre + "1.ln_1.gamma": w[0]}, 1)
    np.testing.assert_array_equal(out["encoder.layers.0.self_attn.k_proj.weight"], w[2:4])
    assert dropped == [pre + "1.ln_1.gamma"]
