"""Checkpoint key maps for Stable Diffusion: diffusers safetensors (identity) and mindone `.ckpt` (LDM names).

Our Cells carry diffusers parameter names, so a diffusers directory loads with the identity map. mindone's
SD checkpoints (mindspore-lab/mindone `examples/stable_diffusion_v2`) use the original latent-diffusion
(CompVis/Stability) names with MindSpore twists: norms as `gamma`/`beta`, resnet `in_layers_norm` /
`in_layers_conv.conv`, convs wrapped as `.conv.conv`, 1x1-conv VAE attention, and the SD 2.x text
tower in OpenCLIP layout (`embedding_table`, fused `in_proj`). `ldm_unet_key`/`ldm_vae_key` translate
one name; `ldm_text_tensors` also splits the fused qkv; `reshape_like` squeezes 1x1-conv weights where
our layer is a Linear.
"""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from pmg_models import checkpoint
from pmg_models.sd.unet import UNetConfig

UNET_PREFIX = "model.diffusion_model."
VAE_PREFIX = "first_stage_model."
TEXT_PREFIX = "cond_stage_model."

# Resnet sub-layer names: LDM (torch) and mindone spellings → diffusers.
_RESNET = {
    "in_layers.0": "norm1", "in_layers.2": "conv1", "out_layers.0": "norm2", "out_layers.3": "conv2",
    "in_layers_norm": "norm1", "in_layers_conv": "conv1", "out_layers_norm": "norm2", "out_layers_conv": "conv2",
    "emb_layers.1": "time_emb_proj", "skip_connection": "conv_shortcut",
    "nin_shortcut": "conv_shortcut",
}
_VAE_ATTN = {"norm": "group_norm", "q": "to_q", "k": "to_k", "v": "to_v", "proj_out": "to_out.0"}


def _clean(name: str) -> str:
    """MindSpore spellings → torch ones: gamma/beta → weight/bias, `.conv.conv` wrappers collapsed."""
    name = re.sub(r"\.gamma$", ".weight", name)
    name = re.sub(r"\.beta$", ".bias", name)
    return name.replace(".conv.conv.", ".conv.")


def _resnet(rest: str) -> str:
    for old, new in _RESNET.items():
        if rest.startswith(old + "."):
            rest = new + rest[len(old):]
            break
    return rest.replace("conv1.conv.", "conv1.").replace("conv2.conv.", "conv2.").replace(
        "conv_shortcut.conv.", "conv_shortcut.")


def ldm_unet_key(name: str, cfg: UNetConfig) -> str | None:
    """`input_blocks.4.1.norm.gamma` → `down_blocks.1.attentions.0.norm.weight` (name without the UNet prefix)."""
    name = _clean(name)
    m = re.match(r"time_embed\.(0|2)\.(.*)", name)
    if m:
        return f"time_embedding.linear_{1 if m[1] == '0' else 2}.{m[2]}"
    m = re.match(r"input_blocks\.0\.0\.(?:conv\.)?(weight|bias)$", name)
    if m:
        return f"conv_in.{m[1]}"
    m = re.match(r"out\.(0|2)\.(?:conv\.)?(weight|bias)$", name)
    if m:
        return f"{'conv_norm_out' if m[1] == '0' else 'conv_out'}.{m[2]}"
    m = re.match(r"middle_block\.(\d)\.(.*)", name)
    if m:
        i, rest = int(m[1]), m[2]
        return f"mid_block.attentions.0.{rest}" if i == 1 else f"mid_block.resnets.{i // 2}.{_resnet(rest)}"
    m = re.match(r"input_blocks\.(\d+)\.(\d)\.(.*)", name)
    if m:
        per = cfg.layers_per_block[0] + 1
        block, layer, rest = (int(m[1]) - 1) // per, (int(m[1]) - 1) % per, m[3]
        if layer == per - 1:
            return f"down_blocks.{block}.downsamplers.0.conv.{rest.split('.')[-1]}"
        kind = "resnets" if m[2] == "0" else "attentions"
        return f"down_blocks.{block}.{kind}.{layer}.{_resnet(rest) if kind == 'resnets' else rest}"
    m = re.match(r"output_blocks\.(\d+)\.(\d)\.(.*)", name)
    if m:
        per = cfg.layers_per_block[0] + 2
        block, layer, sub, rest = int(m[1]) // per, int(m[1]) % per, int(m[2]), m[3]
        if sub == 0:
            return f"up_blocks.{block}.resnets.{layer}.{_resnet(rest)}"
        has_attn = cfg.up_block_types[block] == "CrossAttnUpBlock2D"
        if sub == 1 and has_attn:
            return f"up_blocks.{block}.attentions.{layer}.{rest}"
        return f"up_blocks.{block}.upsamplers.0.conv.{rest.split('.')[-1]}"
    return None


def ldm_vae_key(name: str, n_blocks: int) -> str | None:
    """`decoder.up.3.block.0.norm1.gamma` → `decoder.up_blocks.0.resnets.0.norm1.weight` (no VAE prefix)."""
    name = _clean(name)
    if name.startswith(("quant_conv.", "post_quant_conv.")):
        return name
    m = re.match(r"(encoder|decoder)\.(.*)", name)
    if not m:
        return None
    part, rest = m[1], m[2]
    if rest.startswith(("conv_in.", "conv_out.")):
        return f"{part}.{rest}"
    if rest.startswith("norm_out."):
        return f"{part}.conv_norm_out.{rest[len('norm_out.'):]}"
    m = re.match(r"mid\.(block_1|block_2|attn_1)\.(\w+)\.(weight|bias)$", rest)
    if m:
        if m[1] == "attn_1":
            return f"{part}.mid_block.attentions.0.{_VAE_ATTN[m[2]]}.{m[3]}"
        return f"{part}.mid_block.resnets.{int(m[1][-1]) - 1}.{_resnet(m[2] + '.' + m[3])}"
    m = re.match(r"(down|up)\.(\d+)\.(block|downsample|upsample)\.(.*)", rest)
    if not m:
        return None
    i = int(m[2]) if m[1] == "down" else n_blocks - 1 - int(m[2])   # LDM numbers decoder blocks bottom-up
    blocks = "down_blocks" if m[1] == "down" else "up_blocks"
    if m[3] == "block":
        j, sub = m[4].split(".", 1)
        return f"{part}.{blocks}.{i}.resnets.{j}.{_resnet(sub)}"
    samplers = "downsamplers" if m[3] == "downsample" else "upsamplers"
    return f"{part}.{blocks}.{i}.{samplers}.0.conv.{m[4].split('.')[-1]}"


def reshape_like(named_arrays, cell):
    """Squeeze (out, in, 1, 1) conv weights where the Cell has a (out, in) Linear (LDM VAE attention)."""
    shapes = {p.name: tuple(p.shape) for p in cell.get_parameters()}
    for name, arr in named_arrays:
        target = shapes.get(name)
        if target is not None and arr.ndim == 4 and arr.shape[2:] == (1, 1) and target == arr.shape[:2]:
            arr = arr.reshape(target)
        yield name, arr


def read_mindone_ckpt(path: Path) -> dict[str, np.ndarray]:
    """All tensors of a MindSpore `.ckpt` as float32 NumPy arrays (protobuf, not pickle)."""
    import mindspore as ms

    path = Path(path)
    if path.suffix != ".ckpt":
        raise checkpoint.CheckpointError(f"{path} is not a MindSpore .ckpt file")
    params = ms.load_checkpoint(str(path))
    return {k: v.asnumpy().astype(np.float32) if v.asnumpy().dtype != np.float32 else v.asnumpy()
            for k, v in params.items()}


_TEXT_PARTS = {"ln_1": "layer_norm1", "ln_2": "layer_norm2", "c_fc": "mlp.fc1", "c_proj": "mlp.fc2",
               "mlp.c_fc": "mlp.fc1", "mlp.c_proj": "mlp.fc2", "attn.attn.out_proj": "self_attn.out_proj",
               "attn.out_proj": "self_attn.out_proj"}


def ldm_text_tensors(tensors: dict[str, np.ndarray], num_layers: int) -> tuple[dict[str, np.ndarray], list[str]]:
    """mindone SD 2.x text tower (OpenCLIP layout, fused qkv) → HF CLIPTextModel names without `text_model.`.

    Blocks at index >= `num_layers` are dropped: SD 2.x conditions on OpenCLIP's penultimate layer, and
    diffusers' SD 2.x text encoder config has 23 of the 24 blocks. Returns (tensors, dropped names).
    """
    out, dropped = {}, []
    for full, arr in tensors.items():
        name = _clean(full[len(TEXT_PREFIX):]).removeprefix("transformer.").removeprefix("model.")
        m = re.match(r"(?:transformer_layer\.|transformer\.)?resblocks\.(\d+)\.(.*)\.(weight|bias)$", name)
        if m:
            i, part, leaf = int(m[1]), m[2], m[3]
            if i >= num_layers:
                dropped.append(full)
            elif part in ("attn.attn.in_proj", "attn.in_proj"):
                for proj, chunk in zip(("q_proj", "k_proj", "v_proj"), np.split(arr, 3)):
                    out[f"encoder.layers.{i}.self_attn.{proj}.{leaf}"] = chunk
            elif part in _TEXT_PARTS:
                out[f"encoder.layers.{i}.{_TEXT_PARTS[part]}.{leaf}"] = arr
            else:
                raise checkpoint.CheckpointError(f"text tensor {full!r} has no mapping")
        elif name in ("embedding_table", "token_embedding.weight"):
            out["embeddings.token_embedding.weight"] = arr
        elif name == "positional_embedding":
            out["embeddings.position_embedding.weight"] = arr
        elif name.startswith("ln_final."):
            out["final_layer_norm." + name.split(".")[-1]] = arr
        elif name in ("text_projection", "logit_scale", "attn_mask"):
            dropped.append(full)     # CLIP-score heads, unused for SD conditioning
        else:
            raise checkpoint.CheckpointError(f"text tensor {full!r} has no mapping")
    return out, dropped


def load_mindone(path: Path, unet, vae, text_net=None) -> list[str]:
    """Strictly load a mindone SD `.ckpt` into `unet`, `vae` and (if given) the CLIP text Cell `text_net`.

    Returns the names deliberately not loaded (the text tower when `text_net` is None, OpenCLIP's last
    block and heads otherwise).
    """
    tensors = read_mindone_ckpt(path)
    n_vae = len(vae.config.block_out_channels)
    unet_items, vae_items, skipped, unknown = [], [], [], []
    for name, arr in tensors.items():
        if name.startswith(UNET_PREFIX):
            key = ldm_unet_key(name[len(UNET_PREFIX):], unet.config)
            (unet_items if key else unknown).append((key or name, arr))
        elif name.startswith(VAE_PREFIX):
            key = ldm_vae_key(name[len(VAE_PREFIX):], n_vae)
            (vae_items if key else unknown).append((key or name, arr))
        elif name.startswith(TEXT_PREFIX):
            skipped.append(name)
        elif not name.startswith(("betas", "alphas", "sqrt_", "log_one", "posterior", "model_ema", "logvar")):
            unknown.append((name, arr))
    if unknown:
        raise checkpoint.CheckpointError(f"{path}: tensor(s) {[n for n, _ in unknown][:10]} have no mapping")
    checkpoint.assign_strict(unet, reshape_like(unet_items, unet), source=f"{path} (unet)")
    checkpoint.assign_strict(vae, reshape_like(vae_items, vae), source=f"{path} (vae)")
    if text_net is None or not skipped:
        return skipped
    layers = 1 + max(int(p.name.split(".")[2]) for p in text_net.get_parameters() if p.name.startswith("encoder.layers."))
    text, dropped = ldm_text_tensors({k: tensors[k] for k in skipped}, layers)
    checkpoint.assign_strict(text_net, text.items(), source=f"{path} (text encoder)")
    return dropped


# ------------------------------------------------------------------------------ diffusers folders
_LEGACY_VAE_ATTN = {"query": "to_q", "key": "to_k", "value": "to_v", "proj_attn": "to_out.0"}


def diffusers_key(name: str) -> str:
    """Our names are diffusers' own; only pre-0.14 VAE attention names (query/key/value/proj_attn) differ."""
    m = re.match(r"(.*\.attentions\.0\.)(query|key|value|proj_attn)\.(weight|bias)$", name)
    return f"{m[1]}{_LEGACY_VAE_ATTN[m[2]]}.{m[3]}" if m else name


def load_component(cell, directory: Path, stem: str = "diffusion_pytorch_model") -> None:
    """Strictly load a diffusers component folder into `cell` (dtype cast to the compute dtype)."""
    from pmg_models import runtime

    files = checkpoint.component_files(directory, stem)
    arrays = ((diffusers_key(n), a) for f in files for n, a in checkpoint.iter_safetensors(f, runtime.np_compute_dtype()))
    checkpoint.assign_strict(cell, reshape_like(arrays, cell), source=str(directory))


def load_unet(directory: Path):
    """A `UNet2DConditionModel` from a diffusers `unet/` folder (config.json + safetensors)."""
    from pmg_models.sd.unet import UNet2DConditionModel

    unet = UNet2DConditionModel(UNetConfig.from_json(Path(directory) / "config.json"))
    load_component(unet, directory)
    return unet


def load_vae(directory: Path):
    """An `AutoencoderKL` from a diffusers `vae/` folder."""
    from pmg_models.sd.vae import AutoencoderKL, VAEConfig

    vae = AutoencoderKL(VAEConfig.from_json(Path(directory) / "config.json"))
    load_component(vae, directory)
    return vae
