// Fused fp32 CPU kernels for MindSpore's "aot" Custom op (see pmg_models/kernels/__init__.py).
//
// Why: MindSpore's CPU LayerNorm and elementwise ops cost 0.1-0.5 ms each at UNet shapes and every
// elementwise op is a separate pass; these do a whole norm (+ affine, + SiLU) or a GEGLU in one pass.
// Its nearest-neighbour resize took 2-3 ms for a (2, 64, 32, 32) input, 35x torch's.
// Single-threaded on purpose: an OpenMP team spinning between calls took the cores from MindSpore's own
// thread pool (the small UNet step went from 160 to 560 ms), and these passes are memory-bound anyway.
// Signature (MindSpore aot): int f(nparam, params, ndims, shapes, dtypes, stream, extra); inputs first.
#include <cmath>
#include <cstdint>

namespace {

int64_t numel(int ndim, const int64_t *shape, int upto) {
  int64_t n = 1;
  for (int i = 0; i < upto && i < ndim; ++i) n *= shape[i];
  return n;
}

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

// x: (B, G, Cg, HW); weight, bias: (G*Cg); eps: (1); y like x.
template <bool SILU>
int group_norm(int nparam, void **params, int *ndims, int64_t **shapes) {
  if (nparam != 5 || ndims[0] != 4) return 1;
  const float *x = static_cast<const float *>(params[0]);
  const float *w = static_cast<const float *>(params[1]);
  const float *b = static_cast<const float *>(params[2]);
  const float eps = static_cast<const float *>(params[3])[0];
  float *y = static_cast<float *>(params[4]);
  const int64_t B = shapes[0][0], G = shapes[0][1], Cg = shapes[0][2], HW = shapes[0][3];
  const int64_t n = Cg * HW;
  for (int64_t r = 0; r < B * G; ++r) {
    const float *xr = x + r * n;
    float *yr = y + r * n;
    float mean, rstd;
    moments(xr, n, eps, &mean, &rstd);
    const int64_t c0 = (r % G) * Cg;
    for (int64_t c = 0; c < Cg; ++c) {
      const float scale = w[c0 + c] * rstd, shift = b[c0 + c] - mean * scale;
      const float *xc = xr + c * HW;
      float *yc = yr + c * HW;
      for (int64_t i = 0; i < HW; ++i) {
        const float v = xc[i] * scale + shift;
        yc[i] = SILU ? v / (1.f + std::exp(-v)) : v;
      }
    }
  }
  return 0;
}

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
  for (int64_t r = 0; r < rows; ++r) {
    const float *xr = x + r * D;
    float *yr = y + r * D;
    float ss = 0.f;
    for (int64_t i = 0; i < D; ++i) ss += xr[i] * xr[i];
    const float rstd = 1.f / std::sqrt(ss / static_cast<float>(D) + eps);
    for (int64_t i = 0; i < D; ++i) yr[i] = xr[i] * rstd * w[i];
  }
  return 0;
}

// gate, up, y: same shape; y = silu(gate) * up.
int swiglu(int nparam, void **params, int *ndims, int64_t **shapes) {
  if (nparam != 3) return 1;
  const float *g = static_cast<const float *>(params[0]);
  const float *u = static_cast<const float *>(params[1]);
  float *y = static_cast<float *>(params[2]);
  const int64_t n = numel(ndims[0], shapes[0], ndims[0]);
  for (int64_t i = 0; i < n; ++i) y[i] = g[i] / (1.f + std::exp(-g[i])) * u[i];
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

}  // namespace

extern "C" {
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
int Upsample2x(int np, void **p, int *nd, int64_t **s, const char **, void *, void *) {
  return upsample2x(np, p, nd, s);
}
}
