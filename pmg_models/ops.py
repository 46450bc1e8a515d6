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
        self.kernel = _native("RMSNorm", _same_shape, _rms_grads, _rms_bprop)
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
        self.kernel = _native("SwiGLU", _same_shape, _pair_grads, _pair_bprop)

    def construct(self, gate, up):
        if self.kernel is not None:
            return self.kernel(gate, up)
        return gate * ops.sigmoid(gate) * up


class Rope(nn.Cell):
    """Rotary position embedding in HF's rotate-half form: x·cos + [-x2, x1]·sin for x (B,T,H,D) and
    cos/sin (B,T,1,D). The native kernel gives the classic form's bytes in one pass instead of seven."""

    def __init__(self):
        super().__init__()
        self.kernel = _kernel("Rope", _same_shape, bprop=_rope_bprop)

    def construct(self, x, cos, sin):
        if self.kernel is not None:
            return self.kernel(x, cos, sin)
        return rotate_half(x, cos, sin)


def rotate_half(x, cos, sin):
    """The classic form (also Ascend's): seven ops."""
    half = x.shape[-1] // 2
    return x * cos + ops.concat([-x[..., half:], x[..., :half]], -1) * sin


def _rope_bprop(x, cos, sin, out, dout):
    # dx = dy·cos + [u2, -u1] for u = dy·sin (the transpose of the rotation); positions have no gradient
    half = dout.shape[-1] // 2
    u = dout * sin
    return dout * cos + ops.concat([u[..., half:], -u[..., :half]], -1), ops.zeros_like(cos), ops.zeros_like(sin)


class LayerNorm(nn.Cell):
    """LayerNorm over the last axis with HF parameter names (the functional ops.layer_norm has no CPU kernel)."""

    def __init__(self, dim: int, eps: float = 1e-5):
        super().__init__()
        self.weight = _ones(dim)
        self.bias = _zeros(dim)
        self.norm = ops.LayerNorm(-1, -1, eps)
        self.kernel = _native("LayerNorm", _same_shape, _norm_grads, _norm_bprop)
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
        self.kernel = _native("GroupNormSiLU" if silu else "GroupNorm", _same_shape, _norm_grads, _norm_bprop)
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

    def __init__(self, name: str, out_shape, classic):
        super().__init__()
        self.kernel = _native(name, out_shape, _unary_grads, _unary_bprop)
        self.classic = classic

    def construct(self, x):
        return self.classic(x) if self.kernel is None else self.kernel(x)


class GEGLU(_Unary):
    """`h * gelu(gate)` for `[h | gate]` on the last axis (the exact, erf GELU)."""

    def __init__(self):
        super().__init__("GEGLU", _half_last, _geglu)


class QuickGELU(_Unary):
    """x·sigmoid(1.702·x), OpenAI CLIP's activation."""

    def __init__(self):
        super().__init__("QuickGELU", _same_shape, quick_gelu)


class GELU(_Unary):
    """The exact (erf) GELU."""

    def __init__(self):
        super().__init__("GELU", _same_shape, gelu_exact)


class Softmax(nn.Cell):
    """Softmax over the last axis: MindSpore's kernel forward; the gradient y·(dy − Σ y·dy) natively
    where possible (MindSpore's own expands into four ops, 120 ms of a 2 s UNet training step)."""

    def __init__(self):
        super().__init__()
        self.grad = _gradient_kernel("Softmax", _unary_grads)

    def construct(self, x):
        return ops.softmax(x, -1)

    def bprop(self, x, out, dout):
        if self.grad is None:
            return (out * (dout - (out * dout).sum(-1, keepdims=True)),)
        return (self.grad(out, dout),)


class GELUTanh(nn.Cell):
    def construct(self, x):
        return gelu_tanh(x)


class Upsample2x(_Unary):
    """Nearest-neighbour 2x upsampling of NCHW (each value becomes a 2x2 block)."""

    def __init__(self):
        super().__init__("Upsample2x", _double_hw, _upsample2x)


def _geglu(x):
    h, gate = ops.chunk(x, 2, -1)
    return h * gelu_exact(gate)


def _upsample2x(x):
    h, w = x.shape[-2:]
    return ops.interpolate(x, size=(h * 2, w * 2), mode="nearest")


# --- native CPU kernels (pmg_models/kernels): each forward `Name` has a gradient kernel `NameGrad`
# taking the forward's inputs and the upstream gradient (SoftmaxGrad: the forward's output instead,
# its forward being MindSpore's own).

def _same_shape(x, *_):
    return x


def _half_last(x):
    return tuple(x[:-1]) + (x[-1] // 2,)


def _double_hw(x):
    return tuple(x[:-2]) + (2 * x[-2], 2 * x[-1])


def _kernel(name: str, out_shape, out_dtype=None, bprop=None):
    """The CPU kernel `name` of the native library as a Custom op, or None where the classic ops must run."""
    if runtime.is_ascend() or runtime.compute_dtype() != ms.float32:
        return None
    library = kernels.library()
    if library is None:
        return None
    return ops.Custom(f"{library}:{name}", out_shape=out_shape, out_dtype=out_dtype or _same_shape,
                      func_type="aot", bprop=bprop)


def _gradient_kernel(name: str, grad_shapes):
    """Kernel `name`Grad: the forward's inputs and the upstream gradient in, `grad_shapes(*input shapes)` out."""
    return _kernel(f"{name}Grad", grad_shapes, grad_shapes)


def _native(name: str, out_shape, grad_shapes, bprop_from):
    """Kernel `name` with `bprop_from(its gradient kernel)` as bprop; None: use the classic form."""
    grad = _gradient_kernel(name, grad_shapes)
    return None if grad is None else _kernel(name, out_shape, bprop=bprop_from(grad))


def _norm_grads(x, weight, bias, eps, dy):
    return x, weight, bias


def _norm_bprop(grad):
    def bprop(x, weight, bias, eps, out, dout):
        dx, dw, db = grad(x, weight, bias, eps, dout)
        return dx, dw, db, ops.zeros_like(eps)
    return bprop


def _rms_grads(x, weight, eps, dy):
    return x, weight


def _rms_bprop(grad):
    def bprop(x, weight, eps, out, dout):
        dx, dw = grad(x, weight, eps, dout)
        return dx, dw, ops.zeros_like(eps)
    return bprop


def _pair_grads(a, b, dy):
    return a, b


def _pair_bprop(grad):
    def bprop(a, b, out, dout):
        return grad(a, b, dout)
    return bprop


def _unary_grads(x, dy):
    return x


def _unary_bprop(grad):
    def bprop(x, out, dout):
        return (grad(x, dout),)
    return bprop


MAX_SCORES = 1 << 26   # score elements per slice of the classic attention (256 MB in fp32)


class MultiHeadAttention(nn.Cell):
    """softmax(q kᵀ/√d) v for each of `heads` heads, no mask: q (B, Tq, heads·d), k/v (B, Tk, heads·d)
    → (B, Tq, heads·d), the layout the projections produce and consume.

    On CPU the native kernel reads each head in place and keeps a block of queries' scores in cache
    between the two products (the classic form transposed heads out and back and wrote the scores to
    memory twice); gradients are classic ops. The classic form takes queries in slices of at most
    MAX_SCORES scores: at 768 px (96×96 latents, T = 9216) one unsliced self-attention would hold 3.4 GB
    of scores per batch of 2.
    """

    def __init__(self, heads: int):
        super().__init__()
        self.heads = heads
        self.kernel = _kernel("Attention", _same_shape, bprop=_attention_bprop)
        self.shape = ms.Tensor(np.zeros(heads, np.float32))  # the kernel reads the head count from its shape
        self.softmax = Softmax()

    def construct(self, q, k, v):
        if self.kernel is not None:
            return self.kernel(q, k, v, self.shape)
        b, t, c = q.shape
        d = c // self.heads
        q, k, v = (_heads(x, self.heads) for x in (q * d ** -0.5, k, v))
        slices = -(-b * self.heads * t * k.shape[2] // MAX_SCORES)
        if slices <= 1:
            out = _attend(q, k, v, self.softmax)
        else:
            step = -(-t // slices)
            out = ops.cat([_attend(q[:, :, i:i + step], k, v, self.softmax) for i in range(0, t, step)], 2)
        return _merge(out)


def _heads(x, heads):
    b, t, c = x.shape
    return x.reshape(b, t, heads, c // heads).transpose(0, 2, 1, 3)  # (B, H, T, d)


def _merge(x):
    b, h, t, d = x.shape
    return x.transpose(0, 2, 1, 3).reshape(b, t, h * d)


def _attend(q, k, v, softmax):
    return ops.matmul(softmax(ops.BatchMatMul(transpose_b=True)(q, k)), v)


def _attention_bprop(q, k, v, shape, out, dout):
    heads = shape.shape[0]
    b, t, c = q.shape
    scale = (c // heads) ** -0.5
    q, k, v, dy = (_heads(x, heads) for x in (q * scale, k, v, dout))
    # the primitive: the functional ops.softmax failed to compile in soft-prompt training's compiled gradient
    p = ops.Softmax(-1)(ops.BatchMatMul(transpose_b=True)(q, k))
    dp = ops.BatchMatMul(transpose_b=True)(dy, v)
    ds = p * (dp - (dp * p).sum(-1, keepdims=True))
    dq = ops.matmul(ds, k) * scale
    dk = ops.BatchMatMul(transpose_a=True)(ds, q)
    dv = ops.BatchMatMul(transpose_a=True)(p, dy)
    return _merge(dq), _merge(dk), _merge(dv), ops.zeros_like(shape)


class CacheAttention(nn.Cell):
    """One decode step's attention over a static, slot-major KV cache: q (B, Hkv, R, D) (R query heads per
    kv head), k/v cache (S, B, Hkv, D), additive mask (B, S) → (B, Hkv, R, D), scale 1/√D.

    On CPU the native kernel reads only the slots the mask opens (the batched matmuls of the classic
    form read the whole cache, so a step cost more the larger the cache); `available` says which form runs.
    """

    def __init__(self):
        super().__init__()
        self.kernel = _kernel("CacheAttention", _same_shape)
        self.available = self.kernel is not None
        self.bmm_t = ops.BatchMatMul(transpose_b=True)
        self.bmm = ops.BatchMatMul()

    def construct(self, q, k, v, mask):
        if self.kernel is not None:
            return self.kernel(q, k, v, mask)
        b, g, r, d = q.shape
        k, v = k.transpose(1, 2, 0, 3), v.transpose(1, 2, 0, 3)
        scores = self.bmm_t(q, k) * (d ** -0.5) + mask.reshape(b, 1, 1, -1)
        return self.bmm(ops.softmax(scores, -1), v)


class CacheWrite(nn.Cell):
    """cache[slots] = x in place, for a slot-major cache Parameter (S, ...) and x (T, ...) with slots (T,)
    int32; returns a value to order later reads on (`ops.depend`).

    On CPU the native kernel copies the slots over threads, into the Parameter's own memory (marked as a
    memory side effect, as ScatterUpdate is); MindSpore's ScatterUpdate, the classic form, copied at
    about 3 GB/s (1.3 ms for a batch-8 prompt's 4 MB of keys).
    """

    def __init__(self):
        super().__init__()
        self.kernel = _kernel("CacheWrite", _token_shape)
        if self.kernel is not None:
            self.kernel.add_prim_attr("side_effect_mem", True)
        self.scatter = ops.ScatterUpdate()

    def construct(self, cache, slots, x):
        if self.kernel is not None:
            return self.kernel(cache, x, slots)
        return self.scatter(cache, slots, x)


def _token_shape(*_):
    return (1,)


class MaskedAttention(nn.Cell):
    """softmax(q kᵀ/√D + mask) v in the token-major layout the Llama KV cache is written in: q (Tq, B, H, D),
    k/v (Tk, B, G, D) with query head h reading kv head h // (H / G), additive mask (B, Tq, Tk) →
    (Tq, B, H, D). Inference only (a prompt's prefill).

    On CPU the native kernel reads the heads in place (no transposes), adds the mask in cache and
    multiplies only the keys a block of queries may see; the classic form transposes to (B, G, R·Tq, D)
    for batched matmuls.
    """

    def __init__(self):
        super().__init__()
        self.kernel = _kernel("MaskedAttention", _same_shape)
        self.bmm_t = ops.BatchMatMul(transpose_b=True)
        self.bmm = ops.BatchMatMul()
        self.softmax = Softmax()

    def construct(self, q, k, v, mask):
        if self.kernel is not None and q.shape[-1] % 16 == 0:  # the kernel's tiles are 16 lanes wide
            return self.kernel(q, k, v, mask)
        tq, b, h, d = q.shape
        tk, g = k.shape[0], k.shape[2]
        r = h // g
        q = q.reshape(tq, b, g, r, d).transpose(1, 2, 3, 0, 4).reshape(b, g, r * tq, d)
        k, v = k.transpose(1, 2, 0, 3), v.transpose(1, 2, 0, 3)
        scores = self.bmm_t(q, k).astype(ms.float32) * (d ** -0.5)  # softmax in fp32 (fp16 on Ascend)
        scores = scores.reshape(b, g, r, tq, tk) + mask.reshape(b, 1, 1, tq, tk)
        probs = self.softmax(scores).astype(v.dtype).reshape(b, g, r * tq, tk)
        out = self.bmm(probs, v).reshape(b, g, r, tq, d).transpose(3, 0, 1, 2, 4)
        return out.reshape(tq, b, h, d)


class MatMulT(nn.Cell):
    """x (M, I) · wᵀ for w (O, I), plus an optional bias (O) and residual (M, O).

    For 2 to `FEW_ROWS` rows (batched decode steps) the native kernel reads each weight row once and dots
    it with every row of x: BLAS packs w on each call, which costs more than the product itself at a few
    rows. One row stays with oneDNN's one-row path (26-33 GB/s from 4-12 MB weights against the kernel's
    18-27: its threads wake sooner) unless w has `HUGE` elements: an LM head's 131 MB came at 21 GB/s,
    32 with the kernel (6.7 ms against 3.6 in a prefill). The kernel's sums do not depend on M, so a
    row's result is the same in any such batch. With more rows and a bias, the native dense kernel writes
    bias (+ residual) into the output and has oneDNN's sgemm add the product to it: MindSpore's broadcast
    Add was a separate pass at 4-10x torch's cost. A bias-free product stays with MindSpore's MatMul
    (as fast as the sgemm split by rows, or faster, below ~2048 rows) unless w has `LARGE` elements or more
    (a Llama's projections): the native kernel then splits the sgemm by columns of w, 3-5 % faster, and
    below 192 rows (a prompt at batch 1) multiplies without packing w (AVX-512: 8-35 % faster). That form
    also takes such products from `MANY_FROM` + 1 rows on, few-row territory otherwise (a batch-32 decode
    step: 66-69 → 54-56 ms; at 16 rows it was slower); without AVX-512 the kernel runs them with the
    few-row tiles. A row's bytes do not depend on M within each of these forms.
    The choice is made at trace time from the static shape; gradients are the usual two matmuls.
    """

    FEW_ROWS = 32
    LARGE = 1 << 20  # weights from which a bias-free product over many rows runs natively
    HUGE = 1 << 24  # weights from which one row runs natively (an LM head)
    MANY_FROM = 16  # rows above which a bias-free product through LARGE weights runs as LinearMany

    def __init__(self):
        super().__init__()
        self.matmul = ops.MatMul(transpose_b=True)
        self.rows = _kernel("LinearRows", _rows_shape, bprop=_rows_bprop)
        self.rows_bias = _kernel("LinearRowsBias", _rows_shape, bprop=_rows_bias_bprop)
        self.dense = _kernel("Dense", _rows_shape, bprop=_rows_bias_bprop)
        self.dense_residual = _kernel("DenseResidual", _rows_shape, bprop=_dense_residual_bprop)
        self.many = _kernel("LinearMany", _rows_shape, bprop=_rows_bprop)

    def construct(self, x, w, bias=None, residual=None):
        if self.many is not None and bias is None and x.shape[0] > self.MANY_FROM and w.size >= self.LARGE:
            y = self.many(x, w)
            return y if residual is None else y + residual
        if self.rows is not None and (x.shape[0] > 1 or w.size >= self.HUGE) and x.shape[0] <= self.FEW_ROWS:
            y = self.rows(x, w) if bias is None else self.rows_bias(x, w, bias)
            return y if residual is None else y + residual
        if self.dense is not None and bias is not None and x.shape[0] > self.FEW_ROWS:
            return self.dense(x, w, bias) if residual is None else self.dense_residual(x, w, bias, residual)
        y = self.matmul(x, w)
        y = y if bias is None else y + bias
        return y if residual is None else y + residual


def _rows_shape(x, w, *_):
    return x[0], w[0]


def _linear_grads(x, w, dout):
    # MatMul's transpose flag, not dout.T: an explicit transpose copied dout first (+25 % per CLIP training step)
    return ops.matmul(dout, w), ops.MatMul(transpose_a=True)(dout, x)


def _rows_bprop(x, w, out, dout):
    return _linear_grads(x, w, dout)


def _rows_bias_bprop(x, w, bias, out, dout):
    return *_linear_grads(x, w, dout), dout.sum(0)


def _dense_residual_bprop(x, w, bias, residual, out, dout):
    return *_linear_grads(x, w, dout), dout.sum(0), dout


class PlanesToTokens(nn.Cell):
    """A 1x1 projection from NCHW planes to tokens: x (B, C, H, W), w (O, C), bias (O) -> (B, H*W, O).

    Native: the sgemm reads the planes transposed in place, so the layout change is not a pass of its
    own (the spatial transformers and the VAE attention moved every activation twice). Classic: a
    transpose, then the linear.
    """

    def __init__(self):
        super().__init__()
        self.kernel = _kernel("DenseToTokens", _to_tokens_shape, bprop=_to_tokens_bprop)
        self.matmul_t = MatMulT()

    def construct(self, x, w, bias):
        b, c, h, wd = x.shape
        x = x.reshape(b, c, h * wd)
        if self.kernel is not None:
            return self.kernel(x, w, bias)
        return self.matmul_t(x.transpose(0, 2, 1).reshape(-1, c), w, bias).reshape(b, h * wd, w.shape[0])


class TokensToPlanes(nn.Cell):
    """A 1x1 projection from tokens back to NCHW planes plus a residual: t (B, H*W, I), w (O, I), bias (O),
    residual (B, O, H, W) -> residual + projection, shaped like the residual.

    Native: bias and residual are written into the output, which the sgemm then adds the transposed
    product to. Classic: the linear, a transpose, an add.
    """

    def __init__(self):
        super().__init__()
        self.kernel = _kernel("DenseToPlanes", _to_planes_shape, bprop=_to_planes_bprop)
        self.matmul_t = MatMulT()

    def construct(self, t, w, bias, residual):
        b, o, h, wd = residual.shape
        if self.kernel is not None:
            return self.kernel(t, w, bias, residual.reshape(b, o, h * wd)).reshape(b, o, h, wd)
        y = self.matmul_t(t.reshape(-1, t.shape[-1]), w, bias).reshape(b, h, wd, o).transpose(0, 3, 1, 2)
        return y + residual


def _to_tokens_shape(x, w, *_):
    return x[0], x[2], w[0]


def _to_planes_shape(t, w, *_):
    return t[0], w[0], t[1]


def _to_tokens_bprop(x, w, bias, out, dout):
    b, c, n = x.shape
    d2 = dout.reshape(-1, dout.shape[-1])
    dxt, dw = _linear_grads(x.transpose(0, 2, 1).reshape(-1, c), w, d2)
    return dxt.reshape(b, n, c).transpose(0, 2, 1), dw, d2.sum(0)


def _to_planes_bprop(t, w, bias, residual, out, dout):
    b, n, i = t.shape
    d2 = dout.transpose(0, 2, 1).reshape(-1, dout.shape[1])
    dt, dw = _linear_grads(t.reshape(-1, i), w, d2)
    return dt.reshape(b, n, i), dw, d2.sum(0), dout


class Linear(nn.Dense):
    """A torch-style dense layer (`weight` (out, in), `bias`) on inputs of any rank; `residual` (the
    output's shape) is added to the result, inside the matmul kernel where there is one.

    Classic form: the bias is added by broadcasting (the gradient of nn.Dense's BiasAdd sums a
    (8192, 512) input column by column in 27 ms here, against 5 ms for the broadcast add's row reduction).
    `weight_init="zeros"` skips the random init where a checkpoint always follows (seconds at 170M).
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True, weight_init=None):
        super().__init__(in_features, out_features, has_bias=bias, weight_init=weight_init)
        self.matmul_t = MatMulT()

    def construct(self, x, residual=None):
        shape = x.shape
        if residual is not None:
            residual = residual.reshape(-1, residual.shape[-1])
        y = self.matmul_t(x.reshape(-1, shape[-1]), self.weight, self.bias if self.has_bias else None, residual)
        return y.reshape(shape[:-1] + (y.shape[-1],))


class Conv2d(nn.Conv2d):
    """torch-style Conv2d (explicit padding, bias on; MindSpore's defaults are pad_mode='same', no bias).

    On CPU it runs as the native im2col + sgemm kernels when they are available (`kernels.convolutions()`),
    which lets oneDNN use AVX-512 for every matmul; else MindSpore's own convolution. `shift` (B, O) is
    added per image and channel (the UNet's time embedding) and `residual` (the output's shape) to the
    result; the native kernels do both inside the convolution instead of as separate passes.
    """

    def __init__(self, cin: int, cout: int, kernel: int, stride: int = 1, padding: int = 0, bias: bool = True):
        pad = {"pad_mode": "pad", "padding": padding} if padding else {"pad_mode": "valid"}
        super().__init__(cin, cout, kernel, stride=stride, has_bias=bias, **pad)
        # one gradient kernel for both forms (with and without a residual)
        grad = _gradient_kernel("Conv2d", _conv_grads) if kernels.convolutions() else None
        self.native = None if grad is None else _kernel("Conv2d", _conv_shape, bprop=_conv_bprop(bias)(grad))
        self.native_residual = (None if grad is None else
                                _kernel("Conv2dResidual", _conv_shape, bprop=_conv_residual_bprop(grad)))
        # Stride and padding travel as the *shape* of a zero-filled tensor: MindSpore caches a Custom op's
        # shape function by name in eager mode, so it must read the geometry from its inputs' shapes.
        self.geom = ms.Tensor(np.zeros((stride, padding + 1), np.float32))
        self.no_bias = ms.Tensor(np.zeros(cout, np.float32))

    def construct(self, x, shift=None, residual=None):
        if self.native is None:
            y = super().construct(x)
            if shift is not None:
                y = y + shift.reshape(shift.shape[0], shift.shape[1], 1, 1)
            return y if residual is None else y + residual
        b = self.bias if self.has_bias else self.no_bias
        if shift is not None:
            b = b + shift  # (B, O): the kernel adds a bias per image
        if residual is None:
            return self.native(x, self.weight, b, self.geom)
        return self.native_residual(x, self.weight, b, self.geom, residual)


def _conv_shape(x, w, b, geom, *_):
    stride, padding = geom[0], geom[1] - 1
    return (x[0], w[0], (x[2] + 2 * padding - w[2]) // stride + 1, (x[3] + 2 * padding - w[3]) // stride + 1)


def _conv_grads(x, w, b, geom, dy):
    return x, w, b


def _conv_backward(grad, x, w, b, geom, dout):
    if b.ndim == 2:  # a bias per image: its gradient is per image too
        dx, dw, _ = grad(x, w, b[0], geom, dout)
        return dx, dw, dout.sum((2, 3))
    return grad(x, w, b, geom, dout)


def _conv_bprop(bias: bool):
    def bprop_from(grad):
        def bprop(x, w, b, geom, out, dout):
            dx, dw, db = _conv_backward(grad, x, w, b, geom, dout)
            return dx, dw, (db if bias else ops.zeros_like(b)), ops.zeros_like(geom)
        return bprop
    return bprop_from


def _conv_residual_bprop(grad):
    def bprop(x, w, b, geom, residual, out, dout):
        dx, dw, db = _conv_backward(grad, x, w, b, geom, dout)
        return dx, dw, db, ops.zeros_like(geom), dout
    return bprop


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


def gelu(x, approximate: bool = False):
    return gelu_tanh(x) if approximate else gelu_exact(x)


def gelu_tanh(x):
    return ops.gelu(x, approximate="tanh")


def quick_gelu(x):
    return x * ops.sigmoid(1.702 * x)


def silu(x):
    return x * ops.sigmoid(x)


def attention(q, k, v, mask=None, scale: float | None = None, softmax=None):
    """Scaled dot-product attention on (B, H, T, D) tensors; softmax in fp32.

    `mask` is additive and broadcastable to (B, H, Tq, Tk) (0 keep, large negative drop); `softmax` is
    the caller's `Softmax` cell (its gradient is native), else ops.softmax.
    """
    scale = scale if scale is not None else 1.0 / math.sqrt(q.shape[-1])
    dtype = q.dtype
    scores = ops.matmul(q, k.swapaxes(-1, -2)).astype(ms.float32) * scale
    if mask is not None:
        scores = scores + mask
    probs = ops.softmax(scores, -1) if softmax is None else softmax(scores)
    return ops.matmul(probs.astype(dtype), v)


def neg_inf(dtype=ms.float32) -> float:
    """A large negative number for additive masks that stays finite in fp16."""
    return -65504.0 if dtype == ms.float16 else -1e9
