"""Stable Diffusion 1.x/2.x in MindSpore: UNet, VAE, NumPy schedulers and a batched pipeline.

`pmg_models.sd.pipeline.StableDiffusion.from_pretrained(dir)` loads a diffusers folder (or UNet/VAE
weights from a mindone `.ckpt`); `init_tiny(dir)` writes a tiny random one. The text encoder and
tokenizer come from `pmg_models.clip`.
"""
from pmg_models.sd.tiny import init_tiny

__all__ = ["init_tiny"]
