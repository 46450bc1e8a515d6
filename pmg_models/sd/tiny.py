"""A tiny random Stable Diffusion in the diffusers folder layout, written with NumPy + safetensors only.

The folder (model_index.json, unet/, vae/, text_encoder/, tokenizer/, scheduler/) loads in diffusers'
`StableDiffusionPipeline.from_pretrained` as well as in ours, so tests and demos need no download.
Parameter names and shapes come from our own Cells, which carry diffusers' names.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from pmg_models.checkpoint import save_safetensors

DIFFUSERS_VERSION = "0.30.0"
TEXT_WIDTH = 32

# SD 2.x flavour (v-prediction, linear projection, per-block heads, "!" padding) and SD 1.x flavour
# (epsilon, conv projection, one head count, eos padding); both 64x64 images from 32x32 latents.
UNET = {
    "sd2": dict(block_out_channels=[32, 64], layers_per_block=1, attention_head_dim=[2, 4],
                use_linear_projection=True, upcast_attention=True,
                down_block_types=["CrossAttnDownBlock2D", "DownBlock2D"], up_block_types=["UpBlock2D", "CrossAttnUpBlock2D"]),
    "sd1": dict(block_out_channels=[32, 64], layers_per_block=1, attention_head_dim=4, use_linear_projection=False,
                down_block_types=["CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
                up_block_types=["CrossAttnUpBlock2D", "CrossAttnUpBlock2D"]),
}
SCHEDULER = {
    "sd2": dict(_class_name="DDIMScheduler", prediction_type="v_prediction", set_alpha_to_one=False, steps_offset=1,
                clip_sample=False, timestep_spacing="leading"),
    "sd1": dict(_class_name="DDIMScheduler", prediction_type="epsilon", set_alpha_to_one=False, steps_offset=1,
                clip_sample=False, timestep_spacing="leading"),
}


def unet_config(variant: str = "sd2", pooled_text: bool = False) -> dict:
    pooled = {"class_embed_type": "projection", "projection_class_embeddings_input_dim": TEXT_WIDTH} if pooled_text else {}
    return {"_class_name": "UNet2DConditionModel", "_diffusers_version": DIFFUSERS_VERSION, "sample_size": 32,
            "in_channels": 4, "out_channels": 4, "cross_attention_dim": TEXT_WIDTH, "norm_num_groups": 32,
            "flip_sin_to_cos": True, "freq_shift": 0, "act_fn": "silu", **UNET[variant], **pooled}


def vae_config() -> dict:
    return {"_class_name": "AutoencoderKL", "_diffusers_version": DIFFUSERS_VERSION, "in_channels": 3,
            "out_channels": 3, "block_out_channels": [32, 64], "layers_per_block": 1, "latent_channels": 4,
            "norm_num_groups": 32, "sample_size": 64, "scaling_factor": 0.18215, "act_fn": "silu",
            "down_block_types": ["DownEncoderBlock2D"] * 2, "up_block_types": ["UpDecoderBlock2D"] * 2}


def scheduler_config(variant: str = "sd2") -> dict:
    return {"_diffusers_version": DIFFUSERS_VERSION, "num_train_timesteps": 1000, "beta_start": 0.00085,
            "beta_end": 0.012, "beta_schedule": "scaled_linear", **SCHEDULER[variant]}


def random_weights(shapes: dict[str, tuple], seed: int) -> dict[str, np.ndarray]:
    """Fan-in scaled normal weights, norms near identity, small biases: activations stay O(1)."""
    rng = np.random.default_rng(seed)
    out = {}
    for name in sorted(shapes):
        shape = tuple(shapes[name])
        if len(shape) > 1:
            fan_in = int(np.prod(shape[1:]))
            arr = rng.standard_normal(shape) / np.sqrt(fan_in)
        elif "norm" in name and name.endswith("weight"):
            arr = 1.0 + 0.1 * rng.standard_normal(shape)
        else:
            arr = 0.05 * rng.standard_normal(shape)
        out[name] = arr.astype(np.float32)
    return out


def _shapes(cell) -> dict[str, tuple]:
    return {p.name: tuple(p.shape) for p in cell.get_parameters()}


def _write_component(directory: Path, config: dict, tensors: dict | None) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "config.json").write_text(json.dumps(config, indent=2))
    if tensors is not None:
        save_safetensors(directory / "diffusion_pytorch_model.safetensors", tensors, metadata={"format": "pt"})


def init_tiny(directory: Path, seed: int = 0, variant: str = "sd2", pooled_text: bool = False) -> Path:
    """Write a tiny random SD folder ('sd2': v-prediction, linear proj; 'sd1': epsilon, conv proj);
    `pooled_text` adds diffusers' class_embed_type="projection" fed by the pooled text."""
    from pmg_models.clip_tiny import write_tiny_text_encoder
    from pmg_models.clip_tokenizer import write_tiny_tokenizer
    from pmg_models.sd.unet import UNet2DConditionModel, UNetConfig
    from pmg_models.sd.vae import AutoencoderKL, VAEConfig

    if variant not in UNET:
        raise ValueError(f"tiny SD variant {variant!r}; choose one of {sorted(UNET)}")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    ucfg, vcfg = unet_config(variant, pooled_text), vae_config()
    unet_shapes = _shapes(UNet2DConditionModel(UNetConfig.from_dict(ucfg)))
    vae_shapes = _shapes(AutoencoderKL(VAEConfig.from_dict(vcfg)))
    _write_component(directory / "unet", ucfg, random_weights(unet_shapes, seed))
    _write_component(directory / "vae", vcfg, random_weights(vae_shapes, seed + 1))
    write_tiny_tokenizer(directory / "tokenizer", pad_token="!" if variant == "sd2" else "<|endoftext|>")
    write_tiny_text_encoder(directory / "text_encoder", seed=seed + 2, hidden_size=TEXT_WIDTH, layers=2,
                            hidden_act="gelu" if variant == "sd2" else "quick_gelu",
                            tokenizer_dir=directory / "tokenizer")
    (directory / "scheduler").mkdir(exist_ok=True)
    (directory / "scheduler" / "scheduler_config.json").write_text(json.dumps(scheduler_config(variant), indent=2))
    index = {"_class_name": "StableDiffusionPipeline", "_diffusers_version": DIFFUSERS_VERSION,
             "feature_extractor": [None, None], "safety_checker": [None, None], "requires_safety_checker": False,
             "image_encoder": [None, None], "scheduler": ["diffusers", scheduler_config(variant)["_class_name"]],
             "text_encoder": ["transformers", "CLIPTextModel"], "tokenizer": ["transformers", "CLIPTokenizer"],
             "unet": ["diffusers", "UNet2DConditionModel"], "vae": ["diffusers", "AutoencoderKL"]}
    (directory / "model_index.json").write_text(json.dumps(index, indent=2))
    return directory
