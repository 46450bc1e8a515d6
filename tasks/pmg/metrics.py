"""Evaluation metrics: SSIM (Wang et al., IEEE TIP 2004) in NumPy and summary statistics.

SSIM uses the paper's settings: 11×11 Gaussian window (σ = 1.5, truncated at 3.5σ as scikit-image
does), K1 = 0.01, K2 = 0.03, dynamic range L = 255 for uint8, population (not sample) variances, mean
over the valid region (windows entirely inside the image). This equals skimage's
``structural_similarity(..., gaussian_weights=True, sigma=1.5, use_sample_covariance=False,
data_range=255)``, which filters the whole image and then crops the border windows it would reflect.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

K1, K2 = 0.01, 0.03
SIGMA = 1.5
TRUNCATE = 3.5
LUMA = np.array([0.299, 0.587, 0.114])  # ITU-R BT.601, as PIL's convert("L")


def gaussian_window(sigma: float = SIGMA, truncate: float = TRUNCATE) -> np.ndarray:
    """Normalised 1-D Gaussian of radius int(truncate·σ + 0.5) (11 taps for σ = 1.5)."""
    radius = int(truncate * sigma + 0.5)
    x = np.arange(-radius, radius + 1, dtype=np.float64)
    g = np.exp(-0.5 * (x / sigma) ** 2)
    return g / g.sum()


def _filter(img: np.ndarray, g: np.ndarray) -> np.ndarray:
    """Separable 'valid' filtering of a 2-D array (H, W) -> (H-k+1, W-k+1)."""
    rows = sliding_window_view(img, g.size, axis=0) @ g        # (H-k+1, W)
    return sliding_window_view(rows, g.size, axis=1) @ g       # (H-k+1, W-k+1)


def to_gray(image: np.ndarray) -> np.ndarray:
    """(H, W) or (H, W, 3|4) image as float64 luma (alpha ignored)."""
    img = np.asarray(image, dtype=np.float64)
    if img.ndim == 2:
        return img
    if img.ndim == 3 and img.shape[2] in (3, 4):
        return img[..., :3] @ LUMA
    raise ValueError(f"expected an (H, W) or (H, W, 3) image, got shape {img.shape}")


def ssim_map(x: np.ndarray, y: np.ndarray, data_range: float = 255.0) -> np.ndarray:
    """Local SSIM of two same-size 2-D arrays over the valid region."""
    g = gaussian_window()
    if x.shape != y.shape:
        raise ValueError(f"SSIM needs images of the same size, got {x.shape} and {y.shape}; resize first")
    if min(x.shape) < g.size:
        raise ValueError(f"SSIM needs images of at least {g.size}x{g.size} pixels, got {x.shape}")
    c1, c2 = (K1 * data_range) ** 2, (K2 * data_range) ** 2
    mu_x, mu_y = _filter(x, g), _filter(y, g)
    var_x = _filter(x * x, g) - mu_x**2
    var_y = _filter(y * y, g) - mu_y**2
    cov = _filter(x * y, g) - mu_x * mu_y
    return ((2 * mu_x * mu_y + c1) * (2 * cov + c2)) / ((mu_x**2 + mu_y**2 + c1) * (var_x + var_y + c2))


def ssim(image_a: np.ndarray, image_b: np.ndarray, channels: str = "gray", data_range: float = 255.0) -> float:
    """Mean SSIM of two same-size images (uint8 RGB or grayscale; floats use `data_range`).

    Args:
        channels: "gray" compares BT.601 luma; "rgb" averages the SSIM of the three channels.
    """
    a, b = np.asarray(image_a), np.asarray(image_b)
    if channels == "gray":
        return float(ssim_map(to_gray(a), to_gray(b), data_range).mean())
    if channels == "rgb":
        if a.ndim != 3 or b.ndim != 3:
            raise ValueError(f"rgb SSIM needs (H, W, 3) images, got {a.shape} and {b.shape}")
        return float(np.mean([ssim_map(a[..., c].astype(np.float64), b[..., c].astype(np.float64), data_range).mean()
                              for c in range(3)]))
    raise ValueError(f"unknown channels {channels!r}; choose one of gray, rgb")


def mean_ssim_to(image: np.ndarray, references: Sequence[np.ndarray], channels: str = "gray") -> float:
    """Mean SSIM of one image against several (e.g. the user's history posters)."""
    if len(references) == 0:
        raise ValueError("mean_ssim_to needs at least one reference image")
    return float(np.mean([ssim(image, ref, channels) for ref in references]))


def describe(values: Sequence[float]) -> dict:
    """n, mean, std (population), min, max of the finite values (NaN means missing and is skipped)."""
    v = np.asarray(values, dtype=np.float64).reshape(-1)
    v = v[np.isfinite(v)]
    if v.size == 0:
        return {"n": 0, "mean": float("nan"), "std": float("nan"), "min": float("nan"), "max": float("nan")}
    return {"n": int(v.size), "mean": float(v.mean()), "std": float(v.std()), "min": float(v.min()),
            "max": float(v.max())}


def compare_to_baseline(d_p, d_p_base, d_t, d_t_base, higher_is_better: bool = True) -> dict:
    """Per-pair comparison of a method with the non-personalized baseline on the same (user, target) pairs.

    Returns:
        mean_d_p / mean_d_t (method), base_mean_d_p / base_mean_d_t, win_rate_d_p = share of pairs whose
        d_p beats the baseline's (ties count half; "beats" means lower when not higher_is_better, e.g. LPIPS), rel_change_d_t = mean d_t / baseline mean d_t − 1,
        rel_change_d_p likewise, n = number of pairs with all four values finite.
    """
    arrays = [np.asarray(a, dtype=np.float64).reshape(-1) for a in (d_p, d_p_base, d_t, d_t_base)]
    if len({a.shape for a in arrays}) != 1:
        raise ValueError(f"compare_to_baseline needs equally long arrays, got {[a.size for a in arrays]}")
    keep = np.logical_and.reduce([np.isfinite(a) for a in arrays])
    p, pb, t, tb = (a[keep] for a in arrays)
    if p.size == 0:
        raise ValueError("compare_to_baseline: no pair has all four scores")
    better = p > pb if higher_is_better else p < pb
    wins = np.mean(better + 0.5 * (p == pb))
    return {"n": int(p.size), "mean_d_p": float(p.mean()), "base_mean_d_p": float(pb.mean()),
            "mean_d_t": float(t.mean()), "base_mean_d_t": float(tb.mean()), "win_rate_d_p": float(wins),
            "rel_change_d_p": _rel(p.mean(), pb.mean()), "rel_change_d_t": _rel(t.mean(), tb.mean())}


def _rel(value: float, base: float) -> float:
    return float(value / base - 1.0) if base != 0 else float("nan")
