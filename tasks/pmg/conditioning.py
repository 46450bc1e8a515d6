"""Conditioning of the generator: target and preference keywords, weights, soft tokens, candidates, seeds.

The original built one prompt string, "movie poster, <title>, named '<title>', <5 item keywords>",
followed by the preference keyword list repeated `style_weight` times, and generated two candidates
(style_weight 1 and 2). Here the preference text is a separate segment with a real weight (its token
embeddings are scaled, see `weight_token_embeddings`); the repetition stays available as mode
"repeat". The M soft tokens are appended to the text-encoder output, the unconditional branch is
extended to the same length. Pure functions; arrays are NumPy.
"""
from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from typing import Iterable, Sequence

import numpy as np

from tasks.pmg.history import clean_keywords, clean_title
from tasks.pmg.prompts import MAX_TITLE_CHARS, NEGATIVE_PROMPTS, sanitize_field

SEGMENT_MODES = ("weight", "repeat")
UNCOND_FILLS = ("last", "zeros")
DEFAULT_WEIGHTS = (1.0, 2.0)  # the original's style_weight grid for movies
SEED_SPACE = 2**31  # fits int32 seeds (MindSpore) and NumPy Generators alike
MAX_KEYWORDS = 32
MAX_KEYWORD_CHARS = MAX_TITLE_CHARS + 10  # "named '<title>'" is the longest keyword
N_TARGET_KEYWORDS = 5  # item keywords in the target part of the prompt, as the original


@dataclass(frozen=True)
class Candidate:
    """One generation per (user, target): position in the grid, seed slot, preference weight w."""
    index: int
    seed_slot: int
    w: float


def negative_prompt(scene: str = "movie") -> str:
    """The scene's negative prompt (unconditional branch of classifier-free guidance)."""
    if scene not in NEGATIVE_PROMPTS:
        raise ValueError(f"unknown scene {scene!r}; choose one of {', '.join(NEGATIVE_PROMPTS)}")
    return NEGATIVE_PROMPTS[scene]


def target_keywords(title: str, item_keywords: Iterable[str] | None, n: int = N_TARGET_KEYWORDS,
                    with_title: bool = True) -> list[str]:
    """["movie poster", title, "named '<title>'", kw1..kwn] as the original (title without its year).

    `with_title=False` leaves the title out, for generators whose captions never had titles.
    """
    title = clean_title(title) if with_title else ""
    head = ["movie poster"] + ([title, f"named '{title}'"] if title else [])
    return head + clean_keywords(item_keywords, n)


def sd_prompt_segments(target_kw: Sequence[str], pref_kw: Sequence[str], w: float,
                       mode: str = "weight") -> list[tuple[str, float]]:
    """Prompt segments (text, weight) for the SD text encoder; their texts concatenate to the full prompt.

    weight mode: the target text at 1.0, then ", <preference keywords>" at weight w.
    repeat mode: the original's string, the preference list repeated round(w) times, all at 1.0.
    The preference segment is left out when there are no preference keywords or its weight is 0.
    """
    if mode not in SEGMENT_MODES:
        raise ValueError(f"unknown segment mode {mode!r}; choose one of {', '.join(SEGMENT_MODES)}")
    if not math.isfinite(w) or w < 0:
        raise ValueError(f"preference weight w must be a finite number >= 0, got {w}")
    target = ", ".join(_keywords(target_kw))
    pref = ", ".join(_keywords(pref_kw))
    sep = ", " if target else ""
    segments = [(target, 1.0)] if target else []
    if pref and mode == "weight" and w > 0:
        segments.append((sep + pref, float(w)))
    repeats = math.floor(w + 0.5)  # round half up; Python's round() would send 2.5 to 2
    if pref and mode == "repeat" and repeats > 0:
        segments.append(((sep + pref) + (", " + pref) * (repeats - 1), 1.0))
    return segments


def _keywords(keywords: Iterable[str] | None) -> list[str]:
    """Sanitized, non-empty keywords (commas inside a keyword, e.g. in "Matrix, The", are kept)."""
    cleaned = (sanitize_field(k, MAX_KEYWORD_CHARS) for k in list(keywords or ())[:MAX_KEYWORDS])
    return [k for k in cleaned if k]


def prompt_text(segments: Sequence[tuple[str, float]]) -> str:
    """The plain prompt string of some segments (recorded in lineage; weights are recorded separately)."""
    return "".join(text for text, _ in segments)


def candidate_grid(k: int = 2, seeds: Sequence[int] = (0,), weights: Sequence[float] = DEFAULT_WEIGHTS) -> list[Candidate]:
    """The first `k` (seed slot, w) pairs, weight-major within each seed slot.

    With the defaults, K=2 gives the original's two candidates (w = 1 and 2, same seed slot, so they
    differ only by w). When `k` exceeds len(seeds)*len(weights), further seed slots are added.
    """
    if k < 1:
        raise ValueError(f"number of candidates k must be at least 1, got {k}")
    if not weights:
        raise ValueError("candidate_grid needs at least one preference weight")
    slots = list(dict.fromkeys(int(s) for s in seeds)) or [0]
    while len(slots) * len(weights) < k:
        slots.append(max(slots) + 1)
    pairs = [(s, float(w)) for s in slots for w in weights][:k]
    return [Candidate(i, s, w) for i, (s, w) in enumerate(pairs)]


def candidates_for(pref_keywords: Sequence[str], k: int, weights: Sequence[float] = DEFAULT_WEIGHTS) -> list[Candidate]:
    """The candidate grid for one user: without preference keywords the weight changes nothing, so vary the seed."""
    return candidate_grid(k, weights=tuple(weights) if pref_keywords else (1.0,))


def check_seed(seed: int) -> int:
    """A run's base seed: a non-negative integer that fits the warehouse's BIGINT (NumPy refuses negative seeds)."""
    if not 0 <= int(seed) < 2**63:
        raise ValueError(f"--seed must be a non-negative integer below 2^63, got {seed}")
    return int(seed)


def candidate_seed(base_seed: int, user_id, movie_id, k: int) -> int:
    """Seed of seed slot `k` for (user, target): a sha256 of the four values, stable across runs and machines."""
    key = f"pmg-seed-1:{int(base_seed)}:{user_id}:{movie_id}:{int(k)}".encode("utf-8")
    return int.from_bytes(hashlib.sha256(key).digest()[:8], "big") % SEED_SPACE


def weight_token_embeddings(hidden: np.ndarray, token_weights: np.ndarray, keep_mean: bool = True) -> np.ndarray:
    """Scale text-encoder outputs per token (hidden [B, T, D], weights [B, T] or [T]).

    As the A1111/Compel prompt weighting: each token's embedding is multiplied by its weight, then
    (keep_mean) the whole sequence is rescaled so its mean equals the unweighted mean, which keeps the
    overall magnitude the UNet was trained on while shifting emphasis between tokens.
    """
    hidden = np.asarray(hidden, dtype=np.float32)
    weights = np.broadcast_to(np.asarray(token_weights, dtype=np.float32), hidden.shape[:2])
    out = hidden * weights[..., None]
    if keep_mean:
        before = hidden.mean(axis=(1, 2), keepdims=True)
        after = out.mean(axis=(1, 2), keepdims=True)
        out = out * np.divide(before, after, out=np.ones_like(after), where=np.abs(after) > 1e-12)
    return out


def append_soft_tokens(text_emb: np.ndarray, soft_emb: np.ndarray, w_soft: float = 1.0) -> np.ndarray:
    """Text-encoder output [B, T, D] followed by the user's soft tokens [B, M, D] (or [M, D]) times w_soft."""
    text_emb = np.asarray(text_emb, dtype=np.float32)
    soft_emb = np.asarray(soft_emb, dtype=np.float32)
    if soft_emb.ndim == 2:
        soft_emb = np.broadcast_to(soft_emb, (text_emb.shape[0],) + soft_emb.shape)
    if soft_emb.shape[-1] != text_emb.shape[-1]:
        raise ValueError(f"soft tokens have width {soft_emb.shape[-1]} but the SD text encoder has width "
                         f"{text_emb.shape[-1]}; use a soft prompt trained for this SD checkpoint")
    if soft_emb.shape[0] != text_emb.shape[0]:
        raise ValueError(f"batch of soft tokens ({soft_emb.shape[0]}) differs from the text batch ({text_emb.shape[0]})")
    return np.concatenate([text_emb, float(w_soft) * soft_emb], axis=1)


def extend_unconditional(uncond_emb: np.ndarray, m: int, fill: str = "last") -> np.ndarray:
    """Negative-prompt encoding [B, T, D] extended by m tokens to match a conditional branch with soft tokens.

    fill "last" repeats the final (padding) token, i.e. the same as encoding a longer padded prompt;
    "zeros" appends zero vectors (which still take attention mass in cross-attention).
    """
    if fill not in UNCOND_FILLS:
        raise ValueError(f"unknown fill {fill!r}; choose one of {', '.join(UNCOND_FILLS)}")
    uncond_emb = np.asarray(uncond_emb, dtype=np.float32)
    if m <= 0:
        return uncond_emb
    b, _, d = uncond_emb.shape
    extra = (np.repeat(uncond_emb[:, -1:], m, axis=1) if fill == "last" else np.zeros((b, m, d), np.float32))
    return np.concatenate([uncond_emb, extra], axis=1)
