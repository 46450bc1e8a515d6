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
