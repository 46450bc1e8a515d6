"""The op layer: the few building blocks whose best form differs by device.

Default everywhere is the classic-op form verified on CPU (it runs on Ascend too). Ascend's fused
kernels are opt-in (PMG_FUSED_OPS=1) and fall back to the classic form if a kernel is missing.
Parameter names follow Hugging Face / diffusers checkpoints (`weight`, `bias`), so no gamma/beta map.
"""
from __future__ import annotations

import math
import os

import numpy as np
import mindspore as ms
from mindspore import nn, ops, Parameter

from pmg_models import runtime

_FUSED = runtime.is_ascend() and os.environ.get("PMG_FUSED_OPS", "0") == "1"


def _ones(n):
    return Parameter(ms.Tensor(np.ones(n, np.float32)), name="weight")


def _zeros(n, name="bias"):
    return Parameter(ms.Tensor(np.zeros(n, np.float32)), name=name)


class RMSNorm(nn.Cell):
    """x · rsqrt(mean(x²) + eps) · weight, computed in fp32 (ops.rms_norm has no CPU kernel)."""

    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.weight = _ones(dim)
        self.eps = eps

    def construct(self, x):
        dtype = x.dtype
        x = x.astype(ms.float32)
        x = x * ops.rsqrt(ops.mean(x * x, -1, keep_dims=True) + self.eps)
        return self.weight * x.astype(dtype)


class LayerNorm(nn.Cell):
    """LayerNorm over the last axis with HF parameter names (the functional ops.layer_norm has no CPU kernel)."""

    def __init__(self, dim: int, eps: float = 1e-5):
        super().__init__()
        self.weight = _ones(dim)
        self.bias = _zeros(dim)
        self.norm = ops.LayerNorm(-1, -1, eps)

    def construct(self, x):
        return self.norm(x, self.weight, self.bias)[0]


class GroupNorm(nn.Cell):
    """GroupNorm on NCHW built from reductions (nn.GroupNorm's CPU kernel is ~45x slower than torch's)."""

    def __init__(self, num_groups: int, num_channels: int, eps: float = 1e-5, affine: bool = True):
        super().__init__()
        self.num_groups = num_groups
        self.eps = eps
        self.weight = _ones(num_channels)
        self.bias = _zeros(num_channels)

    def construct(self, x):
        b, c, h, w = x.shape
        g = x.reshape(b, self.num_groups, -1)
        mean = ops.mean(g, -1, keep_dims=True)
        centered = g - mean
        var = ops.mean(centered * centered, -1, keep_dims=True)
        g = centered * ops.rsqrt(var + self.eps)
        x = g.reshape(b, c, h, w)
        return x * self.weight.reshape(1, c, 1, 1) + self.bias.reshape(1, c, 1, 1)


def Linear(in_features: int, out_features: int, bias: bool = True) -> nn.Dense:
    """A dense layer whose params are `weight` (out, in) and `bias`, as in torch."""
    return nn.Dense(in_features, out_features, has_bias=bias)


def Conv2d(cin: int, cout: int, kernel: int, stride: int = 1, padding: int = 0, bias: bool = True) -> nn.Conv2d:
    """torch-style Conv2d (explicit padding, bias on): MindSpore's defaults are pad_mode='same', no bias."""
    if padding:
        return nn.Conv2d(cin, cout, kernel, stride=stride, pad_mode="pad", padding=padding, has_bias=bias)
    return nn.Conv2d(cin, cout, kernel, stride=stride, pad_mode="valid", has_bias=bias)


# Abramowitz & Stegun 7.1.26: erfc(z) ≈ t·(a1 + t·(a2 + … + t·a5))·exp(−z²), t = 1/(1 + p·z), z ≥ 0,
# absolute error ≤ 1.5e-7 (fp32 rounding of erf itself is ~6e-8).
_AS_P = 0.3275911
_AS_A = (0.254829592, -0.284496736, 1.421413741, -1.453152027, 1.061405429)


def gelu_exact(x):
    """GELU in the erf form, x·Φ(x) (a named def: ms.jit rejects lambdas).

    MindSpore's CPU Erf kernel is scalar: 8.7 ms per million values against 3.4 ms for this polynomial
    (both within 1e-6 of torch's GELU over [-10, 10]).
    """
    if _FUSED:
        return ops.gelu(x, approximate="none")
    # x·Φ(x) = relu(x) − |x|·½erfc(|x|/√2): one formula for both signs, no select
    ax = ops.abs(x)
    z = ax * 0.7071067811865476
    t = 1.0 / (1.0 + _AS_P * z)
    a1, a2, a3, a4, a5 = _AS_A
    half_erfc = (0.5 * t) * (a1 + t * (a2 + t * (a3 + t * (a4 + t * a5)))) * ops.exp(-(z * z))
    return ops.relu(x) - ax * half_erfc


def gelu(x, approximate: bool = False):
    return gelu_tanh(x) if approximate else gelu_exact(x)


def gelu_tanh(x):
    return ops.gelu(x, approximate="tanh")


def quick_gelu(x):
    return x * ops.sigmoid(1.702 * x)


def silu(x):
    return x * ops.sigmoid(x)


def attention(q, k, v, mask=None, scale: float | None = None):
    """Scaled dot-product attention on (B, H, T, D) tensors; softmax in fp32.

    `mask` is additive and broadcastable to (B, H, Tq, Tk) (0 keep, large negative drop).
    """
    scale = scale if scale is not None else 1.0 / math.sqrt(q.shape[-1])
    dtype = q.dtype
    scores = ops.matmul(q, k.swapaxes(-1, -2)).astype(ms.float32) * scale
    if mask is not None:
        scores = scores + mask
    probs = ops.softmax(scores, -1).astype(dtype)
    return ops.matmul(probs, v)


def neg_inf(dtype=ms.float32) -> float:
    """A large negative number for additive masks that stays finite in fp16."""
    return -65504.0 if dtype == ms.float16 else -1e9
