"""Shared pieces of the miniature-world training stages: schedules, AdamW, the compiled step, EMA, caption sets.

The step pattern is the one the evaluation classifier measured fastest on CPU (classifier.py): forward
and backward compiled together (`ms.jit` over `value_and_grad`, global-norm clipping included), the
`nn.AdamWeightDecay` update run eagerly in blocking PyNative.
"""
from __future__ import annotations

import math
import time
from typing import Callable, Sequence

import numpy as np
import mindspore as ms
from mindspore import nn, ops

from pmg_models import runtime
from tasks.miniworld import world


def lr_schedule(steps: int, peak: float, warmup: int, floor: float = 0.1) -> list[float]:
    """Linear warm-up to `peak`, then cosine decay to `floor`·peak at the last step; one value per step."""
    warmup = max(1, min(warmup, steps))
    out = []
    for s in range(steps):
        if s < warmup:
            out.append(peak * (s + 1) / warmup)
        else:
            t = (s - warmup) / max(1, steps - warmup - 1)
            out.append(peak * (floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * min(t, 1.0)))))
    return out


def bias_corrected(lr: Sequence[float], beta1: float = 0.9, beta2: float = 0.999) -> list[float]:
    """Per-step learning rates that give nn.AdamWeightDecay torch.optim.AdamW's bias-corrected step.

    MindSpore's AdamWeightDecay (BERT-style) divides the raw moments, m / (√v + ε); AdamW divides the
    corrected ones, which equals scaling the rate by √(1 − β2^t) / (1 − β1^t). Without it the early
    steps are up to ~6× larger, and the tiny Llama trailed transformers' AdamW on the same pairs.
    (The decoupled weight decay then scales the same way: a little weaker early, equal later.)
    """
    return [r * math.sqrt(1 - beta2 ** (t + 1)) / (1 - beta1 ** (t + 1)) for t, r in enumerate(lr)]


def adamw(params: Sequence, lr: list[float], weight_decay: float, bias_correction: bool = True):
    """nn.AdamWeightDecay; matrices and conv kernels decay, biases/norms/embeddings of rank 1 do not.

    `bias_correction` (see `bias_corrected`) makes the update torch.optim.AdamW's; the CLIP and SD
    stages were trained without it and keep that setting so they reproduce.
    """
    params = list(params)
    decay = [p for p in params if len(p.shape) > 1]
    rest = [p for p in params if len(p.shape) <= 1]
    groups = [{"params": decay, "weight_decay": weight_decay}]
    if rest:
        groups.append({"params": rest, "weight_decay": 0.0})
    rates = bias_corrected(lr) if bias_correction else list(lr)
    return nn.AdamWeightDecay(groups, learning_rate=rates, beta1=0.9, beta2=0.999, eps=1e-8)


def make_step(forward: Callable, optimizer, clip: float = 1.0) -> Callable:
    """`step(*inputs) -> loss`: loss and clipped gradients in one compiled call, then the AdamW update."""
    runtime.setup()
    value_and_grad = ms.value_and_grad(forward, None, optimizer.parameters)

    def loss_and_grads(*inputs):
        loss, grads = value_and_grad(*inputs)
        return loss, ops.clip_by_global_norm(grads, clip)

    compiled = runtime.jit(loss_and_grads)

    def step(*inputs):
        loss, grads = compiled(*inputs)
        optimizer(grads)
        return float(loss.asnumpy())

    return step


class EMA:
    """Exponential moving average of parameters, kept on the host (float32 NumPy)."""

    def __init__(self, params: Sequence, decay: float):
        self.params = list(params)
        self.decay = float(decay)
        self.shadow = [p.asnumpy().astype(np.float32).copy() for p in self.params]

    def update(self) -> None:
        d = np.float32(self.decay)
        for s, p in zip(self.shadow, self.params):
            s *= d
            s += (np.float32(1) - d) * p.asnumpy()

    def arrays(self) -> dict[str, np.ndarray]:
        return {p.name: s for p, s in zip(self.params, self.shadow)}


def half(tensors: dict) -> dict:
    """The tensors as float16, the shipped format (every loader casts to the dtype policy on load).

    The stages evaluate their gates on the saved fp16 folders, so the gates measure what is shipped.
    """
    return {k: np.asarray(v).astype(np.float16) for k, v in tensors.items()}


def falling(losses: Sequence[float]) -> dict:
    """First/last-quarter mean losses and whether the loss fell (the smoke check)."""
    q = max(1, len(losses) // 4)
    first, last = float(np.mean(losses[:q])), float(np.mean(losses[-q:]))
    return {"loss_first": round(first, 5), "loss_last": round(last, 5), "loss_fell": bool(last < first)}


class Progress:
    """Progress lines `[stage] step i/n loss ... (s/step)` through `emit` every `every` steps and at the end."""

    def __init__(self, stage: str, steps: int, emit: Callable[[str], None] | None, every: int = 25):
        self.stage, self.steps, self.emit, self.every = stage, steps, emit, max(1, every)
        self.t0 = time.perf_counter()
        self.losses: list[float] = []

    def __call__(self, step: int, loss: float) -> None:
        self.losses.append(loss)
        if self.emit is not None and ((step + 1) % self.every == 0 or step + 1 == self.steps):
            dt = (time.perf_counter() - self.t0) / (step + 1)
            recent = float(np.mean(self.losses[-self.every:]))
            self.emit(f"[{self.stage}] step {step + 1}/{self.steps} loss {recent:.4f} ({dt:.2f} s/step)")

    @property
    def seconds(self) -> float:
        return time.perf_counter() - self.t0


def all_captions(with_bands: bool = True) -> list[tuple[tuple[str, ...], world.MovieAttribute | None]]:
    """Every (blocks, band) a world caption can describe: 18 single + 306 ordered pairs, × 6 bands + none."""
    blocks = [(g,) for g in world.GENRES] + [(a, b) for a in world.GENRES for b in world.GENRES if a != b]
    bands = [None, *world.ATTRIBUTES] if with_bands else [None]
    return [(b, a) for b in blocks for a in bands]
