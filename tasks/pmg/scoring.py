"""Selection among candidates: z = α·log d_p + (1−α)·log d_t, argmax z.

The original reranked its two candidates by log s_item + 2·log s_pref with s = CLIP logits (100·cos)
of the image against the joined target-keyword text and the joined preference-keyword text; the
factor 2 is α/(1−α), so α = 2/3. When posters exist, image–image similarities (vs. the target poster
for d_t, mean vs. the history posters for d_p) are blended with the text ones geometrically
(log d = (1−β)·log d_text + β·log d_image). In the log domain a constant factor on a score only shifts
z by a constant, so text logits (~20–35) and image similarities (~50–90) mix without rescaling and
the argmax does not depend on either scale.

Non-positive similarities (100·cos can be ≤ 0 for an unrelated image) are clamped to SCORE_FLOOR
before the log: the score stays finite and ranks below every positive one. NaN means "missing" and
propagates to z; select_best never picks a NaN z while a finite one exists.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

DEFAULT_ALPHA = 2.0 / 3.0  # the original's weight 2 on log d_p
DEFAULT_IMAGE_WEIGHT = 0.5  # β: share of the image–image similarity when posters are given
SCORE_FLOOR = 1e-4


@dataclass(frozen=True)
class CandidateScores:
    """Every score of one candidate; d_p/d_t are the blended values z was computed from."""
    d_p: float
    d_t: float
    z: float
    d_p_text: float
    d_t_text: float
    d_p_image: float | None = None
    d_t_image: float | None = None


@dataclass(frozen=True)
class SweepPoint:
    """Selection at one α over many (user, target) pairs: mean selected d_p and d_t, the picks."""
    alpha: float
    mean_d_p: float
    mean_d_t: float
    picks: tuple[int, ...]


def check_alpha(alpha: float) -> float:
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must lie in [0, 1], got {alpha}")
    return float(alpha)


def _log(d) -> np.ndarray:
    return np.log(np.maximum(np.asarray(d, dtype=np.float64), SCORE_FLOOR))


def _out(x: np.ndarray):
    return float(x) if np.ndim(x) == 0 else x


def clip_texts(target_kw: Sequence[str], pref_kw: Sequence[str]) -> tuple[str, str]:
    """The two texts CLIP compares each image with, as the original: (target keywords, preference keywords)."""
    return ", ".join(target_kw), ", ".join(pref_kw)


def _at(arr, k: int) -> float | None:
    return None if arr is None else float(arr[k])


def z_score(d_p, d_t, alpha: float = DEFAULT_ALPHA):
    """α·log d_p + (1−α)·log d_t, scores clamped to SCORE_FLOOR; scalars give a float, arrays an array."""
    alpha = check_alpha(alpha)
    return _out(alpha * _log(d_p) + (1.0 - alpha) * _log(d_t))


def blend_similarity(text_sim, image_sim=None, image_weight: float = DEFAULT_IMAGE_WEIGHT):
    """exp((1−β)·log text + β·log image); the text score alone when there is no image score."""
    if image_sim is None:
        return _out(np.asarray(text_sim, dtype=np.float64))
    if not 0.0 <= image_weight <= 1.0:
        raise ValueError(f"image_weight must lie in [0, 1], got {image_weight}")
    return _out(np.exp((1.0 - image_weight) * _log(text_sim) + image_weight * _log(image_sim)))


def select_best(z_scores: Sequence[float]) -> int:
    """Index of the largest z; ties go to the lowest index, NaN never wins over a number."""
    z = np.asarray(z_scores, dtype=np.float64).reshape(-1)
    if z.size == 0 or np.isnan(z).all():
        raise ValueError("cannot select a candidate: no finite z score")
    return int(np.argmax(np.where(np.isnan(z), -np.inf, z)))


def score_candidates(d_p_text, d_t_text, d_p_image=None, d_t_image=None, alpha: float = DEFAULT_ALPHA,
                     image_weight: float = DEFAULT_IMAGE_WEIGHT) -> list[CandidateScores]:
    """Scores of K candidates.

    Args:
        d_p_text, d_t_text: [K] CLIP 100·cos of each image vs. preference / target keyword text.
        d_p_image: [K] or [K, H] image vs. history posters (averaged over H); None without posters.
        d_t_image: [K] image vs. the target poster; None without a poster.
    """
    p_text = np.asarray(d_p_text, dtype=np.float64).reshape(-1)
    t_text = np.asarray(d_t_text, dtype=np.float64).reshape(-1)
    p_img = None if d_p_image is None else np.asarray(d_p_image, dtype=np.float64)
    if p_img is not None and p_img.ndim == 2:
        p_img = p_img.mean(axis=1)
    t_img = None if d_t_image is None else np.asarray(d_t_image, dtype=np.float64).reshape(-1)
    for name, arr in (("d_t_text", t_text), ("d_p_image", p_img), ("d_t_image", t_img)):
        if arr is not None and arr.shape != p_text.shape:
            raise ValueError(f"{name} has {arr.shape[0]} candidates but d_p_text has {p_text.shape[0]}")
    d_p = np.asarray(blend_similarity(p_text, p_img, image_weight)).reshape(-1)
    d_t = np.asarray(blend_similarity(t_text, t_img, image_weight)).reshape(-1)
    z = np.asarray(z_score(d_p, d_t, alpha)).reshape(-1)
    return [CandidateScores(float(d_p[k]), float(d_t[k]), float(z[k]), float(p_text[k]), float(t_text[k]),
                            _at(p_img, k), _at(t_img, k)) for k in range(p_text.shape[0])]


def alpha_sweep(d_p, d_t, alphas: Sequence[float] = tuple(np.linspace(0.0, 1.0, 11))) -> list[SweepPoint]:
    """For each α, pick the best candidate of every pair ([N, K] arrays) and average the picked d_p, d_t.

    The curve (mean_d_t, mean_d_p) over α is the personalization/fidelity trade-off plot of the evaluation.
    """
    d_p = np.atleast_2d(np.asarray(d_p, dtype=np.float64))
    d_t = np.atleast_2d(np.asarray(d_t, dtype=np.float64))
    if d_p.shape != d_t.shape:
        raise ValueError(f"d_p has shape {d_p.shape} but d_t has shape {d_t.shape}")
    rows = np.arange(d_p.shape[0])
    points = []
    for alpha in alphas:
        z = np.asarray(z_score(d_p, d_t, alpha))
        picks = np.array([select_best(row) for row in z], dtype=np.int64)
        points.append(SweepPoint(float(alpha), float(np.mean(d_p[rows, picks])), float(np.mean(d_t[rows, picks])),
                                 tuple(int(i) for i in picks)))
    return points
