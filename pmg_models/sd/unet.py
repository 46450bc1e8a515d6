"""The Stable Diffusion 1.x/2.x denoiser: diffusers' `UNet2DConditionModel` in MindSpore.

Latent diffusion (Rombach et al., 2022, arXiv 2112.10752); the layer layout and parameter names follow
huggingface/diffusers `unet_2d_condition.py`, so a diffusers `diffusion_pytorch_model.safetensors`
loads with an identity key map. Only what SD 1.x/2.x use is built; other config options raise.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import mindspore as ms
from mindspore import nn, ops

from pmg_models import ops as P

DOWN_BLOCKS = ("CrossAttnDownBlock2D", "DownBlock2D")
UP_BLOCKS = ("CrossAttnUpBlock2D", "UpBlock2D")
# Config keys that must keep these values: anything else is a model family we do not implement.
_FIXED = {
    "act_fn": "silu", "center_input_sample": False, "addition_embed_type": None,
    "encoder_hid_dim": None, "encoder_hid_dim_type": None, "num_attention_heads": None,
    "dual_cross_attention": False, "resnet_time_scale_shift": "default", "resnet_skip_time_act": False,
    "resnet_out_scale_factor": 1.0, "time_embedding_type": "positional", "time_embedding_dim": None,
    "time_embedding_act_fn": None, "timestep_post_act": None, "time_cond_proj_dim": None,
    "conv_in_kernel": 3, "conv_out_kernel": 3, "attention_type": "default", "class_embeddings_concat": False,
    "cross_attention_norm": None, "num_class_embeds": None, "addition_time_embed_dim": None,
    "reverse_transformer_layers_per_block": None,
    "mid_block_type": "UNetMidBlock2DCrossAttn",
}


def _per_block(value, n: int, name: str) -> tuple:
    """diffusers lets many fields be a scalar or one value per down block."""
    if isinstance(value, (list, tuple)):
        if len(value) != n:
            raise ValueError(f"UNet config: {name} has {len(value)} entries, expected {n} (one per down block)")
        return tuple(value)
    return (value,) * n


@dataclass(frozen=True)
class UNetConfig:
    in_channels: int = 4                      # latent channels in
    out_channels: int = 4                     # predicted noise / velocity channels
    sample_size: int = 64                     # latent side the model was trained at (image side / 8)
    down_block_types: tuple = ("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",)
    up_block_types: tuple = ("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3
    block_out_channels: tuple = (320, 640, 1280, 1280)
    layers_per_block: tuple = (2, 2, 2, 2)    # resnets per down block (up blocks have one more)
    transformer_layers_per_block: tuple = (1, 1, 1, 1)
    attention_heads: tuple = (8, 8, 8, 8)     # diffusers' `attention_head_dim` (historically misnamed: it is the head count)
    cross_attention_dim: tuple = (768, 768, 768, 768)  # text width D per block
    only_cross_attention: tuple = (False,) * 4          # attn1 also attends to the text
    use_linear_projection: bool = False       # SD 2.x: Linear proj_in/out; SD 1.x: 1x1 conv
    upcast_attention: bool = False            # fp32 scores (we always compute softmax in fp32)
    norm_num_groups: int = 32
    norm_eps: float = 1e-5
    flip_sin_to_cos: bool = True              # timestep embedding as [cos, sin]
    freq_shift: int = 0
    downsample_padding: int = 1
    mid_block_scale_factor: float = 1.0
    # "projection": a vector per image (e.g. the pooled text) through an MLP, added to the time embedding.
    class_embed_type: str | None = None
    projection_class_embeddings_input_dim: int | None = None

    @classmethod
    def from_dict(cls, cfg: dict) -> "UNetConfig":
        """Read a diffusers unet/config.json dict field by field; unsupported options raise ValueError."""
        for key, allowed in _FIXED.items():
            if key in cfg and cfg[key] != allowed:
                raise ValueError(f"UNet config: {key}={cfg[key]!r} is not supported (only {allowed!r})")
        down, up = tuple(cfg["down_block_types"]), tuple(cfg["up_block_types"])
        for kind in down:
            if kind not in DOWN_BLOCKS:
                raise ValueError(f"UNet config: down block {kind!r} is not supported; choose from {DOWN_BLOCKS}")
        for kind in up:
            if kind not in UP_BLOCKS:
                raise ValueError(f"UNet config: up block {kind!r} is not supported; choose from {UP_BLOCKS}")
        class_embed = cfg.get("class_embed_type")
        class_dim = cfg.get("projection_class_embeddings_input_dim")
        if class_embed not in (None, "projection"):
            raise ValueError(f"UNet config: class_embed_type={class_embed!r} is not supported (only None or 'projection')")
        if class_embed == "projection" and not class_dim:
            raise ValueError("UNet config: class_embed_type='projection' needs projection_class_embeddings_input_dim")
        n = len(down)
        tlpb = cfg.get("transformer_layers_per_block", 1)
        if isinstance(tlpb, (list, tuple)) and any(isinstance(t, (list, tuple)) for t in tlpb):
            raise ValueError("UNet config: nested transformer_layers_per_block (SDXL style) is not supported")
        return cls(
            in_channels=int(cfg.get("in_channels", 4)), out_channels=int(cfg.get("out_channels", 4)),
            sample_size=int(cfg.get("sample_size") or 64), down_block_types=down, up_block_types=up,
            block_out_channels=tuple(cfg["block_out_channels"]),
            layers_per_block=_per_block(cfg.get("layers_per_block", 2), n, "layers_per_block"),
            transformer_layers_per_block=_per_block(tlpb, n, "transformer_layers_per_block"),
            attention_heads=_per_block(cfg.get("attention_head_dim", 8), n, "attention_head_dim"),
            cross_attention_dim=_per_block(cfg.get("cross_attention_dim", 1280), n, "cross_attention_dim"),
            only_cross_attention=_per_block(cfg.get("only_cross_attention", False), n, "only_cross_attention"),
            use_linear_projection=bool(cfg.get("use_linear_projection", False)),
            upcast_attention=bool(cfg.get("upcast_attention", False)),
            norm_num_groups=int(cfg.get("norm_num_groups", 32)), norm_eps=float(cfg.get("norm_eps", 1e-5)),
            flip_sin_to_cos=bool(cfg.get("flip_sin_to_cos", True)), freq_shift=int(cfg.get("freq_shift", 0)),
            downsample_padding=int(cfg.get("downsample_padding", 1)),
            mid_block_scale_factor=float(cfg.get("mid_block_scale_factor", 1.0)),
            class_embed_type=class_embed,
            projection_class_embeddings_input_dim=int(class_dim) if class_embed else None,
        )

    @classmethod
    def from_json(cls, path: Path) -> "UNetConfig":
        return cls.from_dict(json.loads(Path(path).read_text()))


# ----------------------------------------------------------------------------------------- blocks
def silu(x):
    """One fused kernel (ops.silu) instead of x * sigmoid(x): one pass over the tensor instead of two."""
    return ops.silu(x)


class ResnetBlock2D(nn.Cell):
    """GroupNorm-SiLU-conv twice, plus the time embedding after the first conv (none in the VAE)."""

    def __init__(self, cin: int, cout: int, temb: int | None, groups: int, eps: float, scale: float = 1.0):
        super().__init__()
        self.norm1 = P.GroupNorm(groups, cin, eps, silu=True)
        self.conv1 = P.Conv2d(cin, cout, 3, padding=1)
        self.has_temb = temb is not None
        if self.has_temb:
            self.time_emb_proj = P.Linear(temb, cout)
        self.norm2 = P.GroupNorm(groups, cout, eps, silu=True)
        self.conv2 = P.Conv2d(cout, cout, 3, padding=1)
        self.has_shortcut = cin != cout
        if self.has_shortcut:
            self.conv_shortcut = P.Conv2d(cin, cout, 1)
        self.scale = scale

    def construct(self, x, temb=None):
        # the time embedding and the shortcut are added inside the convolutions (no separate passes)
        h = self.conv1(self.norm1(x), self.time_emb_proj(silu(temb)) if self.has_temb else None)
        out = self.conv2(self.norm2(h), None, self.conv_shortcut(x) if self.has_shortcut else x)
        return out / self.scale if self.scale != 1.0 else out


class Attention(nn.Cell):
    """Multi-head attention with diffusers names: to_q/to_k/to_v (bias optional), to_out.0."""

    def __init__(self, dim: int, heads: int, head_dim: int, context_dim: int | None = None, bias: bool = False):
        super().__init__()
        inner = heads * head_dim
        self.to_q = P.Linear(dim, inner, bias)
        self.to_k = P.Linear(context_dim or dim, inner, bias)
        self.to_v = P.Linear(context_dim or dim, inner, bias)
        self.to_out = nn.CellList([P.Linear(inner, dim)])
        self.attend = P.MultiHeadAttention(heads)

    def construct(self, x, context=None, residual=None):
        context = x if context is None else context
        return self.to_out[0](self.attend(self.to_q(x), self.to_k(context), self.to_v(context)), residual)


class GEGLU(nn.Cell):
    def __init__(self, dim: int, inner: int):
        super().__init__()
        self.proj = P.Linear(dim, inner * 2)
        self.act = P.GEGLU()

    def construct(self, x):
        return self.act(self.proj(x))


class _Identity(nn.Cell):
    """Stands in for the parameter-free Dropout at ff.net.1 so ff.net.2 keeps its checkpoint index."""

    def construct(self, x):
        return x


class FeedForward(nn.Cell):
    def __init__(self, dim: int, mult: int = 4):
        super().__init__()
        self.net = nn.CellList([GEGLU(dim, dim * mult), _Identity(), P.Linear(dim * mult, dim)])

    def construct(self, x, residual=None):
        return self.net[2](self.net[0](x), residual)


class BasicTransformerBlock(nn.Cell):
    """Self-attention, cross-attention to the text, GEGLU feed-forward; pre-LayerNorm, residual each."""

    def __init__(self, dim: int, heads: int, head_dim: int, context_dim: int, only_cross: bool):
        super().__init__()
        self.only_cross = only_cross
        self.norm1 = P.LayerNorm(dim)
        self.attn1 = Attention(dim, heads, head_dim, context_dim if only_cross else None)
        self.norm2 = P.LayerNorm(dim)
        self.attn2 = Attention(dim, heads, head_dim, context_dim)
        self.norm3 = P.LayerNorm(dim)
        self.ff = FeedForward(dim)

    def construct(self, x, context):
        # each residual is added inside the output projection's matmul (no separate pass)
        x = self.attn1(self.norm1(x), context if self.only_cross else None, x)
        x = self.attn2(self.norm2(x), context, x)
        return self.ff(self.norm3(x), x)


class Transformer2DModel(nn.Cell):
    """Spatial transformer: GroupNorm, project in, transformer blocks over H*W tokens, project out, residual."""

    def __init__(self, channels: int, heads: int, context_dim: int, layers: int, groups: int,
                 linear: bool, only_cross: bool):
        super().__init__()
        head_dim = channels // heads
        self.norm = P.GroupNorm(groups, channels, 1e-6)
        self.proj_in = P.Linear(channels, channels) if linear else P.Conv2d(channels, channels, 1)
        self.transformer_blocks = nn.CellList(
            [BasicTransformerBlock(channels, heads, head_dim, context_dim, only_cross) for _ in range(layers)])
        self.proj_out = P.Linear(channels, channels) if linear else P.Conv2d(channels, channels, 1)
        # both projections act per position, so a 1x1 conv and a linear are the same product: the layout
        # change between planes and tokens (and the residual) goes inside them
        self.to_tokens = P.PlanesToTokens()
        self.to_planes = P.TokensToPlanes()

    def construct(self, x, context):
        c = x.shape[1]
        w_in, w_out = self.proj_in.weight.reshape(c, c), self.proj_out.weight.reshape(c, c)
        t = self.to_tokens(self.norm(x), w_in, self.proj_in.bias)  # (B, HW, C)
        for block in self.transformer_blocks:
            t = block(t, context)
        return self.to_planes(t, w_out, self.proj_out.bias, x)


class Downsample2D(nn.Cell):
    """Stride-2 3x3 conv; padding 0 means the VAE's asymmetric (0, 1, 0, 1) pad first."""

    def __init__(self, channels: int, padding: int = 1):
        super().__init__()
        self.asym = padding == 0
        self.conv = P.Conv2d(channels, channels, 3, stride=2, padding=padding)

    def construct(self, x):
        if self.asym:
            x = ops.pad(x, (0, 1, 0, 1))
        return self.conv(x)


class Upsample2D(nn.Cell):
    """Nearest 2x upsampling then a 3x3 conv."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = P.Conv2d(channels, channels, 3, padding=1)
        self.upsample = P.Upsample2x()

    def construct(self, x):
        return self.conv(self.upsample(x))


class DownBlock(nn.Cell):
    """CrossAttnDownBlock2D (with attentions) or DownBlock2D; returns the output and its skip tensors."""

    def __init__(self, cfg: UNetConfig, i: int, cin: int, temb: int):
        super().__init__()
        cout, n = cfg.block_out_channels[i], cfg.layers_per_block[i]
        g, eps = cfg.norm_num_groups, cfg.norm_eps
        self.resnets = nn.CellList([ResnetBlock2D(cin if j == 0 else cout, cout, temb, g, eps) for j in range(n)])
        self.has_attn = cfg.down_block_types[i] == "CrossAttnDownBlock2D"
        if self.has_attn:
            self.attentions = nn.CellList([
                Transformer2DModel(cout, cfg.attention_heads[i], cfg.cross_attention_dim[i],
                                   cfg.transformer_layers_per_block[i], g, cfg.use_linear_projection,
                                   cfg.only_cross_attention[i]) for _ in range(n)])
        self.has_down = i < len(cfg.block_out_channels) - 1
        if self.has_down:
            self.downsamplers = nn.CellList([Downsample2D(cout, cfg.downsample_padding)])

    def construct(self, x, temb, context):
        skips = ()
        for j, resnet in enumerate(self.resnets):
            x = resnet(x, temb)
            if self.has_attn:
                x = self.attentions[j](x, context)
            skips = skips + (x,)
        if self.has_down:
            x = self.downsamplers[0](x)
            skips = skips + (x,)
        return x, skips


class UpBlock(nn.Cell):
    """CrossAttnUpBlock2D or UpBlock2D: each resnet eats one skip tensor (concatenated on channels)."""

    def __init__(self, cfg: UNetConfig, i: int, prev: int, temb: int):
        super().__init__()
        rev = cfg.block_out_channels[::-1]
        nblocks = len(rev)
        cout = rev[i]
        cin = rev[min(i + 1, nblocks - 1)]
        k = nblocks - 1 - i                      # the matching down block
        n = cfg.layers_per_block[k] + 1
        g, eps = cfg.norm_num_groups, cfg.norm_eps
        self.resnets = nn.CellList([
            ResnetBlock2D((prev if j == 0 else cout) + (cin if j == n - 1 else cout), cout, temb, g, eps)
            for j in range(n)])
        self.has_attn = cfg.up_block_types[i] == "CrossAttnUpBlock2D"
        if self.has_attn:
            self.attentions = nn.CellList([
                Transformer2DModel(cout, cfg.attention_heads[k], cfg.cross_attention_dim[k],
                                   cfg.transformer_layers_per_block[k], g, cfg.use_linear_projection,
                                   cfg.only_cross_attention[k]) for _ in range(n)])
        self.has_up = i < nblocks - 1
        if self.has_up:
            self.upsamplers = nn.CellList([Upsample2D(cout)])

    def construct(self, x, skips, temb, context):
        for j, resnet in enumerate(self.resnets):
            x = resnet(ops.cat((x, skips[-1 - j]), 1), temb)
            if self.has_attn:
                x = self.attentions[j](x, context)
        if self.has_up:
            x = self.upsamplers[0](x)
        return x


class MidBlock(nn.Cell):
    """UNetMidBlock2DCrossAttn: resnet, transformer, resnet."""

    def __init__(self, cfg: UNetConfig, temb: int):
        super().__init__()
        c, g, eps, s = cfg.block_out_channels[-1], cfg.norm_num_groups, cfg.norm_eps, cfg.mid_block_scale_factor
        self.resnets = nn.CellList([ResnetBlock2D(c, c, temb, g, eps, s), ResnetBlock2D(c, c, temb, g, eps, s)])
        self.attentions = nn.CellList([Transformer2DModel(
            c, cfg.attention_heads[-1], cfg.cross_attention_dim[-1], cfg.transformer_layers_per_block[-1], g,
            cfg.use_linear_projection, False)])

    def construct(self, x, temb, context):
        x = self.resnets[0](x, temb)
        x = self.attentions[0](x, context)
        return self.resnets[1](x, temb)


class TimestepEmbedding(nn.Cell):
    def __init__(self, cin: int, dim: int):
        super().__init__()
        self.linear_1 = P.Linear(cin, dim)
        self.linear_2 = P.Linear(dim, dim)

    def construct(self, x):
        return self.linear_2(silu(self.linear_1(x)))


# ------------------------------------------------------------------------------------------ model
class UNet2DConditionModel(nn.Cell):
    """eps/v prediction for latents (B, C, h, w) at timesteps (B,) given text states (B, T, D).

    With `class_embed_type="projection"` the model also takes `class_labels` (B, P), e.g. the pooled
    text, projected and added to the time embedding as diffusers does.
    """

    def __init__(self, cfg: UNetConfig):
        super().__init__()
        self.config = cfg
        boc = cfg.block_out_channels
        if len(cfg.up_block_types) != len(boc) or len(cfg.down_block_types) != len(boc):
            raise ValueError("UNet config: down/up block lists must have one entry per block_out_channels")
        c0, temb = boc[0], boc[0] * 4
        half = c0 // 2
        exponent = (-math.log(10000.0) * np.arange(half, dtype=np.float32)) / (half - cfg.freq_shift)
        self.freqs = ms.Tensor(np.exp(exponent).astype(np.float32)[None, :])   # (1, C0/2)
        self.conv_in = P.Conv2d(cfg.in_channels, c0, 3, padding=1)
        self.time_embedding = TimestepEmbedding(c0, temb)
        self.class_conditioned = cfg.class_embed_type == "projection"
        if self.class_conditioned:
            self.class_embedding = TimestepEmbedding(cfg.projection_class_embeddings_input_dim, temb)
        self.down_blocks = nn.CellList([DownBlock(cfg, i, boc[i - 1] if i else c0, temb) for i in range(len(boc))])
        self.mid_block = MidBlock(cfg, temb)
        rev = boc[::-1]
        self.up_blocks = nn.CellList([UpBlock(cfg, i, rev[i - 1] if i else rev[0], temb) for i in range(len(boc))])
        self.conv_norm_out = P.GroupNorm(cfg.norm_num_groups, c0, cfg.norm_eps, silu=True)
        self.conv_out = P.Conv2d(c0, cfg.out_channels, 3, padding=1)

    def time_features(self, timesteps):
        args = timesteps.astype(ms.float32)[:, None] * self.freqs     # (B, C0/2)
        sin, cos = ops.sin(args), ops.cos(args)
        return ops.cat((cos, sin) if self.config.flip_sin_to_cos else (sin, cos), -1)

    def construct(self, sample, timesteps, context, class_labels=None):
        """`class_labels` is used only by a class-conditioned UNet (and ignored otherwise)."""
        temb = self.time_embedding(self.time_features(timesteps).astype(sample.dtype))
        if self.class_conditioned:
            temb = temb + self.class_embedding(class_labels.astype(sample.dtype))
        x = self.conv_in(sample)
        skips = (x,)
        for block in self.down_blocks:
            x, res = block(x, temb, context)
            skips = skips + res
        x = self.mid_block(x, temb, context)
        for block in self.up_blocks:
            n = len(block.resnets)
            x = block(x, skips[len(skips) - n:], temb, context)
            skips = skips[:len(skips) - n]
        return self.conv_out(self.conv_norm_out(x))
