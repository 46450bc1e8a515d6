"""The Stable Diffusion autoencoder: diffusers' `AutoencoderKL` (encoder, decoder, quant convs) in MindSpore.

KL-regularised autoencoder of latent diffusion (Rombach et al., 2022); layout and parameter names follow
huggingface/diffusers `autoencoder_kl.py` / `vae.py`, so the diffusers safetensors load 1:1.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from mindspore import nn

from pmg_models import ops as P
from pmg_models.sd.unet import Downsample2D, ResnetBlock2D, Upsample2D

_FIXED = {"act_fn": "silu", "shift_factor": None, "latents_mean": None, "latents_std": None,
          "use_quant_conv": True, "use_post_quant_conv": True}
_EPS = 1e-6  # diffusers builds every VAE norm with eps 1e-6


@dataclass(frozen=True)
class VAEConfig:
    in_channels: int = 3                      # image channels
    out_channels: int = 3
    latent_channels: int = 4
    block_out_channels: tuple = (128, 256, 512, 512)
    layers_per_block: int = 2                 # encoder resnets per block (decoder has one more)
    norm_num_groups: int = 32
    sample_size: int = 512                    # image side the VAE was trained at
    scaling_factor: float = 0.18215           # latents are multiplied by this before the UNet sees them
    mid_block_add_attention: bool = True

    @classmethod
    def from_dict(cls, cfg: dict) -> "VAEConfig":
        """Read a diffusers vae/config.json dict field by field; unsupported options raise ValueError."""
        for key, allowed in _FIXED.items():
            if key in cfg and cfg[key] != allowed:
                raise ValueError(f"VAE config: {key}={cfg[key]!r} is not supported (only {allowed!r})")
        n = len(cfg["block_out_channels"])
        for key, kind in (("down_block_types", "DownEncoderBlock2D"), ("up_block_types", "UpDecoderBlock2D")):
            blocks = tuple(cfg.get(key, (kind,) * n))
            if blocks != (kind,) * n:
                raise ValueError(f"VAE config: {key}={blocks} is not supported (only {kind} x {n})")
        return cls(
            in_channels=int(cfg.get("in_channels", 3)), out_channels=int(cfg.get("out_channels", 3)),
            latent_channels=int(cfg.get("latent_channels", 4)), block_out_channels=tuple(cfg["block_out_channels"]),
            layers_per_block=int(cfg.get("layers_per_block", 1)), norm_num_groups=int(cfg.get("norm_num_groups", 32)),
            sample_size=int(cfg.get("sample_size") or 512), scaling_factor=float(cfg.get("scaling_factor", 0.18215)),
            mid_block_add_attention=bool(cfg.get("mid_block_add_attention", True)))

    @classmethod
    def from_json(cls, path: Path) -> "VAEConfig":
        return cls.from_dict(json.loads(Path(path).read_text()))


class SpatialAttention(nn.Cell):
    """Single-head self-attention over H*W positions with a GroupNorm in front and a residual."""

    def __init__(self, channels: int, groups: int):
        super().__init__()
        self.group_norm = P.GroupNorm(groups, channels, _EPS)
        self.to_q = P.Linear(channels, channels)
        self.to_k = P.Linear(channels, channels)
        self.to_v = P.Linear(channels, channels)
        self.to_out = nn.CellList([P.Linear(channels, channels)])
        self.attend = P.MultiHeadAttention(1)
        self.to_tokens = P.PlanesToTokens()   # projections read the planes and write them back in place
        self.to_planes = P.TokensToPlanes()

    def construct(self, x):
        n = self.group_norm(x)
        q, k, v = (self.to_tokens(n, proj.weight, proj.bias) for proj in (self.to_q, self.to_k, self.to_v))
        out = self.to_out[0]
        return self.to_planes(self.attend(q, k, v), out.weight, out.bias, x)


class MidBlock2D(nn.Cell):
    def __init__(self, channels: int, groups: int, attention: bool):
        super().__init__()
        self.resnets = nn.CellList([ResnetBlock2D(channels, channels, None, groups, _EPS) for _ in range(2)])
        self.has_attn = attention
        if attention:
            self.attentions = nn.CellList([SpatialAttention(channels, groups)])

    def construct(self, x):
        x = self.resnets[0](x)
        if self.has_attn:
            x = self.attentions[0](x)
        return self.resnets[1](x)


class EncoderBlock(nn.Cell):
    def __init__(self, cin: int, cout: int, layers: int, groups: int, down: bool):
        super().__init__()
        self.resnets = nn.CellList([ResnetBlock2D(cin if j == 0 else cout, cout, None, groups, _EPS)
                                    for j in range(layers)])
        self.has_down = down
        if down:
            self.downsamplers = nn.CellList([Downsample2D(cout, padding=0)])

    def construct(self, x):
        for resnet in self.resnets:
            x = resnet(x)
        return self.downsamplers[0](x) if self.has_down else x


class DecoderBlock(nn.Cell):
    def __init__(self, cin: int, cout: int, layers: int, groups: int, up: bool):
        super().__init__()
        self.resnets = nn.CellList([ResnetBlock2D(cin if j == 0 else cout, cout, None, groups, _EPS)
                                    for j in range(layers)])
        self.has_up = up
        if up:
            self.upsamplers = nn.CellList([Upsample2D(cout)])

    def construct(self, x):
        for resnet in self.resnets:
            x = resnet(x)
        return self.upsamplers[0](x) if self.has_up else x


class Encoder(nn.Cell):
    def __init__(self, cfg: VAEConfig):
        super().__init__()
        boc, g, n = cfg.block_out_channels, cfg.norm_num_groups, len(cfg.block_out_channels)
        self.conv_in = P.Conv2d(cfg.in_channels, boc[0], 3, padding=1)
        self.down_blocks = nn.CellList([EncoderBlock(boc[max(i - 1, 0)], boc[i], cfg.layers_per_block, g, i < n - 1)
                                        for i in range(n)])
        self.mid_block = MidBlock2D(boc[-1], g, cfg.mid_block_add_attention)
        self.conv_norm_out = P.GroupNorm(g, boc[-1], _EPS, silu=True)
        self.conv_out = P.Conv2d(boc[-1], 2 * cfg.latent_channels, 3, padding=1)

    def construct(self, x):
        x = self.conv_in(x)
        for block in self.down_blocks:
            x = block(x)
        x = self.mid_block(x)
        return self.conv_out(self.conv_norm_out(x))


class Decoder(nn.Cell):
    def __init__(self, cfg: VAEConfig):
        super().__init__()
        rev, g, n = cfg.block_out_channels[::-1], cfg.norm_num_groups, len(cfg.block_out_channels)
        self.conv_in = P.Conv2d(cfg.latent_channels, rev[0], 3, padding=1)
        self.mid_block = MidBlock2D(rev[0], g, cfg.mid_block_add_attention)
        self.up_blocks = nn.CellList([DecoderBlock(rev[max(i - 1, 0)], rev[i], cfg.layers_per_block + 1, g, i < n - 1)
                                      for i in range(n)])
        self.conv_norm_out = P.GroupNorm(g, rev[-1], _EPS, silu=True)
        self.conv_out = P.Conv2d(rev[-1], cfg.out_channels, 3, padding=1)

    def construct(self, z):
        x = self.mid_block(self.conv_in(z))
        for block in self.up_blocks:
            x = block(x)
        return self.conv_out(self.conv_norm_out(x))


class AutoencoderKL(nn.Cell):
    """`encode(images in [-1, 1]) -> posterior mean` and `decode(latents) -> images`; unscaled latents."""

    def __init__(self, cfg: VAEConfig):
        super().__init__()
        self.config = cfg
        self.encoder = Encoder(cfg)
        self.decoder = Decoder(cfg)
        self.quant_conv = P.Conv2d(2 * cfg.latent_channels, 2 * cfg.latent_channels, 1)
        self.post_quant_conv = P.Conv2d(cfg.latent_channels, cfg.latent_channels, 1)

    def encode_moments(self, images):
        """(B, 2*latent, h, w): the posterior's mean and log-variance, concatenated as diffusers does."""
        return self.quant_conv(self.encoder(images))

    def encode(self, images):
        """The posterior mean (diffusers' `latent_dist.mode()`); multiply by scaling_factor for the UNet."""
        return self.encode_moments(images)[:, :self.config.latent_channels]

    def decode(self, latents):
        return self.decoder(self.post_quant_conv(latents))

    def construct(self, latents):
        return self.decode(latents)
