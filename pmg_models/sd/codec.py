"""A lossless pixel-unshuffle latent codec, usable in place of the VAE of an SD folder.

Small diffusion models (the miniature world's, ../shared/reference/miniworld.md §1.2) denoise
`pixel_unshuffle(image, f)` (3×32×32 → 12×16×16 for f = 2) with no VAE to train. The codec has the
interface the pipeline uses of a VAE (`config.block_out_channels` for the down-scale factor,
`config.scaling_factor`, `encode`, `decode`); on disk it is `vae/config.json` with
`_class_name: "PixelUnshuffleCodec"` and no weights, and `StableDiffusion.from_pretrained` loads it
from there. The channel order is torch's `pixel_unshuffle` (parity-tested).
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from mindspore import nn

CLASS_NAME = "PixelUnshuffleCodec"


@dataclass(frozen=True)
class CodecConfig:
    factor: int = 2
    in_channels: int = 3
    scaling_factor: float = 1.0

    @property
    def latent_channels(self) -> int:
        return self.in_channels * self.factor ** 2

    @property
    def block_out_channels(self) -> tuple:
        """One entry per halving, so the pipeline's `2 ** (len - 1)` is the down-scale factor (powers of 2)."""
        n = self.factor.bit_length()
        return tuple(self.latent_channels for _ in range(n))

    def to_dict(self) -> dict:
        return {"_class_name": CLASS_NAME, "factor": self.factor, "in_channels": self.in_channels,
                "latent_channels": self.latent_channels, "scaling_factor": self.scaling_factor,
                "block_out_channels": list(self.block_out_channels)}

    @classmethod
    def from_dict(cls, cfg: dict) -> "CodecConfig":
        if cfg.get("_class_name") != CLASS_NAME:
            raise ValueError(f"vae config is a {cfg.get('_class_name')!r}, not a {CLASS_NAME}")
        factor = int(cfg.get("factor", 2))
        if factor < 1 or factor & (factor - 1):
            raise ValueError(f"{CLASS_NAME}: factor must be a power of 2, got {factor}")
        return cls(factor, int(cfg.get("in_channels", 3)), float(cfg.get("scaling_factor", 1.0)))


class PixelUnshuffleCodec(nn.Cell):
    """encode: images (B, C, H, W) in [-1, 1] → (B, C·f², H/f, W/f), torch.pixel_unshuffle channel order."""

    def __init__(self, cfg: CodecConfig = CodecConfig()):
        super().__init__()
        self.config = cfg

    def encode(self, images):
        b, c, h, w = images.shape
        f = self.config.factor
        x = images.reshape(b, c, h // f, f, w // f, f).transpose(0, 1, 3, 5, 2, 4)
        return x.reshape(b, c * f * f, h // f, w // f)

    def decode(self, latents):
        b, c, h, w = latents.shape
        f = self.config.factor
        x = latents.reshape(b, c // (f * f), f, f, h, w).transpose(0, 1, 4, 2, 5, 3)
        return x.reshape(b, c // (f * f), h * f, w * f)

    def construct(self, latents):
        return self.decode(latents)


def encode_numpy(images, factor: int = 2):
    """uint8 (N, H, W, 3) → float32 latents (N, 3·f², H/f, W/f) in [-1, 1] (the same map as `encode`)."""
    x = np.asarray(images, np.float32).transpose(0, 3, 1, 2) / 127.5 - 1.0
    n, c, h, w = x.shape
    x = x.reshape(n, c, h // factor, factor, w // factor, factor).transpose(0, 1, 3, 5, 2, 4)
    return np.ascontiguousarray(x.reshape(n, c * factor * factor, h // factor, w // factor))


def is_codec_dir(directory) -> bool:
    path = Path(directory) / "config.json"
    return path.exists() and json.loads(path.read_text()).get("_class_name") == CLASS_NAME


def load_codec(directory) -> PixelUnshuffleCodec:
    return PixelUnshuffleCodec(CodecConfig.from_dict(json.loads((Path(directory) / "config.json").read_text())))

