"""Stable Diffusion 1.x/2.x in MindSpore: UNet, VAE, NumPy schedulers and a batched pipeline.

`StableDiffusion.from_pretrained(dir)` (pipeline.py) loads a diffusers folder; `init_tiny(dir)` writes a
tiny random one. The text encoder and tokenizer come from `pmg_models.clip`.
"""
from pathlib import Path

from pmg_models.sd.tiny import init_tiny

__all__ = ["init_tiny", "Path"]
