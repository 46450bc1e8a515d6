// Fused fp32 CPU kernels for MindSpore's "aot" Custom op (see pmg_models/kernels/__init__.py).
//
// Why: MindSpore's CPU LayerNorm and elementwise ops cost 0.1-0.5 ms each at UNet shapes and every
// elementwise op is a separate pass; these do a whole norm (+ affine, + SiLU) or a GEGLU in one pass.
// Its nearest-neighbour resize took 2-3 ms for a (2, 64, 32, 32) input, 35x torch's.
// No OpenMP: a team spinning between calls took the cores from MindSpore's own thread pool (the small
// UNet step went from 160 to 560 ms). The convolutions, matmuls and attentions, and Llama's RMSNorm, RoPE
// and SwiGLU on a prompt's sizes, split their work over a small pool whose threads sleep between calls.
// Signature (MindSpore aot): int f(nparam, params, ndims, shapes, dtypes, stream, extra); inputs first.
#include <dlfcn.h>
#ifdef __AVX512F__
#include <immintrin.h>
#endif
#include <sched.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <condition_variable>
#include <functional>
#include <mutex>
#include <thread>
#include <vector>

namespace {

int64_t numel(int ndim, const int64_t *shape, int upto) {
  int64_t n = 1;
  for (int i = 0; i < upto && i < ndim; ++i) n *= shape[i];
  return n;
}

// fn(r0, r1) over [0, rows) in contiguous parts, on the kernel pool (below) when the pass touches more
// than a few MB: one core could not stream a prefill's (1024, 2816) SwiGLU at the memory's speed (0.91 ms
// alone, 0.47 ms on two). Each row is computed whole by one thread, so results do not change.
void for_rows(int64_t rows, int64_t floats, const std::function<void(int64_t, int64_t)> &fn);

// Mean and 1/sqrt(var + eps) of n floats, two passes (centered variance: no cancellation).
inline void moments(const float *x, int64_t n, float eps, float *mean, float *rstd) {
  float s = 0.f;
  for (int64_t i = 0; i < n; ++i) s += x[i];
  const float m = s / static_cast<float>(n);
  float v = 0.f;
  for (int64_t i = 0; i < n; ++i) {
    const float d = x[i] - m;
    v += d * d;
  }
  *mean = m;
  *rstd = 1.f / std::sqrt(v / static_cast<float>(n) + eps);
}

#ifdef __AVX512F__
// e^x, 16 lanes: x = n ln2 + r, |r| <= ln2/2, e^r by Cephes expf's polynomial, 2^n through the exponent.
// Relative error <= 1.2e-7 (measured); 0 below -87 (no denormals).
inline __m512 exp16(__m512 x) {
  const __mmask16 live = _mm512_cmp_ps_mask(x, _mm512_set1_ps(-87.f), _CMP_GE_OQ);
  x = _mm512_max_ps(x, _mm512_set1_ps(-87.f));
  const __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)),
                                        _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693359375f), x);
  r = _mm512_fnmadd_ps(n, _mm512_set1_ps(-2.12194440e-4f), r);
  __m512 p = _mm512_set1_ps(1.9875691500e-4f);
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.3981999507e-3f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(8.3334519073e-3f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(4.1665795894e-2f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.6666665459e-1f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(5.0000001201e-1f));
  p = _mm512_fmadd_ps(p, _mm512_mul_ps(r, r), _mm512_add_ps(r, _mm512_set1_ps(1.f)));
  return _mm512_maskz_scalef_ps(live, p, n);
}

inline __mmask16 tail_mask(int64_t n) { return static_cast<__mmask16>((1u << n) - 1); }

#endif

// x: (..., D); weight, bias: (D); eps: (1); y like x.
int layer_norm(int nparam, void **params, int *ndims, int64_t **shapes) {
  if (nparam != 5) return 1;
  const float *x = static_cast<const float *>(params[0]);
  const float *w = static_cast<const float *>(params[1]);
  const float *b = static_cast<const float *>(params[2]);
  const float eps = static_cast<const float *>(params[3])[0];
  float *y = static_cast<float *>(params[4]);
  const int64_t D = shapes[0][ndims[0] - 1], rows = numel(ndims[0], shapes[0], ndims[0] - 1);
  for (int64_t r = 0; r < rows; ++r) {
    const float *xr = x + r * D;
    float *yr = y + r * D;
    float mean, rstd;
    moments(xr, D, eps, &mean, &rstd);
    for (int64_t i = 0; i < D; ++i) yr[i] = (xr[i] - mean) * rstd * w[i] + b[i];
  }
  return 0;
}

// x: (..., D); weight: (D); eps: (1); y = x / sqrt(mean(x^2) + eps) * weight.
int rms_norm(int nparam, void **params, int *ndims, int64_t **shapes) {
  if (nparam != 4) return 1;
  const float *x = static_cast<const float *>(params[0]);
  const float *w = static_cast<const float *>(params[1]);
  const float eps = static_cast<const float *>(params[2])[0];
  float *y = static_cast<float *>(params[3]);
  const int64_t D = shapes[0][ndims[0] - 1], rows = numel(ndims[0], shapes[0], ndims[0] - 1);
  for_rows(rows, rows * D, [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      const float *xr = x + r * D;
      float *yr = y + r * D;
      float ss = 0.f;
      for (int64_t i = 0; i < D; ++i) ss += xr[i] * xr[i];
      const float rstd = 1.f / std::sqrt(ss / static_cast<float>(D) + eps);
      for (int64_t i = 0; i < D; ++i) yr[i] = xr[i] * rstd * w[i];
    }
  });
  return 0;
}

// RoPE in HF's rotate-half form, y = x cos + [-x2, x1] sin, in one pass: MindSpore's form is seven
// (two slices, a negation, a concatenation, two products, a sum), about 7 % of a 170M Llama prefill.
// Each output is rounded as there — two products, then their sum, never an FMA — so both forms give the
// same bytes (hence no fast-math and no contraction here, in a named function: a lambda would not
// inherit the attribute). Rows [r0, r1) of x: (rows, H, D), cos, sin: (rows, D).
__attribute__((optimize("no-fast-math", "fp-contract=off")))
void rope_rows(const float *x, const float *c, const float *s, float *y, int64_t r0, int64_t r1, int64_t H,
               int64_t D) {
  const int64_t half = D / 2;
  for (int64_t bt = r0; bt < r1; ++bt) {
    const float *cr = c + bt * D, *sr = s + bt * D;
    for (int64_t h = 0; h < H; ++h) {
      const float *xr = x + (bt * H + h) * D;
      float *yr = y + (bt * H + h) * D;
      for (int64_t i = 0; i < half; ++i) {
        const float a = xr[i] * cr[i], b = -xr[i + half] * sr[i];
        yr[i] = a + b;
      }
      for (int64_t i = half; i < D; ++i) {
        const float a = xr[i] * cr[i], b = xr[i - half] * sr[i];
        yr[i] = a + b;
      }
    }
  }
}

// x: (B, T, H, D), cos, sin: (B, T, 1, D) -> y like x.
int rope(int nparam, void **params, int *ndims, int64_t **shapes) {
  if (nparam != 4 || ndims[0] != 4 || ndims[1] != 4 || ndims[2] != 4) return 1;
  const float *x = static_cast<const float *>(params[0]);
  const float *c = static_cast<const float *>(params[1]);
  const float *s = static_cast<const float *>(params[2]);
  float *y = static_cast<float *>(params[3]);
  const int64_t BT = shapes[0][0] * shapes[0][1], H = shapes[0][2], D = shapes[0][3];
  for (int a = 1; a <= 2; ++a) {  // cos and sin: (B, T, 1, D)
    if (shapes[a][0] * shapes[a][1] != BT || shapes[a][2] != 1 || shapes[a][3] != D) return 1;
  }
  if (D % 2 != 0) return 1;
  for_rows(BT, BT * H * D, [&](int64_t r0, int64_t r1) { rope_rows(x, c, s, y, r0, r1, H, D); });
  return 0;
}

// gate, up, y: same shape; y = silu(gate) * up.
int swiglu(int nparam, void **params, int *ndims, int64_t **shapes) {
  if (nparam != 3) return 1;
  const float *g = static_cast<const float *>(params[0]);
  const float *u = static_cast<const float *>(params[1]);
  float *y = static_cast<float *>(params[2]);
  const int64_t n = numel(ndims[0], shapes[0], ndims[0]);
  for_rows(n, n, [&](int64_t i0, int64_t i1) {
    for (int64_t i = i0; i < i1; ++i) y[i] = g[i] / (1.f + std::exp(-g[i])) * u[i];
  });
  return 0;
}

// x: (..., 2F) = [h | gate]; y: (..., F) = h * gelu(gate), the exact (erf) GELU.
int geglu(int nparam, void **params, int *ndims, int64_t **shapes) {
  if (nparam != 2) return 1;
  const float *x = static_cast<const float *>(params[0]);
  float *y = static_cast<float *>(params[1]);
  const int64_t F = shapes[0][ndims[0] - 1] / 2, rows = numel(ndims[0], shapes[0], ndims[0] - 1);
  for (int64_t r = 0; r < rows; ++r) {
    const float *h = x + r * 2 * F, *g = h + F;
    float *yr = y + r * F;
    for (int64_t i = 0; i < F; ++i) yr[i] = h[i] * 0.5f * g[i] * (1.f + std::erf(g[i] * 0.70710678118654752f));
  }
  return 0;
}

// y = x * sigmoid(1.702 x) (QUICK) or the exact GELU x * Phi(x), elementwise.
template <bool QUICK>
int gelu(int nparam, void **params, int *ndims, int64_t **shapes) {
  if (nparam != 2) return 1;
  const float *x = static_cast<const float *>(params[0]);
  float *y = static_cast<float *>(params[1]);
  const int64_t n = numel(ndims[0], shapes[0], ndims[0]);
  for (int64_t i = 0; i < n; ++i) {
    const float v = x[i];
    y[i] = QUICK ? v / (1.f + std::exp(-1.702f * v)) : 0.5f * v * (1.f + std::erf(v * 0.70710678118654752f));
  }
  return 0;
}

// x: (B, C, H, W); y: (B, C, 2H, 2W), nearest neighbour (each value to a 2x2 block).
int upsample2x(int nparam, void **params, int *ndims, int64_t **shapes) {
  if (nparam != 2 || ndims[0] != 4) return 1;
  const float *x = static_cast<const float *>(params[0]);
  float *y = static_cast<float *>(params[1]);
  const int64_t planes = shapes[0][0] * shapes[0][1], H = shapes[0][2], W = shapes[0][3];
  for (int64_t p = 0; p < planes; ++p) {
    for (int64_t i = 0; i < H; ++i) {
      const float *xr = x + (p * H + i) * W;
      float *y0 = y + (p * 2 * H + 2 * i) * 2 * W;
      for (int64_t j = 0; j < W; ++j) y0[2 * j] = y0[2 * j + 1] = xr[j];
      float *y1 = y0 + 2 * W;
      for (int64_t j = 0; j < 2 * W; ++j) y1[j] = y0[j];
    }
  }
  return 0;
}

// ---- Gradients. Inputs are the forward's inputs, then dy (the upstream gradient); outputs follow.
// Norms recompute their row statistics rather than saving them (one extra pass, no extra outputs).

inline float sigmoid(float v) { return 1.f / (1.f + std::exp(-v)); }

// d/dv of v * sigmoid(v).
inline float silu_slope(float v) {
  const float s = sigmoid(v);
  return s * (1.f + v * (1.f - s));
}

// d/dv of v * Phi(v) = Phi(v) + v * phi(v).
inline float gelu_slope(float v) {
  return 0.5f * (1.f + std::erf(v * 0.70710678118654752f)) + v * std::exp(-0.5f * v * v) * 0.3989422804014327f;
}

// Row gradient of xhat = (x - mean) * rstd given g = dL/dxhat (held in dx on entry): in place,
// dx = rstd * (g - mean(g) - xhat * mean(g * xhat)).
inline void normalize_grad(const float *x, float mean, float rstd, int64_t n, float sum_g, float sum_gx, float *dx) {
  const float mg = sum_g / static_cast<float>(n), mgx = sum_gx / static_cast<float>(n);
  for (int64_t i = 0; i < n; ++i) dx[i] = rstd * (dx[i] - mg - (x[i] - mean) * rstd * mgx);
}

// x: (B, G, Cg, HW), weight, bias: (G*Cg), eps, dy -> dx, dweight, dbias.
template <bool SILU>
int group_norm_grad(int nparam, void **params, int *ndims, int64_t **shapes) {
  if (nparam != 8 || ndims[0] != 4) return 1;
  const float *x = static_cast<const float *>(params[0]);
  const float *w = static_cast<const float *>(params[1]);
  const float *b = static_cast<const float *>(params[2]);
  const float eps = static_cast<const float *>(params[3])[0];
  const float *dy = static_cast<const float *>(params[4]);
  float *dx = static_cast<float *>(params[5]), *dw = static_cast<float *>(params[6]);
  float *db = static_cast<float *>(params[7]);
  const int64_t B = shapes[0][0], G = shapes[0][1], Cg = shapes[0][2], HW = shapes[0][3], n = Cg * HW;
  for (int64_t c = 0; c < G * Cg; ++c) dw[c] = db[c] = 0.f;
  for (int64_t r = 0; r < B * G; ++r) {
    const float *xr = x + r * n, *dyr = dy + r * n;
    float *dxr = dx + r * n;
    float mean, rstd;
    moments(xr, n, eps, &mean, &rstd);
    const int64_t c0 = (r % G) * Cg;
    float sum_g = 0.f, sum_gx = 0.f;
    for (int64_t c = 0; c < Cg; ++c) {
      const float wc = w[c0 + c], bc = b[c0 + c];
      float sw = 0.f, sb = 0.f;
      for (int64_t i = c * HW; i < (c + 1) * HW; ++i) {
        const float xh = (xr[i] - mean) * rstd;
        const float d = SILU ? dyr[i] * silu_slope(xh * wc + bc) : dyr[i];
        sw += d * xh;
        sb += d;
        dxr[i] = d * wc;
      }
      dw[c0 + c] += sw;
      db[c0 + c] += sb;
      sum_g += sb * wc;
      sum_gx += sw * wc;
    }
    normalize_grad(xr, mean, rstd, n, sum_g, sum_gx, dxr);
  }
  return 0;
}

// x: (..., D), weight, bias: (D), eps, dy -> dx, dweight, dbias.
int layer_norm_grad(int nparam, void **params, int *ndims, int64_t **shapes) {
  if (nparam != 8) return 1;
  const float *x = static_cast<const float *>(params[0]);
  const float *w = static_cast<const float *>(params[1]);
  const float eps = static_cast<const float *>(params[3])[0];
  const float *dy = static_cast<const float *>(params[4]);
  float *dx = static_cast<float *>(params[5]), *dw = static_cast<float *>(params[6]);
  float *db = static_cast<float *>(params[7]);
  const int64_t D = shapes[0][ndims[0] - 1], rows = numel(ndims[0], shapes[0], ndims[0] - 1);
  for (int64_t i = 0; i < D; ++i) dw[i] = db[i] = 0.f;
  for (int64_t r = 0; r < rows; ++r) {
    const float *xr = x + r * D, *dyr = dy + r * D;
    float *dxr = dx + r * D;
    float mean, rstd;
    moments(xr, D, eps, &mean, &rstd);
    float sum_g = 0.f, sum_gx = 0.f;
    for (int64_t i = 0; i < D; ++i) {
      const float xh = (xr[i] - mean) * rstd, g = dyr[i] * w[i];
      dw[i] += dyr[i] * xh;
      db[i] += dyr[i];
      dxr[i] = g;
      sum_g += g;
      sum_gx += g * xh;
    }
    normalize_grad(xr, mean, rstd, D, sum_g, sum_gx, dxr);
  }
  return 0;
}

// x: (..., D), weight: (D), eps, dy -> dx, dweight.
int rms_norm_grad(int nparam, void **params, int *ndims, int64_t **shapes) {
  if (nparam != 6) return 1;
  const float *x = static_cast<const float *>(params[0]);
  const float *w = static_cast<const float *>(params[1]);
  const float eps = static_cast<const float *>(params[2])[0];
  const float *dy = static_cast<const float *>(params[3]);
  float *dx = static_cast<float *>(params[4]), *dw = static_cast<float *>(params[5]);
  const int64_t D = shapes[0][ndims[0] - 1], rows = numel(ndims[0], shapes[0], ndims[0] - 1);
  for (int64_t i = 0; i < D; ++i) dw[i] = 0.f;
  for (int64_t r = 0; r < rows; ++r) {
    const float *xr = x + r * D, *dyr = dy + r * D;
    float *dxr = dx + r * D;
    float ss = 0.f;
    for (int64_t i = 0; i < D; ++i) ss += xr[i] * xr[i];
    const float rstd = 1.f / std::sqrt(ss / static_cast<float>(D) + eps);
    float sum_gx = 0.f;
    for (int64_t i = 0; i < D; ++i) {
      const float xh = xr[i] * rstd;
      dw[i] += dyr[i] * xh;
      sum_gx += dyr[i] * w[i] * xh;
    }
    const float m = sum_gx / static_cast<float>(D);
    for (int64_t i = 0; i < D; ++i) dxr[i] = rstd * (dyr[i] * w[i] - xr[i] * rstd * m);
  }
  return 0;
}

// gate, up, dy -> dgate, dup for y = silu(gate) * up.
int swiglu_grad(int nparam, void **params, int *ndims, int64_t **shapes) {
  if (nparam != 5) return 1;
  const float *g = static_cast<const float *>(params[0]);
  const float *u = static_cast<const float *>(params[1]);
  const float *dy = static_cast<const float *>(params[2]);
  float *dg = static_cast<float *>(params[3]), *du = static_cast<float *>(params[4]);
  const int64_t n = numel(ndims[0], shapes[0], ndims[0]);
  for (int64_t i = 0; i < n; ++i) {
    dg[i] = dy[i] * u[i] * silu_slope(g[i]);
    du[i] = dy[i] * g[i] * sigmoid(g[i]);
  }
  return 0;
}

// x: (..., 2F) = [h | gate], dy: (..., F) -> dx: (..., 2F).
int geglu_grad(int nparam, void **params, int *ndims, int64_t **shapes) {
  if (nparam != 3) return 1;
  const float *x = static_cast<const float *>(params[0]);
  const float *dy = static_cast<const float *>(params[1]);
  float *dx = static_cast<float *>(params[2]);
  const int64_t F = shapes[0][ndims[0] - 1] / 2, rows = numel(ndims[0], shapes[0], ndims[0] - 1);
  for (int64_t r = 0; r < rows; ++r) {
    const float *h = x + r * 2 * F, *g = h + F, *d = dy + r * F;
    float *dh = dx + r * 2 * F, *dg = dh + F;
    for (int64_t i = 0; i < F; ++i) {
      dh[i] = d[i] * 0.5f * g[i] * (1.f + std::erf(g[i] * 0.70710678118654752f));
      dg[i] = d[i] * h[i] * gelu_slope(g[i]);
    }
  }
  return 0;
}

// x, dy -> dx for QuickGELU (QUICK) or the exact GELU.
template <bool QUICK>
int gelu_grad(int nparam, void **params, int *ndims, int64_t **shapes) {
  if (nparam != 3) return 1;
  const float *x = static_cast<const float *>(params[0]);
  const float *dy = static_cast<const float *>(params[1]);
  float *dx = static_cast<float *>(params[2]);
  const int64_t n = numel(ndims[0], shapes[0], ndims[0]);
  for (int64_t i = 0; i < n; ++i) {
    const float v = x[i];
    if (QUICK) {
      const float s = sigmoid(1.702f * v);
      dx[i] = dy[i] * (s + 1.702f * v * s * (1.f - s));
    } else {
      dx[i] = dy[i] * gelu_slope(v);
    }
  }
  return 0;
}

// x: (B, C, H, W) (only its shape is used), dy: (B, C, 2H, 2W) -> dx: (B, C, H, W), the sum of each 2x2 block.
int upsample2x_grad(int nparam, void **params, int *ndims, int64_t **shapes) {
  if (nparam != 3 || ndims[0] != 4) return 1;
  const float *dy = static_cast<const float *>(params[1]);
  float *dx = static_cast<float *>(params[2]);
  const int64_t planes = shapes[0][0] * shapes[0][1], H = shapes[0][2], W = shapes[0][3];
  for (int64_t p = 0; p < planes; ++p) {
    for (int64_t i = 0; i < H; ++i) {
      const float *y0 = dy + (p * 2 * H + 2 * i) * 2 * W, *y1 = y0 + 2 * W;
      float *xr = dx + (p * H + i) * W;
      for (int64_t j = 0; j < W; ++j) xr[j] = y0[2 * j] + y0[2 * j + 1] + y1[2 * j] + y1[2 * j + 1];
    }
  }
  return 0;
}

// y = softmax(x) over the last axis, dy -> dx = y * (dy - sum(y * dy)).
int softmax_grad(int nparam, void **params, int *ndims, int64_t **shapes) {
  if (nparam != 3) return 1;
  const float *y = static_cast<const float *>(params[0]);
  const float *dy = static_cast<const float *>(params[1]);
  float *dx = static_cast<float *>(params[2]);
  const int64_t D = shapes[0][ndims[0] - 1], rows = numel(ndims[0], shapes[0], ndims[0] - 1);
  for (int64_t r = 0; r < rows; ++r) {
    const float *yr = y + r * D, *dyr = dy + r * D;
    float *dxr = dx + r * D;
    float s = 0.f;
    for (int64_t i = 0; i < D; ++i) s += yr[i] * dyr[i];
    for (int64_t i = 0; i < D; ++i) dxr[i] = yr[i] * (dyr[i] - s);
  }
  return 0;
}

// --- Convolution as im2col + sgemm. MindSpore hands oneDNN plain NCHW tensors, for which oneDNN's
// AVX-512 convolution is its reference loop (100-200x slower), so the process used to cap oneDNN at
// AVX2, which also halves every matmul on CPUs with two AVX-512 FMA units. These kernels call the
// sgemm of MindSpore's own oneDNN (dnnl_sgemm, row-major) on column chunks of at most ~4 MB, so no
// cap is needed. Threads: the calling one plus short-lived ones, images (or column chunks) split
// statically, so sums are in a fixed order and results are the same from run to run.

using sgemm_t = int (*)(char, char, int64_t, int64_t, int64_t, float, const float *, int64_t, const float *,
                        int64_t, float, float *, int64_t);

sgemm_t sgemm() {
  static const sgemm_t fn = [] {
    void *lib = dlopen("libdnnl.so.3", RTLD_NOW | RTLD_NOLOAD);
    return lib ? reinterpret_cast<sgemm_t>(dlsym(lib, "dnnl_sgemm")) : nullptr;
  }();
  return fn;
}

int n_threads() {
  cpu_set_t set;
  if (sched_getaffinity(0, sizeof(set), &set) == 0) return std::max(1, CPU_COUNT(&set));
  return std::max(1u, std::thread::hardware_concurrency());
}

// Threads for a job split into `parts` independent parts that is worth `wanted` threads: at least one,
// at most one per core and per part.
int threads_for(int64_t wanted, int64_t parts) {
  return static_cast<int>(std::clamp<int64_t>(wanted, 1, std::min<int64_t>(n_threads(), parts)));
}

// Workers that sleep on a condition variable between jobs (no spinning: spinning threads took the cores
// from MindSpore's own pool). One job at a time; a caller that finds the pool busy (MindSpore may run
// two kernels at once) runs every part itself. Parts are fixed by index, so results never depend on
// which thread ran them. A forked child gets a pool of its own.
class Pool {
 public:
  static Pool &get() {
    static Pool *pool = nullptr;
    static std::mutex m;
    std::lock_guard<std::mutex> lock(m);
    if (pool == nullptr || pool->pid_ != getpid()) pool = new Pool(n_threads() - 1);  // a parent's pool leaks
    return *pool;
  }

  // fn(t) for t in [0, n): t = 0 on the calling thread.
  void run(int n, const std::function<void(int)> &fn) {
    std::unique_lock<std::mutex> job(busy_, std::try_to_lock);
    if (!job.owns_lock() || n <= 1 || workers_ == 0) {
      for (int t = 0; t < n; ++t) fn(t);
      return;
    }
    const int helpers = std::min(n - 1, workers_);
    {
      std::lock_guard<std::mutex> lock(m_);
      fn_ = &fn, parts_ = n, next_ = 1, slots_ = pending_ = helpers, ++generation_;
    }
    wake_.notify_all();
    fn(0);
    for (int t; (t = claim()) < n;) fn(t);  // parts no helper has taken yet
    std::unique_lock<std::mutex> lock(m_);
    done_.wait(lock, [&] { return pending_ == 0; });
  }

 private:
  explicit Pool(int workers) : workers_(std::max(0, workers)), pid_(getpid()) {
    for (int i = 0; i < workers_; ++i) std::thread([this] { loop(); }).detach();
  }

  int claim() {
    std::lock_guard<std::mutex> lock(m_);
    return next_ < parts_ ? next_++ : parts_;
  }

  void loop() {
    int64_t seen = 0;
    for (;;) {
      {
        std::unique_lock<std::mutex> lock(m_);
        wake_.wait(lock, [&] { return generation_ != seen && slots_ > 0; });
        seen = generation_, --slots_;
      }
      for (int t; (t = claim()) < parts_;) (*fn_)(t);
      std::lock_guard<std::mutex> lock(m_);
      if (--pending_ == 0) done_.notify_one();
    }
  }

  std::mutex busy_, m_;
  std::condition_variable wake_, done_;
  const std::function<void(int)> *fn_ = nullptr;
  int parts_ = 0, next_ = 0, slots_ = 0, pending_ = 0;  // slots: helpers still to join this job
  int64_t generation_ = 0;
  const int workers_;
  const pid_t pid_;
};

template <class F>
void run_threads(int n, F fn) {
  Pool::get().run(n, std::function<void(int)>(fn));
}

void for_rows(int64_t rows, int64_t floats, const std::function<void(int64_t, int64_t)> &fn) {
  const int n = threads_for(floats >> 18, rows);
  if (n == 1) return fn(0, rows);
  run_threads(n, [&](int t) { fn(rows * t / n, rows * (t + 1) / n); });
}

// y = x * scale + shift over n floats, then SiLU (y / (1 + e^-y)) if asked: 16 lanes with exp16 where
// there is AVX-512 (GCC calls libmvec's 8-lane expf for the scalar loop: 2-3x torch's time per norm).
template <bool SILU>
inline void affine(const float *x, float *y, int64_t n, float scale, float shift) {
  int64_t i = 0;
#ifdef __AVX512F__
  const __m512 s = _mm512_set1_ps(scale), h = _mm512_set1_ps(shift), one = _mm512_set1_ps(1.f);
  for (; i + 16 <= n; i += 16) {
    __m512 v = _mm512_fmadd_ps(_mm512_loadu_ps(x + i), s, h);
    if (SILU) v = _mm512_div_ps(v, _mm512_add_ps(one, exp16(_mm512_sub_ps(_mm512_setzero_ps(), v))));
    _mm512_storeu_ps(y + i, v);
  }
#endif
  for (; i < n; ++i) {
    const float v = x[i] * scale + shift;
    y[i] = SILU ? v / (1.f + std::exp(-v)) : v;
  }
}

// x: (B, G, Cg, HW); weight, bias: (G*Cg); eps: (1); y like x. Groups split over the pool's threads
// when there are more than ~128K values (a group's result does not depend on the split).
template <bool SILU>
int group_norm(int nparam, void **params, int *ndims, int64_t **shapes) {
  if (nparam != 5 || ndims[0] != 4) return 1;
  const float *x = static_cast<const float *>(params[0]);
  const float *w = static_cast<const float *>(params[1]);
  const float *b = static_cast<const float *>(params[2]);
  const float eps = static_cast<const float *>(params[3])[0];
  float *y = static_cast<float *>(params[4]);
  const int64_t B = shapes[0][0], G = shapes[0][1], Cg = shapes[0][2], HW = shapes[0][3];
  const int64_t n = Cg * HW, rows = B * G;
  const int T = threads_for(rows * n >> 17, rows);
  run_threads(T, [&](int t) {
    for (int64_t r = rows * t / T; r < rows * (t + 1) / T; ++r) {
      const float *xr = x + r * n;
      float *yr = y + r * n;
      float mean, rstd;
      moments(xr, n, eps, &mean, &rstd);
      const int64_t c0 = (r % G) * Cg;
      for (int64_t c = 0; c < Cg; ++c) {
        const float scale = w[c0 + c] * rstd;
        affine<SILU>(xr + c * HW, yr + c * HW, HW, scale, b[c0 + c] - mean * scale);
      }
    }
  });
  return 0;
}

struct Geom {
  int64_t B, C, H, W, O, kh, kw, s, p, Ho, Wo, L, K, chunk;
  bool direct;  // 1x1, stride 1, no padding: the input is its own column matrix
};

// x: (B, C, H, W), w: (O, C, kh, kw), geom: any values, shape (stride, padding + 1).
// Column chunks are whole output rows (at least one), about 4 MB of columns.
Geom geometry(int64_t **shapes) {
  Geom g;
  g.B = shapes[0][0], g.C = shapes[0][1], g.H = shapes[0][2], g.W = shapes[0][3];
  g.O = shapes[1][0], g.kh = shapes[1][2], g.kw = shapes[1][3];
  g.s = shapes[3][0], g.p = shapes[3][1] - 1;
  g.Ho = (g.H + 2 * g.p - g.kh) / g.s + 1, g.Wo = (g.W + 2 * g.p - g.kw) / g.s + 1;
  g.L = g.Ho * g.Wo, g.K = g.C * g.kh * g.kw;
  g.direct = g.kh == 1 && g.kw == 1 && g.s == 1 && g.p == 0;
  const int64_t most = std::clamp<int64_t>(std::max<int64_t>(64, (int64_t{1} << 20) / g.K) / g.Wo, 1, g.Ho);
  int64_t parts = (g.Ho + most - 1) / most;
  // Equal chunks, and an even number of them once an image is worth two threads (>= 32 MFLOP): a
  // 56 + 8-row split left one core idle most of the call (a 32-channel 3x3 conv at 64x64 ran at a third
  // of torch's speed), and an image alone then still uses both cores. Depends on the image shape only,
  // so a row's result is the same in any batch.
  if (parts % 2 == 1 && g.Ho >= 2 && 2 * g.O * g.K * g.L >= (int64_t{1} << 25)) ++parts;
  g.chunk = (g.Ho + parts - 1) / parts * g.Wo;
  return g;
}

// Threads for a conv split into `items`: one more per ~16 MFLOP (starting a thread costs about as much as
// computing 16 MFLOP on small maps; measured on 8x8 to 32x32 maps), at most one per core.
int threads(const Geom &g, int64_t items) {
  const int64_t flops = 2 * g.B * g.O * g.K * g.L;
  return threads_for(flops >> 24, items);
}

// Output columns ow in [*lo, *hi) read input column ow*s - p + j inside [0, W).
inline void valid_cols(const Geom &g, int64_t j, int64_t *lo, int64_t *hi) {
  const int64_t a = g.p - j;  // ow*s >= a
  *lo = a <= 0 ? 0 : (a + g.s - 1) / g.s;
  *hi = std::min(g.Wo, (g.W - 1 + g.p - j) >= 0 ? (g.W - 1 + g.p - j) / g.s + 1 : 0);
  *lo = std::min(*lo, *hi);
}

// Calls f(offset in the chunk, offset of input column j - p of the row, whether that row is inside the
// image, ow lo, ow hi) for every (c, i, j) row of the column matrix of output rows [oh0, oh0 + n / Wo).
// Callers copy with plain loops, not memcpy calls: on 8x8 maps the calls cost more than the copies.
template <class F>
inline void column_rows(const Geom &g, int64_t oh0, int64_t n, F f) {
  for (int64_t c = 0; c < g.C; ++c) {
    for (int64_t i = 0; i < g.kh; ++i) {
      for (int64_t j = 0; j < g.kw; ++j) {
        int64_t lo, hi;
        valid_cols(g, j, &lo, &hi);
        const int64_t k = (c * g.kh + i) * g.kw + j;
        for (int64_t r = 0; r < n / g.Wo; ++r) {
          const int64_t ih = (oh0 + r) * g.s - g.p + i;
          const bool in = ih >= 0 && ih < g.H;
          f(k * n + r * g.Wo, (c * g.H + ih) * g.W - g.p + j, in, lo, hi);
        }
      }
    }
  }
}

// With stride 1 and Wo == W, a column-matrix row is the input plane shifted by (i - p, j - p): one
// contiguous copy per (c, i, j), then zeros for the rows outside the image and the wrapped columns.
void im2col_same(const Geom &g, const float *x, int64_t oh0, int64_t n, float *buf) {
  const int64_t R = n / g.Wo, HW = g.H * g.W;
  for (int64_t c = 0; c < g.C; ++c) {
    const float *plane = x + c * HW;
    for (int64_t i = 0; i < g.kh; ++i) {
      const int64_t r0 = std::clamp<int64_t>(g.p - i - oh0, 0, R), r1 = std::clamp<int64_t>(g.H + g.p - i - oh0, r0, R);
      for (int64_t j = 0; j < g.kw; ++j) {
        float *dst = buf + ((c * g.kh + i) * g.kw + j) * n;
        const int64_t off = (oh0 + i - g.p) * g.W + j - g.p;  // dst[q] = plane[q + off]
        const int64_t q0 = std::min(std::max(r0 * g.W, -off), n), q1 = std::max(std::min(r1 * g.W, HW - off), q0);
        std::fill(dst, dst + q0, 0.f);
        if (q1 > q0) std::memcpy(dst + q0, plane + q0 + off, sizeof(float) * (q1 - q0));
        std::fill(dst + q1, dst + n, 0.f);
        int64_t lo, hi;
        valid_cols(g, j, &lo, &hi);
        for (int64_t r = r0; r < r1; ++r) {
          float *row = dst + r * g.W;
          for (int64_t ow = 0; ow < lo; ++ow) row[ow] = 0.f;
          for (int64_t ow = hi; ow < g.W; ++ow) row[ow] = 0.f;
        }
      }
    }
  }
}

// Columns [l0, l0 + n) (whole output rows) of one image's (K, L) column matrix into buf (K, n).
void im2col(const Geom &g, const float *x, int64_t l0, int64_t n, float *buf) {
  if (g.s == 1 && g.Wo == g.W) return im2col_same(g, x, l0 / g.Wo, n, buf);
  column_rows(g, l0 / g.Wo, n, [&](int64_t at, int64_t from, bool in, int64_t lo, int64_t hi) {
    float *dst = buf + at;
    if (!in) {
      for (int64_t ow = 0; ow < g.Wo; ++ow) dst[ow] = 0.f;
      return;
    }
    const float *src = x + from;  // src[ow * s]
    for (int64_t ow = 0; ow < lo; ++ow) dst[ow] = 0.f;
    if (g.s == 1) {
      for (int64_t ow = lo; ow < hi; ++ow) dst[ow] = src[ow];
    } else {
      for (int64_t ow = lo; ow < hi; ++ow) dst[ow] = src[ow * g.s];
    }
    for (int64_t ow = hi; ow < g.Wo; ++ow) dst[ow] = 0.f;
  });
}

// The adjoint of im2col: adds buf (K, n) into the image gradient dx (C, H, W).
void col2im(const Geom &g, const float *buf, int64_t l0, int64_t n, float *dx) {
  column_rows(g, l0 / g.Wo, n, [&](int64_t at, int64_t from, bool in, int64_t lo, int64_t hi) {
    if (!in) return;
    const float *src = buf + at;
    float *dst = dx + from;
    if (g.s == 1) {
      for (int64_t ow = lo; ow < hi; ++ow) dst[ow] += src[ow];
    } else {
      for (int64_t ow = lo; ow < hi; ++ow) dst[ow * g.s] += src[ow];
    }
  });
}

// x, w, bias: (O) or (B, O) (a per-image shift folded in: the UNet's time embedding), geom[, residual:
// (B, O, Ho, Wo), copied into y first and the product added to it by the sgemm] -> y: (B, O, Ho, Wo).
int conv2d(int nparam, void **params, int *ndims, int64_t **shapes) {
  const sgemm_t gemm = sgemm();
  if ((nparam != 5 && nparam != 6) || ndims[0] != 4 || ndims[1] != 4 || gemm == nullptr) return 1;
  const float *x = static_cast<const float *>(params[0]);
  const float *w = static_cast<const float *>(params[1]);
  const float *b = static_cast<const float *>(params[2]);
  const float *res = nparam == 6 ? static_cast<const float *>(params[4]) : nullptr;
  const bool per_image = ndims[2] == 2;
  const Geom g = geometry(shapes);
  float *y = static_cast<float *>(params[nparam - 1]);
  const int64_t chunks = (g.L + g.chunk - 1) / g.chunk, items = g.B * chunks;
  const int T = threads(g, items);
  run_threads(T, [&](int t) {
    std::vector<float> buf(g.direct ? 0 : g.K * g.chunk);
    for (int64_t item = t; item < items; item += T) {
      const int64_t n = item / chunks, l0 = (item % chunks) * g.chunk, m = std::min(g.chunk, g.L - l0);
      const float *xn = x + n * g.C * g.H * g.W, *bn = b + (per_image ? n * g.O : 0);
      float *yn = y + n * g.O * g.L;
      // bias (+ residual) first; the sgemm adds the product to them (beta = 1): no pass of its own
      for (int64_t o = 0; o < g.O; ++o) {
        float *row = yn + o * g.L + l0;
        if (res) {
          const float *rr = res + n * g.O * g.L + o * g.L + l0;
          for (int64_t l = 0; l < m; ++l) row[l] = rr[l] + bn[o];
        } else {
          for (int64_t l = 0; l < m; ++l) row[l] = bn[o];
        }
      }
      if (g.direct) {
        gemm('N', 'N', g.O, m, g.K, 1.f, w, g.K, xn + l0, g.L, 1.f, yn + l0, g.L);
      } else {
        im2col(g, xn, l0, m, buf.data());
        gemm('N', 'N', g.O, m, g.K, 1.f, w, g.K, buf.data(), m, 1.f, yn + l0, g.L);
      }
    }
  });
  return 0;
}

// x, w, bias, geom, dy: (B, O, Ho, Wo) -> dx, dw, dbias. Images split over threads; each thread sums
// its own dw/dbias, added in thread order.
int conv2d_grad(int nparam, void **params, int *ndims, int64_t **shapes) {
  const sgemm_t gemm = sgemm();
  if (nparam != 8 || ndims[0] != 4 || ndims[1] != 4 || gemm == nullptr) return 1;
  const float *x = static_cast<const float *>(params[0]);
  const float *w = static_cast<const float *>(params[1]);
  const Geom g = geometry(shapes);
  const float *dy = static_cast<const float *>(params[4]);
  float *dx = static_cast<float *>(params[5]);
  float *dw = static_cast<float *>(params[6]);
  float *db = static_cast<float *>(params[7]);
  const int T = threads(g, g.B);
  std::vector<std::vector<float>> dws(T), dbs(T);
  run_threads(T, [&](int t) {
    std::vector<float> &dwt = dws[t], &dbt = dbs[t];
    dwt.assign(g.O * g.K, 0.f);
    dbt.assign(g.O, 0.f);
    std::vector<float> buf(g.direct ? 0 : g.K * g.chunk);
    for (int64_t n = t; n < g.B; n += T) {
      const float *xn = x + n * g.C * g.H * g.W, *dyn = dy + n * g.O * g.L;
      float *dxn = dx + n * g.C * g.H * g.W;
      if (!g.direct) std::memset(dxn, 0, sizeof(float) * g.C * g.H * g.W);
      for (int64_t l0 = 0; l0 < g.L; l0 += g.chunk) {
        const int64_t m = std::min(g.chunk, g.L - l0);
        if (g.direct) {
          gemm('T', 'N', g.K, m, g.O, 1.f, w, g.K, dyn + l0, g.L, 0.f, dxn + l0, g.L);
          gemm('N', 'T', g.O, g.K, m, 1.f, dyn + l0, g.L, xn + l0, g.L, 1.f, dwt.data(), g.K);
        } else {
          gemm('T', 'N', g.K, m, g.O, 1.f, w, g.K, dyn + l0, g.L, 0.f, buf.data(), m);
          col2im(g, buf.data(), l0, m, dxn);
          im2col(g, xn, l0, m, buf.data());
          gemm('N', 'T', g.O, g.K, m, 1.f, dyn + l0, g.L, buf.data(), m, 1.f, dwt.data(), g.K);
        }
        for (int64_t o = 0; o < g.O; ++o) {
          const float *row = dyn + o * g.L + l0;
          float sum = 0.f;
          for (int64_t l = 0; l < m; ++l) sum += row[l];
          dbt[o] += sum;
        }
      }
    }
  });
  std::copy(dws[0].begin(), dws[0].end(), dw);
  std::copy(dbs[0].begin(), dbs[0].end(), db);
  for (int t = 1; t < T; ++t) {
    for (int64_t i = 0; i < g.O * g.K; ++i) dw[i] += dws[t][i];
    for (int64_t o = 0; o < g.O; ++o) db[o] += dbs[t][o];
  }
  return 0;
}

// --- y = x W^T + b for few rows of x (decode steps): every weight row is read once, from memory, and
// dotted with all rows of x, which sit in L1. BLAS sgemm packs W for each call, which costs more than
// the product when x has a few rows (oneDNN and PyTorch got 6-12 GB/s of this machine's 26 here).
// Every y[r, o] is one vector accumulator over i, then a fixed pairwise reduction: the same sum in the
// same order whatever the tile, the number of rows or of threads. That needs IEEE-exact arithmetic
// (no reassociation), hence no fast-math in this part.
#pragma GCC push_options
#pragma GCC optimize("no-fast-math")

#ifdef __AVX512F__
// 4 x 6 accumulators + 6 weight vectors + 1 x vector of the 32 registers (1.3-1.9x the 4 x 4 tile's
// GFLOP/s at 8-32 rows); 1-3 rows stream the weights from memory, where 4 streams beat 6.
constexpr int kLanes = 16, kTileW = 6, kTileWFew = 4;
#else
constexpr int kLanes = 8, kTileW = 2, kTileWFew = 2;  // 4 x 2 + 2 + 1 of 16
#endif
typedef float vec __attribute__((vector_size(kLanes * sizeof(float))));

inline vec load(const float *p) {
  vec v;
  std::memcpy(&v, p, sizeof(v));
  return v;
}

inline float reduce(vec v) {
  float a[kLanes];
  std::memcpy(a, &v, sizeof(v));
  for (int n = kLanes / 2; n > 0; n /= 2) {
    for (int i = 0; i < n; ++i) a[i] += a[i + n];
  }
  return a[0];
}

// out[r][o] = x_r . w_o for TX rows of xs (row stride ld >= I rounded up to kLanes, zero-padded) and
// TW weight rows w[o] (their last I % kLanes columns go through a zero-padded copy). The tail step
// is outside the loop so the accumulators stay in registers.
template <int TX, int TW>
void linear_tile(const float *xs, int64_t ld, const float *const *w, int64_t I, float out[4][kTileW]) {
  vec acc[TX][TW] = {};
  const auto step = [&](const vec *wv, int64_t i) __attribute__((always_inline)) {
    for (int r = 0; r < TX; ++r) {
      const vec xv = load(xs + r * ld + i);
      for (int o = 0; o < TW; ++o) acc[r][o] += xv * wv[o];
    }
  };
  const int64_t body = I / kLanes * kLanes, PF = TW * I + 64;
  for (int64_t i = 0; i < body; i += kLanes) {
    vec wv[TW];
    for (int o = 0; o < TW; ++o) {
      __builtin_prefetch(w[o] + i + PF);  // the next tile's rows: this tile's are being read
      wv[o] = load(w[o] + i);
      // keep the weight vector in a register: GCC otherwise reloads it for every row of x (a memory
      // operand of each FMA), which made the AVX-512 loop load-bound at half the FMA rate. Not for 1-3
      // rows (the weights stream from memory; pinned was 20 % slower), nor with AVX2's 16 registers
      // (1.6x slower).
      if (kLanes == 16 && TW == kTileW) asm volatile("" : "+v"(wv[o]));
    }
    step(wv, i);
  }
  vec wv[TW];
  for (int o = 0; o < TW; ++o) {
    float t[kLanes] = {};
    std::memcpy(t, w[o] + body, sizeof(float) * (I - body));
    wv[o] = load(t);
  }
  step(wv, body);
  for (int r = 0; r < TX; ++r) {
    for (int o = 0; o < TW; ++o) out[r][o] = reduce(acc[r][o]);
  }
}

template <int TW>
void linear_rows_tiled(const float *x, const float *w, const float *b, float *y, int64_t M, int64_t I, int64_t O) {
  const int64_t ld = (I / kLanes + 1) * kLanes;
  std::vector<float> xs(M * ld, 0.f);  // x with zero-padded rows
  for (int64_t r = 0; r < M; ++r) std::memcpy(xs.data() + r * ld, x + r * I, sizeof(float) * I);
  const int64_t tiles = (O + TW - 1) / TW;
  // A second thread pays off from ~1 MB of weights (its start costs ~20-40 us).
  const int T = threads_for(O * I >> 18, tiles);
  run_threads(T, [&](int t) {
    float out[4][kTileW];
    const float *rows[TW];
    for (int64_t tile = tiles * t / T; tile < tiles * (t + 1) / T; ++tile) {
      const int64_t o0 = tile * TW, n = std::min<int64_t>(TW, O - o0);
      for (int o = 0; o < TW; ++o) rows[o] = w + std::min(o0 + o, O - 1) * I;  // repeats: ignored
      for (int64_t r0 = 0; r0 < M; r0 += 4) {
        const float *xr = xs.data() + r0 * ld;
        switch (std::min<int64_t>(4, M - r0)) {
          case 1: linear_tile<1, TW>(xr, ld, rows, I, out); break;
          case 2: linear_tile<2, TW>(xr, ld, rows, I, out); break;
          case 3: linear_tile<3, TW>(xr, ld, rows, I, out); break;
          default: linear_tile<4, TW>(xr, ld, rows, I, out);
        }
        for (int64_t r = r0; r < std::min(M, r0 + 4); ++r) {
          for (int64_t o = 0; o < n; ++o) y[r * O + o0 + o] = out[r - r0][o] + (b ? b[o0 + o] : 0.f);
        }
      }
    }
  });
}

// x: (M, I), w: (O, I)[, bias: (O)] -> y: (M, O).
int linear_rows(int nparam, void **params, int *ndims, int64_t **shapes) {
  if ((nparam != 3 && nparam != 4) || ndims[0] != 2 || ndims[1] != 2) return 1;
  const float *x = static_cast<const float *>(params[0]);
  const float *w = static_cast<const float *>(params[1]);
  const float *b = nparam == 4 ? static_cast<const float *>(params[2]) : nullptr;
  float *y = static_cast<float *>(params[nparam - 1]);
  const int64_t M = shapes[0][0], I = shapes[0][1], O = shapes[1][0];
  if (M < 4) {
    linear_rows_tiled<kTileWFew>(x, w, b, y, M, I, O);
  } else {
    linear_rows_tiled<kTileW>(x, w, b, y, M, I, O);
  }
  return 0;
}

#pragma GCC pop_options

// The decode attention (below) reads a kv head's slots B*G*D floats apart, too far for the hardware
// prefetcher: with one query head per kv head (MHA, e.g. Llama-2-7b) the reads are the bottleneck, and
// asking for the slot 16 ahead made batch 32's attention 20-27 % faster (stand-alone, 129 of 256 slots
// open). With several query heads per kv head (GQA) it cost up to 5 %, so it is left out there.
constexpr int64_t kAhead = 16;

inline void prefetch_row(const float *p, int64_t n) {
  const char *c = reinterpret_cast<const char *>(p);
  for (int64_t i = 0; i < n * 4; i += 64) __builtin_prefetch(c + i);
}

// --- One decode step's attention over a static, slot-major KV cache. Batched matmuls read every slot
// of the cache, so a step's cost grew with the cache's capacity; this reads only the slots the mask
// lets through, once, for all query heads of a kv head. A slot whose additive mask is <= -1e8 (the masks use -1e9) would get exp(...) == 0
// exactly, so skipping it changes nothing; a row with no open slot attends to all, like the softmax.
// q: (B, G, R, D) (R query heads per kv head), k, v: (S, B, G, D), mask: (B, S) -> y: (B, G, R, D).
int cache_attention(int nparam, void **params, int *ndims, int64_t **shapes) {
  if (nparam != 5 || ndims[0] != 4 || ndims[1] != 4 || ndims[3] != 2) return 1;
  const float *q = static_cast<const float *>(params[0]);
  const float *k = static_cast<const float *>(params[1]);
  const float *v = static_cast<const float *>(params[2]);
  const float *mask = static_cast<const float *>(params[3]);
  float *y = static_cast<float *>(params[4]);
  const int64_t B = shapes[0][0], G = shapes[0][1], R = shapes[0][2], D = shapes[0][3], S = shapes[1][0];
  const int64_t stride = B * G * D;  // from one slot to the next
  const float scale = 1.f / std::sqrt(static_cast<float>(D));
  const int64_t items = B * G;
  const int T = threads_for(items * S * D >> 16, items);
  run_threads(T, [&](int t) {
    std::vector<int64_t> open;
    std::vector<float> p;
    for (int64_t item = items * t / T; item < items * (t + 1) / T; ++item) {
      const int64_t b = item / G;
      const float *mb = mask + b * S;
      open.clear();
      for (int64_t s = 0; s < S; ++s) {
        if (mb[s] > -1e8f) open.push_back(s);
      }
      if (open.empty()) {
        for (int64_t s = 0; s < S; ++s) open.push_back(s);
      }
      const int64_t n = static_cast<int64_t>(open.size());
      p.resize(R * n);
      const float *kb = k + item * D, *vb = v + item * D;
      for (int64_t r = 0; r < R; ++r) {
        const float *qr = q + (item * R + r) * D;
        float *pr = p.data() + r * n, top = -INFINITY;
        for (int64_t j = 0; j < n; ++j) {
          const float *ks = kb + open[j] * stride;
          if (R == 1 && j + kAhead < n) prefetch_row(kb + open[j + kAhead] * stride, D);
          float dot = 0.f;
          for (int64_t d = 0; d < D; ++d) dot += qr[d] * ks[d];
          pr[j] = dot * scale + mb[open[j]];
          top = std::max(top, pr[j]);
        }
        float sum = 0.f;
        for (int64_t j = 0; j < n; ++j) sum += (pr[j] = std::exp(pr[j] - top));
        const float inv = 1.f / sum;
        float *yr = y + (item * R + r) * D;
        std::fill(yr, yr + D, 0.f);
        for (int64_t j = 0; j < n; ++j) {
          const float w = pr[j] * inv, *vs = vb + open[j] * stride;
          if (R == 1 && j + kAhead < n) prefetch_row(vb + open[j + kAhead] * stride, D);
          for (int64_t d = 0; d < D; ++d) yr[d] += w * vs[d];
        }
      }
    }
  });
  return 0;
}

// --- x (M, I) . w^T for many rows and a large w (Llama's projections on a prompt): the sgemm of MindSpore's
// oneDNN is single-threaded, so the product is split in two (or one part per core): by columns of w
// while M <= 2 O (each thread packs only its part of w: 482-504 GFLOP/s at 1,024-4,096 rows here, against
// 461-471 for MindSpore's MatMul and 463-483 split by rows), else by rows in blocks of 16 (x then
// dominates the traffic). Below kPanelRowsMax rows, with AVX-512, the product runs as linear_panels
// (further down) instead; without it, up to 32 rows (decode steps) run the few-row tiles.
// x: (M, I), w: (O, I) -> y: (M, O).
#ifdef __AVX512F__
constexpr int64_t kPanelRowsMax = 192;  // at 200 rows the padded 224 cost more than sgemm's packing
void linear_panels(const float *x, const float *w, float *y, int64_t M, int64_t I, int64_t O);
#endif

int linear_many(int nparam, void **params, int *ndims, int64_t **shapes) {
  const sgemm_t gemm = sgemm();
  if (nparam != 3 || ndims[0] != 2 || ndims[1] != 2 || gemm == nullptr) return 1;
  const float *x = static_cast<const float *>(params[0]);
  const float *w = static_cast<const float *>(params[1]);
  float *y = static_cast<float *>(params[2]);
  const int64_t M = shapes[0][0], I = shapes[0][1], O = shapes[1][0];
  if (shapes[1][1] != I) return 1;
#ifdef __AVX512F__
  if (M < kPanelRowsMax) return linear_panels(x, w, y, M, I, O), 0;
#else
  if (M <= 32) return linear_rows(nparam, params, ndims, shapes);  // MatMulT.FEW_ROWS
#endif
  const bool by_columns = M <= 2 * O;
  const int64_t blocks = by_columns ? O / 16 : (M + 15) / 16;
  const int T = threads_for(2 * M * I * O >> 21, std::max<int64_t>(blocks, 1));
  run_threads(T, [&](int t) {
    const int64_t b0 = blocks * t / T * 16, b1 = t == T - 1 ? (by_columns ? O : M) : blocks * (t + 1) / T * 16;
    if (b0 >= b1) return;
    if (by_columns) {
      gemm('N', 'T', M, b1 - b0, I, 1.f, x, I, w + b0 * I, I, 0.f, y + b0, O);
    } else {
      gemm('N', 'T', b1 - b0, O, I, 1.f, x + b0 * I, I, w, I, 0.f, y + b0 * O, O);
    }
  });
  return 0;
}

// --- x (M, I) . w^T + bias [+ residual] for many rows (the UNet's, VAE's and CLIP's linears): the bias
// (and the residual) are written into y first and the sgemm adds the product to them (beta = 1), so neither
// is a separate pass over y (MindSpore's broadcast Add took 4-10x torch's time at these shapes).
// x: (M, I), w: (O, I), bias: (O)[, residual: (M, O)] -> y: (M, O). Rows split over threads in blocks of 16.
int dense(int nparam, void **params, int *ndims, int64_t **shapes) {
  const sgemm_t gemm = sgemm();
  if ((nparam != 4 && nparam != 5) || ndims[0] != 2 || ndims[1] != 2 || gemm == nullptr) return 1;
  const float *x = static_cast<const float *>(params[0]);
  const float *w = static_cast<const float *>(params[1]);
  const float *b = static_cast<const float *>(params[2]);
  const float *res = nparam == 5 ? static_cast<const float *>(params[3]) : nullptr;
  float *y = static_cast<float *>(params[nparam - 1]);
  const int64_t M = shapes[0][0], I = shapes[0][1], O = shapes[1][0];
  if (shapes[1][1] != I || shapes[2][0] != O) return 1;
  const int64_t blocks = (M + 15) / 16;
  const int T = threads_for(2 * M * I * O >> 21, blocks);
  run_threads(T, [&](int t) {
    const int64_t r0 = std::min(M, blocks * t / T * 16), r1 = std::min(M, blocks * (t + 1) / T * 16);
    if (r0 == r1) return;
    for (int64_t r = r0; r < r1; ++r) {
      float *yr = y + r * O;
      if (res) {
        const float *rr = res + r * O;
        for (int64_t o = 0; o < O; ++o) yr[o] = rr[o] + b[o];
      } else {
        std::memcpy(yr, b, sizeof(float) * O);
      }
    }
    gemm('N', 'T', r1 - r0, O, I, 1.f, x + r0 * I, I, w, I, 1.f, y + r0 * O, O);
  });
  return 0;
}

// --- 1x1 projections between NCHW planes and (B, HW, C) tokens (the UNet's spatial transformers, the VAE's
// attention): the sgemm reads or writes the transposed operand in place, so neither the layout change nor
// the residual add is a pass of its own. Tokens of an image are split in fixed blocks of 256, so a row's
// result does not depend on the batch.
constexpr int64_t kPlaneBlock = 256;

// x: (B, I, T) planes, w: (O, I), bias: (O) -> y: (B, T, O) tokens.
int dense_to_tokens(int nparam, void **params, int *ndims, int64_t **shapes) {
  const sgemm_t gemm = sgemm();
  if (nparam != 4 || ndims[0] != 3 || ndims[1] != 2 || gemm == nullptr) return 1;
  const float *x = static_cast<const float *>(params[0]);
  const float *w = static_cast<const float *>(params[1]);
  const float *b = static_cast<const float *>(params[2]);
  float *y = static_cast<float *>(params[3]);
  const int64_t B = shapes[0][0], I = shapes[0][1], T = shapes[0][2], O = shapes[1][0];
  if (shapes[1][1] != I || shapes[2][0] != O) return 1;
  const int64_t blocks = (T + kPlaneBlock - 1) / kPlaneBlock, items = B * blocks;
  const int n = threads_for(2 * B * T * I * O >> 21, items);
  run_threads(n, [&](int t) {
    for (int64_t item = items * t / n; item < items * (t + 1) / n; ++item) {
      const int64_t img = item / blocks, t0 = item % blocks * kPlaneBlock, m = std::min(kPlaneBlock, T - t0);
      float *yb = y + (img * T + t0) * O;
      for (int64_t r = 0; r < m; ++r) std::memcpy(yb + r * O, b, sizeof(float) * O);
      gemm('T', 'T', m, O, I, 1.f, x + img * I * T + t0, T, w, I, 1.f, yb, O);
    }
  });
  return 0;
}

// x: (B, T, I) tokens, w: (O, I), bias: (O), residual: (B, O, T) -> y: (B, O, T) planes.
int dense_to_planes(int nparam, void **params, int *ndims, int64_t **shapes) {
  const sgemm_t gemm = sgemm();
  if (nparam != 5 || ndims[0] != 3 || ndims[1] != 2 || ndims[3] != 3 || gemm == nullptr) return 1;
  const float *x = static_cast<const float *>(params[0]);
  const float *w = static_cast<const float *>(params[1]);
  const float *b = static_cast<const float *>(params[2]);
  const float *res = static_cast<const float *>(params[3]);
  float *y = static_cast<float *>(params[4]);
  const int64_t B = shapes[0][0], T = shapes[0][1], I = shapes[0][2], O = shapes[1][0];
  if (shapes[1][1] != I || shapes[2][0] != O || shapes[3][0] != B || shapes[3][1] != O || shapes[3][2] != T) return 1;
  const int64_t blocks = (T + kPlaneBlock - 1) / kPlaneBlock, items = B * blocks;
  const int n = threads_for(2 * B * T * I * O >> 21, items);
  run_threads(n, [&](int t) {
    for (int64_t item = items * t / n; item < items * (t + 1) / n; ++item) {
      const int64_t img = item / blocks, t0 = item % blocks * kPlaneBlock, m = std::min(kPlaneBlock, T - t0);
      float *yb = y + img * O * T + t0;
      const float *rb = res + img * O * T + t0;
      for (int64_t o = 0; o < O; ++o) {
        for (int64_t j = 0; j < m; ++j) yb[o * T + j] = rb[o * T + j] + b[o];
      }
      gemm('N', 'T', O, m, I, 1.f, w, I, x + (img * T + t0) * I, I, 1.f, yb, T);
    }
  });
  return 0;
}

// Softmax row helpers for the attention below. GCC vectorises neither a std::max reduction nor (beyond
// 8 lanes, through libmvec calls) std::exp, and at head dims of 16-64 those two passes cost as much as
// both matrix products: 0.55 ns a score against 0.1 with the AVX-512 forms.
#ifdef __AVX512F__
inline float row_max(const float *row, int64_t n) {
  __m512 top = _mm512_set1_ps(-INFINITY);
  int64_t j = 0;
  for (; j + 16 <= n; j += 16) top = _mm512_max_ps(top, _mm512_loadu_ps(row + j));
  if (j < n) top = _mm512_mask_max_ps(top, tail_mask(n - j), top, _mm512_maskz_loadu_ps(tail_mask(n - j), row + j));
  return _mm512_reduce_max_ps(top);
}

// row[j] = e^(row[j] - top); returns their sum (16 partial sums, added in a fixed order).
inline float exp_sum(float *row, int64_t n, float top) {
  const __m512 t = _mm512_set1_ps(top);
  __m512 acc = _mm512_setzero_ps();
  int64_t j = 0;
  for (; j + 16 <= n; j += 16) {
    const __m512 e = exp16(_mm512_sub_ps(_mm512_loadu_ps(row + j), t));
    _mm512_storeu_ps(row + j, e);
    acc = _mm512_add_ps(acc, e);
  }
  if (j < n) {
    const __mmask16 m = tail_mask(n - j);
    const __m512 e = exp16(_mm512_sub_ps(_mm512_maskz_loadu_ps(m, row + j), t));
    _mm512_mask_storeu_ps(row + j, m, e);
    acc = _mm512_add_ps(acc, _mm512_maskz_mov_ps(m, e));
  }
  return _mm512_reduce_add_ps(acc);
}
#else
inline float row_max(const float *row, int64_t n) {
  float top = -INFINITY;
  for (int64_t j = 0; j < n; ++j) top = std::max(top, row[j]);
  return top;
}

inline float exp_sum(float *row, int64_t n, float top) {
  float sum = 0.f;
  for (int64_t j = 0; j < n; ++j) sum += (row[j] = std::exp(row[j] - top));
  return sum;
}
#endif

// --- Attention over whole sequences (UNet, VAE): softmax(q k^T / sqrt(D)) v for each head, no mask.
// q: (B, Tq, H*D), k, v: (B, Tk, H*D), heads: (H) (only its shape is used) -> y: (B, Tq, H*D).
// The sgemm reads a head's columns in place (leading dimension H*D), so heads are never transposed out,
// and a block of queries' scores (about 256 KB) stays in cache between the two products instead of
// going to memory and back through a separate softmax. Rows are normalised after the second product
// (D values a row instead of Tk). Blocks depend on Tq and Tk only: a row's result is the same in any batch.
int attention(int nparam, void **params, int *ndims, int64_t **shapes) {
  const sgemm_t gemm = sgemm();
  if (nparam != 5 || ndims[0] != 3 || ndims[1] != 3 || ndims[2] != 3 || ndims[3] != 1 || gemm == nullptr) return 1;
  const float *q = static_cast<const float *>(params[0]);
  const float *k = static_cast<const float *>(params[1]);
  const float *v = static_cast<const float *>(params[2]);
  float *y = static_cast<float *>(params[4]);
  const int64_t B = shapes[0][0], Tq = shapes[0][1], C = shapes[0][2], Tk = shapes[1][1], H = shapes[3][0];
  if (H <= 0 || C % H != 0 || shapes[1][2] != C || shapes[2][1] != Tk) return 1;
  const int64_t D = C / H, QB = std::clamp<int64_t>((1 << 16) / Tk, 8, Tq), blocks = (Tq + QB - 1) / QB;
  const float scale = 1.f / std::sqrt(static_cast<float>(D));
  const int64_t items = B * H * blocks;
  const int64_t flops = 4 * B * H * Tq * Tk * D;
  const int T = threads_for(flops >> 24, items);
  run_threads(T, [&](int t) {
    std::vector<float> s(QB * Tk), inv(QB);
    for (int64_t item = items * t / T; item < items * (t + 1) / T; ++item) {
      const int64_t b = item / (H * blocks), h = item / blocks % H, q0 = item % blocks * QB;
      const int64_t m = std::min(QB, Tq - q0);
      const float *kb = k + b * Tk * C + h * D, *vb = v + b * Tk * C + h * D;
      float *yb = y + (b * Tq + q0) * C + h * D;
      gemm('N', 'T', m, Tk, D, scale, q + (b * Tq + q0) * C + h * D, C, kb, C, 0.f, s.data(), Tk);
      for (int64_t r = 0; r < m; ++r) {
        float *row = s.data() + r * Tk;
        inv[r] = 1.f / exp_sum(row, Tk, row_max(row, Tk));
      }
      gemm('N', 'N', m, D, Tk, 1.f, s.data(), Tk, vb, C, 0.f, yb, C);
      for (int64_t r = 0; r < m; ++r) {
        for (int64_t d = 0; d < D; ++d) yb[r * C + d] *= inv[r];
      }
    }
  });
  return 0;
}

// --- A prompt's attention for the Llama KV cache, token-major (the order the cache is written in, so no
// transposes around it): q (Tq, B, H, D), k, v (Tk, B, G, D) (query head h reads kv head h / (H / G)),
// additive mask (B, Tq, Tk) -> y (Tq, B, H, D); softmax(q k^T / sqrt(D) + mask) v, D a multiple of 16.
// Queries go in blocks of kMaskedBlock; a block multiplies only the keys from the first to the last one
// any of its rows may see (the mask is causal with left padding: about half the score square is skipped
// at long prompts). A skipped key's mask is <= -1e8 for every row of the block (the masks use -1e9), so
// it would get exp(...) == 0 exactly; a block with no open key attends to all, like the softmax. Blocks
// depend on Tq only, so a row's result does not depend on the batch.
// The products are register tiles, not sgemm calls: at a prompt's sizes (32 queries x <= Tk keys x D)
// the sgemm's per-call cost dominated (2.6 ms a layer at batch 8, 128 tokens, against 0.3 GFLOP).
typedef float v16 __attribute__((vector_size(64)));  // 1 AVX-512 or 2 AVX2 registers
#ifdef __AVX512F__
// score tiles of 8 x 2 accumulators: 16 FMAs per 2 key loads and 8 broadcasts
constexpr int kScoreRows = 8, kScoreVecs = 2, kWeighRows = 4, kWeighVecs = 4;
#else
constexpr int kScoreRows = 4, kScoreVecs = 1, kWeighRows = 2, kWeighVecs = 2;  // 16 ymm registers
#endif
constexpr int64_t kMaskedBlock = 32, kKeyStep = 16 * kScoreVecs;

inline v16 load16(const float *p) {
  v16 x;
  std::memcpy(&x, p, sizeof x);
  return x;
}

inline void store16(float *p, v16 x) { std::memcpy(p, &x, sizeof x); }

// A loaded vector kept in a register: GCC otherwise folds it into every FMA that uses it as a memory
// operand, reloading it for each row, and the loops became load-bound (AVX-512 only: with AVX2's 16
// registers the pinned form spills, as in the few-row matmul).
inline v16 pinned(v16 x) {
#ifdef __AVX512F__
  asm volatile("" : "+v"(x));
#endif
  return x;
}

#ifdef __AVX512F__
// dst[c * ldd + r] = src[r * lds + c] for r < nr, c < nc: one block of at most 16 x 16, in registers.
// The nc rows written get `store`'s lanes, with 0 in lanes r >= nr.
inline void transpose16(const float *src, int64_t lds, int nr, int nc, float *dst, int64_t ldd, __mmask16 store) {
  const auto lo = [](__m512 a, __m512 b) {
    return _mm512_castpd_ps(_mm512_unpacklo_pd(_mm512_castps_pd(a), _mm512_castps_pd(b)));
  };
  const auto hi = [](__m512 a, __m512 b) {
    return _mm512_castpd_ps(_mm512_unpackhi_pd(_mm512_castps_pd(a), _mm512_castps_pd(b)));
  };
  __m512 r[16], t[16];
  for (int i = 0; i < 16; ++i) {
    r[i] = i < nr ? _mm512_maskz_loadu_ps(tail_mask(nc), src + i * lds) : _mm512_setzero_ps();
  }
  for (int i = 0; i < 16; i += 2) {  // per 128-bit lane: pairs of rows interleaved
    t[i] = _mm512_unpacklo_ps(r[i], r[i + 1]);
    t[i + 1] = _mm512_unpackhi_ps(r[i], r[i + 1]);
  }
  for (int i = 0; i < 16; i += 4) {  // lane l of r[i + c]: column 4l + c of rows i..i+3
    r[i] = lo(t[i], t[i + 2]);
    r[i + 1] = hi(t[i], t[i + 2]);
    r[i + 2] = lo(t[i + 1], t[i + 3]);
    r[i + 3] = hi(t[i + 1], t[i + 3]);
  }
  for (int i = 0; i < 16; i += 8) {  // t[i + c]: columns c, c + 8 of rows i..i+7; t[i + 4 + c]: c + 4, c + 12
    for (int c = 0; c < 4; ++c) {
      t[i + c] = _mm512_shuffle_f32x4(r[i + c], r[i + 4 + c], 0x88);
      t[i + 4 + c] = _mm512_shuffle_f32x4(r[i + c], r[i + 4 + c], 0xdd);
    }
  }
  for (int c = 0; c < 8; ++c) {  // whole columns
    r[c] = _mm512_shuffle_f32x4(t[c], t[c + 8], 0x88);
    r[c + 8] = _mm512_shuffle_f32x4(t[c], t[c + 8], 0xdd);
  }
  for (int c = 0; c < nc; ++c) _mm512_mask_storeu_ps(dst + c * ldd, store, r[c]);
}

// --- x (M, I) . w^T for a prompt's few hundred rows (Llama's projections at batch 1): sgemm packs w
// before multiplying, and with few rows that copy, from memory, costs a sixth of the product (338-385
// GFLOP/s at 128 rows). Here x is packed instead (transposed, in panels of 32 rows and kPanelK columns,
// small enough to stay in cache) and each weight is broadcast straight from w's rows into a 12 x 32
// register tile (12 weight rows x 2 vectors of x rows), while the next tile's weights are prefetched.
// Every y[m, o] is one lane's sequential sum over i, so a row's bytes do not depend on M (below
// kPanelRowsMax) nor on threads; they differ from the sgemm's at more rows.
constexpr int kPanelW = 12;
constexpr int64_t kPanelM = 32, kPanelK = 256;

// xp[i][j] = x[m0 + j][i0 + i] for i < kc, j < 32 (0 past row M).
void pack_panel(const float *x, int64_t I, int64_t m0, int64_t M, int64_t i0, int64_t kc, float *xp) {
  for (int64_t j0 = 0; j0 < kPanelM; j0 += 16) {
    const int nr = static_cast<int>(std::clamp<int64_t>(M - m0 - j0, 0, 16));
    for (int64_t i = 0; i < kc; i += 16) {
      transpose16(x + (m0 + j0) * I + i0 + i, I, nr, static_cast<int>(std::min<int64_t>(16, kc - i)),
                  xp + i * kPanelM + j0, kPanelM, 0xffff);
    }
  }
}

// acc[r][0..32) (+)= sum_i w[r][i] xp[i][0..32) for kc steps; `next` (kPanelW rows) is prefetched.
void panel_tile(const float *xp, const float *const *w, int64_t kc, float *acc, bool first,
                const float *const *next) {
  v16 a[kPanelW][2];
  for (int r = 0; r < kPanelW; ++r) {
    for (int c = 0; c < 2; ++c) a[r][c] = first ? v16{} : load16(acc + (2 * r + c) * 16);
  }
  for (int64_t i = 0; i < kc; ++i) {
    const v16 x0 = pinned(load16(xp + i * kPanelM)), x1 = pinned(load16(xp + i * kPanelM + 16));
    if (next != nullptr && (i & 15) == 0) {
      for (int r = 0; r < kPanelW; ++r) __builtin_prefetch(next[r] + i);
    }
    for (int r = 0; r < kPanelW; ++r) {
      const float s = w[r][i];
      a[r][0] += s * x0;
      a[r][1] += s * x1;
    }
  }
  for (int r = 0; r < kPanelW; ++r) {
    for (int c = 0; c < 2; ++c) store16(acc + (2 * r + c) * 16, a[r][c]);
  }
}

void linear_panels(const float *x, const float *w, float *y, int64_t M, int64_t I, int64_t O) {
  const int64_t P = (M + kPanelM - 1) / kPanelM, tiles = (O + kPanelW - 1) / kPanelW;
  const int T = threads_for(2 * M * I * O >> 21, tiles);
  run_threads(T, [&](int t) {
    // Each thread packs x for itself (a 16 x 16 block takes a few dozen instructions): sharing it would
    // take a second round of the pool (20-40 us). The buffers stay with the thread: fresh ones (up to
    // ~1 MB) were new pages to fault in on every call.
    const int64_t t0 = tiles * t / T, t1 = tiles * (t + 1) / T;
    thread_local std::vector<float> xp, acc;
    xp.resize(std::max<size_t>(xp.size(), P * kPanelM * kPanelK));
    acc.resize(std::max<size_t>(acc.size(), (t1 - t0) * P * kPanelW * kPanelM));
    const auto row = [&](int64_t o) { return w + std::min(o, O - 1) * I; };  // repeats past O: discarded
    for (int64_t i0 = 0; i0 < I; i0 += kPanelK) {
      const int64_t kc = std::min(kPanelK, I - i0);
      for (int64_t p = 0; p < P; ++p) pack_panel(x, I, p * kPanelM, M, i0, kc, xp.data() + p * kPanelM * kPanelK);
      for (int64_t tile = t0; tile < t1; ++tile) {
        const float *rows[kPanelW], *next[kPanelW];  // this tile's weights; the next tile's (or next chunk's)
        for (int r = 0; r < kPanelW; ++r) {
          rows[r] = row(tile * kPanelW + r) + i0;
          next[r] = tile + 1 < t1 ? row((tile + 1) * kPanelW + r) + i0
                                  : row(t0 * kPanelW + r) + std::min(i0 + kc, I - 1);
        }
        for (int64_t p = 0; p < P; ++p) {  // the weights come from memory for panel 0, from L1 after
          float *a = acc.data() + ((tile - t0) * P + p) * kPanelW * kPanelM;
          panel_tile(xp.data() + p * kPanelM * kPanelK, rows, kc, a, i0 == 0, p == 0 ? next : nullptr);
        }
      }
    }
    for (int64_t tile = t0; tile < t1; ++tile) {
      const int nw = static_cast<int>(std::min<int64_t>(kPanelW, O - tile * kPanelW));
      for (int64_t p = 0; p < P; ++p) {
        const float *a = acc.data() + ((tile - t0) * P + p) * kPanelW * kPanelM;
        for (int64_t j0 = 0; j0 < kPanelM && p * kPanelM + j0 < M; j0 += 16) {
          const int64_t m = p * kPanelM + j0;
          transpose16(a + j0, kPanelM, nw, static_cast<int>(std::min<int64_t>(16, M - m)), y + m * O + tile * kPanelW,
                      O, tail_mask(nw));
        }
      }
    }
  });
}
#endif

// s[r][j] = scale * (q_r . k_j) + mask[r][j] for ROWS query rows (q ldq, mask ldm apart) and keys [0, n)
// packed transposed in kt (D rows, ld floats apart, readable up to n rounded up to kKeyStep); s rows are
// ld long, their tails scratch.
template <int ROWS>
void score_rows(const float *q, int64_t ldq, const float *kt, int64_t ld, int64_t D, int64_t n, float scale,
                const float *mask, int64_t ldm, float *s) {
  for (int64_t j = 0; j < n; j += kKeyStep) {
    v16 acc[ROWS][kScoreVecs] = {};
    for (int64_t d = 0; d < D; ++d) {
      v16 kv[kScoreVecs];
      for (int c = 0; c < kScoreVecs; ++c) kv[c] = pinned(load16(kt + d * ld + j + 16 * c));
      for (int r = 0; r < ROWS; ++r) {
        const float qd = q[r * ldq + d];
        for (int c = 0; c < kScoreVecs; ++c) acc[r][c] += qd * kv[c];
      }
    }
    for (int r = 0; r < ROWS; ++r) {
      for (int c = 0; c < kScoreVecs; ++c) {
        const int64_t at = j + 16 * c;
        float *out = s + r * ld + at;
        const float *mr = mask + r * ldm + at;
        if (at + 16 <= n) {
          store16(out, acc[r][c] * scale + load16(mr));
        } else {  // the mask row ends at n
          store16(out, acc[r][c] * scale);
          for (int64_t i = 0; i < n - at; ++i) out[i] += mr[i];
        }
      }
    }
  }
}

// y_r[0, 16 NV) = inv_r * sum_j p_r[j] v_j for ROWS rows (p ldp, y ldy apart) and keys v_j ldv apart.
template <int ROWS, int NV>
void weigh_rows(const float *p, int64_t ldp, const float *v, int64_t ldv, int64_t n, const float *inv, float *y,
                int64_t ldy) {
  v16 acc[ROWS][NV] = {};
  for (int64_t j = 0; j < n; ++j) {
    v16 vv[NV];
    for (int c = 0; c < NV; ++c) vv[c] = pinned(load16(v + j * ldv + 16 * c));
    for (int r = 0; r < ROWS; ++r) {
      const float w = p[r * ldp + j];
      for (int c = 0; c < NV; ++c) acc[r][c] += w * vv[c];
    }
  }
  for (int r = 0; r < ROWS; ++r) {
    for (int c = 0; c < NV; ++c) store16(y + r * ldy + 16 * c, acc[r][c] * inv[r]);
  }
}

template <int ROWS>
void weigh_dims(const float *p, int64_t ldp, const float *v, int64_t ldv, int64_t n, int64_t D, const float *inv,
                float *y, int64_t ldy) {
  int64_t d = 0;
  for (; d + 16 * kWeighVecs <= D; d += 16 * kWeighVecs) {
    weigh_rows<ROWS, kWeighVecs>(p, ldp, v + d, ldv, n, inv, y + d, ldy);
  }
  for (; d < D; d += 16) weigh_rows<ROWS, 1>(p, ldp, v + d, ldv, n, inv, y + d, ldy);
}

// The first key j of a mask row with mr[j] > -1e8 (Tk if none), and one past the last from j on (j if none).
#ifdef __AVX512F__
inline int64_t first_open(const float *mr, int64_t Tk) {
  const __m512 closed = _mm512_set1_ps(-1e8f);
  for (int64_t j = 0; j < Tk; j += 16) {
    const __mmask16 in = tail_mask(std::min<int64_t>(16, Tk - j));
    const unsigned open = _mm512_mask_cmp_ps_mask(in, _mm512_maskz_loadu_ps(in, mr + j), closed, _CMP_GT_OQ);
    if (open) return j + __builtin_ctz(open);
  }
  return Tk;
}

inline int64_t end_open(const float *mr, int64_t j, int64_t Tk) {
  const __m512 closed = _mm512_set1_ps(-1e8f);
  for (int64_t e = Tk; e > j; e -= 16) {
    const int64_t s = std::max(j, e - 16);
    const __mmask16 in = tail_mask(e - s);
    const unsigned open = _mm512_mask_cmp_ps_mask(in, _mm512_maskz_loadu_ps(in, mr + s), closed, _CMP_GT_OQ);
    if (open) return s + 32 - __builtin_clz(open);
  }
  return j;
}
#else
inline int64_t first_open(const float *mr, int64_t Tk) {
  int64_t j = 0;
  while (j < Tk && mr[j] <= -1e8f) ++j;
  return j;
}

inline int64_t end_open(const float *mr, int64_t j, int64_t Tk) {
  int64_t e = Tk;
  while (e > j && mr[e - 1] <= -1e8f) --e;
  return e;
}
#endif

int masked_attention(int nparam, void **params, int *ndims, int64_t **shapes) {
  if (nparam != 5 || ndims[0] != 4 || ndims[1] != 4 || ndims[2] != 4 || ndims[3] != 3) return 1;
  const float *q = static_cast<const float *>(params[0]);
  const float *k = static_cast<const float *>(params[1]);
  const float *v = static_cast<const float *>(params[2]);
  const float *mask = static_cast<const float *>(params[3]);
  float *y = static_cast<float *>(params[4]);
  const int64_t Tq = shapes[0][0], B = shapes[0][1], H = shapes[0][2], D = shapes[0][3];
  const int64_t Tk = shapes[1][0], G = shapes[1][2];
  for (int a = 1; a <= 2; ++a) {
    if (shapes[a][0] != Tk || shapes[a][1] != B || shapes[a][2] != G || shapes[a][3] != D) return 1;
  }
  if (G <= 0 || H % G != 0 || D % 16 != 0 || shapes[3][0] != B || shapes[3][1] != Tq || shapes[3][2] != Tk) return 1;
  const int64_t R = H / G, ldq = B * H * D, ldk = B * G * D, blocks = (Tq + kMaskedBlock - 1) / kMaskedBlock;
  const float scale = 1.f / std::sqrt(static_cast<float>(D));
  // the keys each block of each batch row may see: [lo, hi)
  std::vector<int64_t> lo(B * blocks, Tk), hi(B * blocks, 0);
  for (int64_t b = 0; b < B; ++b) {
    for (int64_t i = 0; i < Tq; ++i) {
      const float *mr = mask + (b * Tq + i) * Tk;
      const int64_t j = first_open(mr, Tk), e = end_open(mr, j, Tk);
      const int64_t at = b * blocks + i / kMaskedBlock;
      if (j < e) lo[at] = std::min(lo[at], j), hi[at] = std::max(hi[at], e);
    }
    for (int64_t at = b * blocks; at < (b + 1) * blocks; ++at) {
      if (lo[at] >= hi[at]) lo[at] = 0, hi[at] = Tk;
    }
  }
  const int64_t items = B * G;
  const int T = threads_for(4 * B * H * Tq * Tk * D >> 24, items);
  run_threads(T, [&](int t) {
    std::vector<float> kt, vp, s, inv(kMaskedBlock);
    for (int64_t item = items * t / T; item < items * (t + 1) / T; ++item) {
      const int64_t b = item / G, g = item % G;
      const int64_t first = *std::min_element(lo.begin() + b * blocks, lo.begin() + (b + 1) * blocks);
      const int64_t last = *std::max_element(hi.begin() + b * blocks, hi.begin() + (b + 1) * blocks);
      const int64_t ld = (last - first + 2 * kKeyStep - 1) / kKeyStep * kKeyStep;  // room for a block's tail
      // this kv head's keys transposed (kt[d][j - first]) and values in rows (vp[j - first][d]): in the
      // cache's order a head's rows are B*G*D floats apart, often a power of two, so re-reading them
      // in place for every 4 queries kept missing the caches
      kt.resize(D * ld);  // columns past last - first feed only the scratch tails of s
      vp.resize((last - first) * D);
      const float *kh = k + (b * G + g) * D, *vh = v + (b * G + g) * D;
#ifdef __AVX512F__
      for (int64_t j = first; j < last; j += 16) {  // 16 x 16 blocks in registers; ld leaves room for 16
        for (int64_t d = 0; d < D; d += 16) {
          transpose16(kh + j * ldk + d, ldk, static_cast<int>(std::min<int64_t>(16, last - j)), 16,
                      kt.data() + d * ld + j - first, ld, 0xffff);
        }
      }
#else
      for (int64_t j = first; j < last; ++j) {
        for (int64_t d = 0; d < D; ++d) kt[d * ld + j - first] = kh[j * ldk + d];
      }
#endif
      for (int64_t j = first; j < last; ++j) std::memcpy(vp.data() + (j - first) * D, vh + j * ldk, sizeof(float) * D);
      s.resize(kMaskedBlock * ld);
      for (int64_t r = 0; r < R; ++r) {
        const int64_t h = g * R + r;
        for (int64_t blk = 0; blk < blocks; ++blk) {
          const int64_t q0 = blk * kMaskedBlock, m = std::min(kMaskedBlock, Tq - q0);
          const int64_t j0 = lo[b * blocks + blk], n = hi[b * blocks + blk] - j0;
          const float *qb = q + (q0 * B + b) * H * D + h * D, *kb = kt.data() + (j0 - first);
          const float *mi = mask + (b * Tq + q0) * Tk + j0;
          for (int64_t i = 0, rows; i < m; i += rows) {
            float *si = s.data() + i * ld;
            switch (rows = m - i >= kScoreRows ? kScoreRows : std::min<int64_t>(m - i, 4)) {
              case 8: score_rows<8>(qb + i * ldq, ldq, kb, ld, D, n, scale, mi + i * Tk, Tk, si); break;
              case 4: score_rows<4>(qb + i * ldq, ldq, kb, ld, D, n, scale, mi + i * Tk, Tk, si); break;
              case 3: score_rows<3>(qb + i * ldq, ldq, kb, ld, D, n, scale, mi + i * Tk, Tk, si); break;
              case 2: score_rows<2>(qb + i * ldq, ldq, kb, ld, D, n, scale, mi + i * Tk, Tk, si); break;
              default: score_rows<1>(qb + i * ldq, ldq, kb, ld, D, n, scale, mi + i * Tk, Tk, si);
            }
          }
          for (int64_t i = 0; i < m; ++i) {
            float *row = s.data() + i * ld;
            inv[i] = 1.f / exp_sum(row, n, row_max(row, n));
          }
          const float *vb = vp.data() + (j0 - first) * D;
          float *yb = y + (q0 * B + b) * H * D + h * D;
          for (int64_t i = 0; i < m; i += kWeighRows) {
            const float *pi = s.data() + i * ld;
            switch (std::min<int64_t>(kWeighRows, m - i)) {
              case 4: weigh_dims<4>(pi, ld, vb, D, n, D, inv.data() + i, yb + i * ldq, ldq); break;
              case 3: weigh_dims<3>(pi, ld, vb, D, n, D, inv.data() + i, yb + i * ldq, ldq); break;
              case 2: weigh_dims<2>(pi, ld, vb, D, n, D, inv.data() + i, yb + i * ldq, ldq); break;
              default: weigh_dims<1>(pi, ld, vb, D, n, D, inv.data() + i, yb + i * ldq, ldq);
            }
          }
        }
      }
    }
  });
  return 0;
}

// --- Writes a prompt's keys or values into a slot-major cache in place: cache (S, B, G, D) (a Parameter's
// memory), x (T, B, G, D), slots (T) int32 -> done (1) (a token to order on). MindSpore's ScatterUpdate
// copied at 3 GB/s (1.3 ms per 4 MB at batch 8, 128 tokens, 16 calls a prefill); slots go over threads.
int cache_write(int nparam, void **params, int *ndims, int64_t **shapes) {
  if (nparam != 4 || ndims[0] != 4 || ndims[1] != 4 || ndims[2] != 1) return 1;
  float *cache = static_cast<float *>(params[0]);
  const float *x = static_cast<const float *>(params[1]);
  const int32_t *slots = static_cast<const int32_t *>(params[2]);
  const int64_t S = shapes[0][0], T = shapes[1][0], row = shapes[1][1] * shapes[1][2] * shapes[1][3];
  if (shapes[0][1] * shapes[0][2] * shapes[0][3] != row || shapes[2][0] != T) return 1;
  for (int64_t t = 0; t < T; ++t) {
    if (slots[t] < 0 || slots[t] >= S) return 1;
  }
  const int n = threads_for(T * row >> 18, T);
  run_threads(n, [&](int part) {
    for (int64_t t = T * part / n; t < T * (part + 1) / n; ++t) {
      std::memcpy(cache + slots[t] * row, x + t * row, sizeof(float) * row);
    }
  });
  static_cast<float *>(params[3])[0] = 0.f;
  return 0;
}

}  // namespace

extern "C" {
int Dense(int np, void **p, int *nd, int64_t **s, const char **, void *, void *) { return dense(np, p, nd, s); }
int LinearMany(int np, void **p, int *nd, int64_t **s, const char **, void *, void *) {
  return linear_many(np, p, nd, s);
}
// The same plus a residual: a second name, because MindSpore keeps one bprop per Custom op name.
int DenseResidual(int np, void **p, int *nd, int64_t **s, const char **, void *, void *) {
  return dense(np, p, nd, s);
}
int DenseToTokens(int np, void **p, int *nd, int64_t **s, const char **, void *, void *) {
  return dense_to_tokens(np, p, nd, s);
}
int DenseToPlanes(int np, void **p, int *nd, int64_t **s, const char **, void *, void *) {
  return dense_to_planes(np, p, nd, s);
}
int Attention(int np, void **p, int *nd, int64_t **s, const char **, void *, void *) { return attention(np, p, nd, s); }
int CacheWrite(int np, void **p, int *nd, int64_t **s, const char **, void *, void *) {
  return cache_write(np, p, nd, s);
}
int MaskedAttention(int np, void **p, int *nd, int64_t **s, const char **, void *, void *) {
  return masked_attention(np, p, nd, s);
}
int CacheAttention(int np, void **p, int *nd, int64_t **s, const char **, void *, void *) {
  return cache_attention(np, p, nd, s);
}
int LinearRows(int np, void **p, int *nd, int64_t **s, const char **, void *, void *) {
  return linear_rows(np, p, nd, s);
}
// The same with a bias: a second name, because MindSpore keeps one bprop per Custom op name.
int LinearRowsBias(int np, void **p, int *nd, int64_t **s, const char **, void *, void *) {
  return linear_rows(np, p, nd, s);
}
int Conv2d(int np, void **p, int *nd, int64_t **s, const char **, void *, void *) { return conv2d(np, p, nd, s); }
// The same plus a residual: a second name, because MindSpore keeps one bprop per Custom op name.
int Conv2dResidual(int np, void **p, int *nd, int64_t **s, const char **, void *, void *) {
  return conv2d(np, p, nd, s);
}
int Conv2dGrad(int np, void **p, int *nd, int64_t **s, const char **, void *, void *) {
  return conv2d_grad(np, p, nd, s);
}
int GroupNorm(int np, void **p, int *nd, int64_t **s, const char **, void *, void *) {
  return group_norm<false>(np, p, nd, s);
}
int GroupNormSiLU(int np, void **p, int *nd, int64_t **s, const char **, void *, void *) {
  return group_norm<true>(np, p, nd, s);
}
int LayerNorm(int np, void **p, int *nd, int64_t **s, const char **, void *, void *) {
  return layer_norm(np, p, nd, s);
}
int GEGLU(int np, void **p, int *nd, int64_t **s, const char **, void *, void *) { return geglu(np, p, nd, s); }
int QuickGELU(int np, void **p, int *nd, int64_t **s, const char **, void *, void *) {
  return gelu<true>(np, p, nd, s);
}
int GELU(int np, void **p, int *nd, int64_t **s, const char **, void *, void *) { return gelu<false>(np, p, nd, s); }
int RMSNorm(int np, void **p, int *nd, int64_t **s, const char **, void *, void *) {
  return rms_norm(np, p, nd, s);
}
int SwiGLU(int np, void **p, int *nd, int64_t **s, const char **, void *, void *) { return swiglu(np, p, nd, s); }
int Rope(int np, void **p, int *nd, int64_t **s, const char **, void *, void *) { return rope(np, p, nd, s); }
int Upsample2x(int np, void **p, int *nd, int64_t **s, const char **, void *, void *) {
  return upsample2x(np, p, nd, s);
}
int GroupNormGrad(int np, void **p, int *nd, int64_t **s, const char **, void *, void *) {
  return group_norm_grad<false>(np, p, nd, s);
}
int GroupNormSiLUGrad(int np, void **p, int *nd, int64_t **s, const char **, void *, void *) {
  return group_norm_grad<true>(np, p, nd, s);
}
int LayerNormGrad(int np, void **p, int *nd, int64_t **s, const char **, void *, void *) {
  return layer_norm_grad(np, p, nd, s);
}
int RMSNormGrad(int np, void **p, int *nd, int64_t **s, const char **, void *, void *) {
  return rms_norm_grad(np, p, nd, s);
}
int SwiGLUGrad(int np, void **p, int *nd, int64_t **s, const char **, void *, void *) {
  return swiglu_grad(np, p, nd, s);
}
int GEGLUGrad(int np, void **p, int *nd, int64_t **s, const char **, void *, void *) {
  return geglu_grad(np, p, nd, s);
}
int QuickGELUGrad(int np, void **p, int *nd, int64_t **s, const char **, void *, void *) {
  return gelu_grad<true>(np, p, nd, s);
}
int GELUGrad(int np, void **p, int *nd, int64_t **s, const char **, void *, void *) {
  return gelu_grad<false>(np, p, nd, s);
}
int Upsample2xGrad(int np, void **p, int *nd, int64_t **s, const char **, void *, void *) {
  return upsample2x_grad(np, p, nd, s);
}
int SoftmaxGrad(int np, void **p, int *nd, int64_t **s, const char **, void *, void *) {
  return softmax_grad(np, p, nd, s);
}
}
