"""The op layer: the few building blocks whose best form differs by device.

Default everywhere is the classic-op form verified on CPU (it runs on Ascend too). Ascend's fused
kernels are opt-in (PMG_FUSED_OPS=1) and fall back to the classic form if a kernel is missing. On CPU,
the norms and activations below run as native fused kernels (`pmg_models.kernels`) when they could be
built; each cell then holds it in `self.kernel` (None: classic form).
Parameter names follow Hugging Face / diffusers checkpoints (`weight`, `bias`), so no gamma/beta map.
"""
from __future__ import annotations

import math
import os

import numpy as np
import mindspore as ms
from mindspore import nn, ops, Parameter

from pmg_models import kernels, runtime

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
        self.kernel = _native("RMSNorm", _same_shape, _rms_norm_bprop)
        self.eps_tensor = ms.Tensor([eps], ms.float32)

    def construct(self, x):
        if self.kernel is not None:
            return self.kernel(x, self.weight, self.eps_tensor)
        dtype = x.dtype
        x = x.astype(ms.float32)
        x = x * ops.rsqrt(ops.mean(x * x, -1, keep_dims=True) + self.eps)
        return self.weight * x.astype(dtype)


class SwiGLU(nn.Cell):
    """silu(gate) · up, Llama's MLP activation; no parameters."""

    def __init__(self):
        super().__init__()
        self.kernel = _native("SwiGLU", _same_shape, _swiglu_bprop)

    def construct(self, gate, up):
        if self.kernel is not None:
            return self.kernel(gate, up)
        return gate * ops.sigmoid(gate) * up


class LayerNorm(nn.Cell):
    """LayerNorm over the last axis with HF parameter names (the functional ops.layer_norm has no CPU kernel)."""

    def __init__(self, dim: int, eps: float = 1e-5):
        super().__init__()
        self.weight = _ones(dim)
        self.bias = _zeros(dim)
        self.norm = ops.LayerNorm(-1, -1, eps)
        self.kernel = _native("LayerNorm", _same_shape, _layer_norm_bprop)
        self.eps = ms.Tensor([eps], ms.float32)

    def construct(self, x):
        if self.kernel is not None:
            return self.kernel(x, self.weight, self.bias, self.eps)
        return self.norm(x, self.weight, self.bias)[0]


class GroupNorm(nn.Cell):
    """GroupNorm on NCHW, optionally followed by SiLU (`silu=True`, the ResNet blocks' norm → SiLU pair).

    Native kernel: one pass per group for norm, affine and SiLU. Classic form: a LayerNorm over
    (B*G, C/G*H*W) rows plus the per-channel affine (oneDNN's LayerNorm does mean and variance in one
    fused pass; 2-3x faster here than reductions and than nn.GroupNorm, whose CPU kernel is ~45x torch's).
    """

    def __init__(self, num_groups: int, num_channels: int, eps: float = 1e-5, affine: bool = True,
                 silu: bool = False):
        super().__init__()
        self.num_groups = num_groups
        self.silu = silu
        self.weight = _ones(num_channels)
        self.bias = _zeros(num_channels)
        self.layer_norm = ops.LayerNorm(-1, -1, eps)
        self.kernel = _native("GroupNormSiLU" if silu else "GroupNorm", _same_shape,
                              _group_norm_silu_bprop if silu else _group_norm_bprop)
        self.eps = ms.Tensor([eps], ms.float32)

    def construct(self, x):
        b, c, h, w = x.shape
        g = self.num_groups
        if self.kernel is not None:
            return self.kernel(x.reshape(b, g, c // g, h * w), self.weight, self.bias, self.eps).reshape(b, c, h, w)
        n = (c // g) * h * w
        y = self.layer_norm(x.reshape(b * g, n), ops.ones((n,), x.dtype), ops.zeros((n,), x.dtype))[0]
        y = y.reshape(b, c, h, w) * self.weight.reshape(1, c, 1, 1) + self.bias.reshape(1, c, 1, 1)
        return ops.silu(y) if self.silu else y


class _Unary(nn.Cell):
    """A parameter-free one-input op: the native kernel `name` when there is one, else `classic`."""

    def __init__(self, name: str, out_shape, bprop, classic):
        super().__init__()
        self.kernel = _native(name, out_shape, bprop)
        self.classic = classic

    def construct(self, x):
        return self.classic(x) if self.kernel is None else self.kernel(x)


class GEGLU(_Unary):
    """`h * gelu(gate)` for `[h | gate]` on the last axis (the exact, erf GELU)."""

    def __init__(self):
        super().__init__("GEGLU", _half_last, _geglu_bprop, _geglu)


class QuickGELU(_Unary):
    """x·sigmoid(1.702·x), OpenAI CLIP's activation."""

    def __init__(self):
        super().__init__("QuickGELU", _same_shape, _quick_gelu_bprop, quick_gelu)


class GELU(_Unary):
    """The exact (erf) GELU."""

    def __init__(self):
        super().__init__("GELU", _same_shape, _gelu_bprop, gelu_exact)


class GELUTanh(nn.Cell):
    def construct(self, x):
        return gelu_tanh(x)


class Upsample2x(_Unary):
    """Nearest-neighbour 2x upsampling of NCHW (each value becomes a 2x2 block)."""

    def __init__(self):
        super().__init__("Upsample2x", _double_hw, _upsample2x_bprop, _upsample2x)


def _geglu(x):
    h, gate = ops.chunk(x, 2, -1)
    return h * gelu_exact(gate)


def _upsample2x(x):
    h, w = x.shape[-2:]
    return ops.interpolate(x, size=(h * 2, w * 2), mode="nearest")


# --- native CPU kernels (pmg_models/kernels) and their gradients, written with classic ops ---

def _same_shape(x, *_):
    return x


def _half_last(x):
    return tuple(x[:-1]) + (x[-1] // 2,)


def _double_hw(x):
    return tuple(x[:-2]) + (2 * x[-2], 2 * x[-1])


def _native(name: str, out_shape, bprop):
    """The fused CPU kernel `name` as a Custom op, or None where the classic ops must run (see kernels)."""
    if runtime.is_ascend() or runtime.compute_dtype() != ms.float32:
        return None
    library = kernels.library()
    if library is None:
        return None
    return ops.Custom(f"{library}:{name}", out_shape=out_shape, out_dtype=lambda x, *_: x, func_type="aot",
                      bprop=bprop)


def _normalize_grad(dy, xhat, rstd, axes):
    """d(loss)/dx of xhat = (x - mean) * rstd over `axes`, given d(loss)/dxhat = dy."""
    return rstd * (dy - ops.mean(dy, axes, keep_dims=True) - xhat * ops.mean(dy * xhat, axes, keep_dims=True))


def _standardize(x, eps, axes):
    centered = x - ops.mean(x, axes, keep_dims=True)
    rstd = ops.rsqrt(ops.mean(centered * centered, axes, keep_dims=True) + eps)
    return centered * rstd, rstd


def _group_norm_backward(x, weight, bias, eps, dout, silu: bool):
    _, g, cg, _ = x.shape
    xhat, rstd = _standardize(x, eps, (2, 3))
    w = weight.reshape(1, g, cg, 1)
    dy = dout
    if silu:
        y = xhat * w + bias.reshape(1, g, cg, 1)
        s = ops.sigmoid(y)
        dy = dout * s * (1.0 + y * (1.0 - s))
    dw = (dy * xhat).sum((0, 3)).reshape(-1)
    db = dy.sum((0, 3)).reshape(-1)
    return _normalize_grad(dy * w, xhat, rstd, (2, 3)), dw, db, ops.zeros_like(eps)


def _group_norm_bprop(x, weight, bias, eps, out, dout):
    return _group_norm_backward(x, weight, bias, eps, dout, False)


def _group_norm_silu_bprop(x, weight, bias, eps, out, dout):
    return _group_norm_backward(x, weight, bias, eps, dout, True)


def _rms_norm_bprop(x, weight, eps, out, dout):
    rstd = ops.rsqrt(ops.mean(x * x, -1, keep_dims=True) + eps)
    xhat = x * rstd
    d = x.shape[-1]
    dw = (dout * xhat).reshape(-1, d).sum(0)
    g = dout * weight
    return rstd * (g - xhat * ops.mean(g * xhat, -1, keep_dims=True)), dw, ops.zeros_like(eps)


def _swiglu_bprop(gate, up, out, dout):
    s = ops.sigmoid(gate)
    return dout * up * s * (1.0 + gate * (1.0 - s)), dout * gate * s


def _layer_norm_bprop(x, weight, bias, eps, out, dout):
    xhat, rstd = _standardize(x, eps, -1)
    d = x.shape[-1]
    dw = (dout * xhat).reshape(-1, d).sum(0)
    db = dout.reshape(-1, d).sum(0)
    return _normalize_grad(dout * weight, xhat, rstd, -1), dw, db, ops.zeros_like(eps)


def _quick_gelu_bprop(x, out, dout):
    s = ops.sigmoid(1.702 * x)
    return (dout * (s + 1.702 * x * s * (1.0 - s)),)


def _gelu_bprop(x, out, dout):
    return (dout * _gelu_slope(x),)


def _gelu_slope(x):
    """d/dx of x·Φ(x) = Φ(x) + x·φ(x)."""
    return _normal_cdf(x) + x * ops.exp(-0.5 * x * x) * 0.3989422804014327  # 1/sqrt(2*pi)


def _upsample2x_bprop(x, out, dout):
    b, c, h, w = x.shape
    return (dout.reshape(b, c, h, 2, w, 2).sum((3, 5)),)


def _geglu_bprop(x, out, dout):
    h, gate = ops.chunk(x, 2, -1)
    return (ops.cat((dout * gate * _normal_cdf(gate), dout * h * _gelu_slope(gate)), -1),)


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
    return ops.relu(x) - ax * _half_erfc(ax * 0.7071067811865476)


def _half_erfc(z):
    """½·erfc(z) for z ≥ 0 (A&S 7.1.26)."""
    t = 1.0 / (1.0 + _AS_P * z)
    a1, a2, a3, a4, a5 = _AS_A
    return (0.5 * t) * (a1 + t * (a2 + t * (a3 + t * (a4 + t * a5)))) * ops.exp(-(z * z))


def _normal_cdf(x):
    """Φ(x), the standard normal CDF."""
    tail = _half_erfc(ops.abs(x) * 0.7071067811865476)
    return ops.where(x >= 0, 1.0 - tail, tail)


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
