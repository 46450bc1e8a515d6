"""The independent evaluation CNN of the miniature world (MindSpore, classic `nn` only).

It reads a poster's background genre, motif, accent colour and title band, and is trained on
procedurally rendered posters only (never on generated ones, never used to train a generator), so
its accuracy on generated posters is an honest measure of what a generator learned. Architecture
and numbers to beat: ../shared/reference/miniworld.md §1.2 and §2.1 (5 conv + BatchNorm, 2 epochs:
bg 99.5 %, motif 97.9 %, accent 99.8 % in torch). Unlike the study's global pooling, the head sees a
4×4 map, because the title band's position (top/bottom) is a spatial fact.
"""
from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import mindspore as ms
from mindspore import nn, ops

from pmg_models import ops as P, runtime
from pmg_models.checkpoint import load_into, save_safetensors, weight_files
from tasks.miniworld import posters, world

log = logging.getLogger(__name__)
HEAD_NAMES = tuple(world.HEADS)           # ("bg", "motif", "accent", "band")
SCORED = ("bg", "motif", "accent")        # the heads whose joint accuracy is reported as "all"


@dataclass(frozen=True)
class ClassifierConfig:
    size: int = 32                        # input side; larger posters are BOX-downsampled to it
    channels: tuple = (32, 64, 128)       # conv widths of the three stages (2 + 2 + 1 convs)
    heads: tuple = tuple(world.HEADS.items())  # (name, classes) per output head

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=1)

    @classmethod
    def from_json(cls, text: str) -> "ClassifierConfig":
        raw = json.loads(text)
        return cls(size=int(raw["size"]), channels=tuple(raw["channels"]),
                   heads=tuple((str(n), int(k)) for n, k in raw["heads"]))


class ConvBlock(nn.Cell):
    """3×3 conv (torch-style padding, bias) → BatchNorm → ReLU."""

    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.conv = P.Conv2d(cin, cout, 3, padding=1)
        self.bn = nn.BatchNorm2d(cout, momentum=0.9)
        self.relu = nn.ReLU()

    def construct(self, x):
        return self.relu(self.bn(self.conv(x)))


class PosterClassifier(nn.Cell):
    """Five conv blocks over a 32² poster, then one linear head per attribute on the 4×4 map."""

    def __init__(self, config: ClassifierConfig):
        super().__init__()
        c1, c2, c3 = config.channels
        self.features = nn.SequentialCell([
            ConvBlock(3, c1), ConvBlock(c1, c1), nn.MaxPool2d(2, 2),      # 32 → 16
            ConvBlock(c1, c2), ConvBlock(c2, c2), nn.MaxPool2d(2, 2),     # 16 → 8
            ConvBlock(c2, c3), nn.AvgPool2d(2, 2),                        # 8 → 4
        ])
        flat = c3 * (config.size // 8) ** 2
        self.heads = nn.CellList([nn.Dense(flat, n) for _, n in config.heads])

    def construct(self, x):
        h = self.features(x)
        h = h.reshape(h.shape[0], -1)  # (B, C·4·4)
        logits = ()
        for head in self.heads:  # (B, classes) per head, in config.heads order
            logits = logits + (head(h),)
        return logits


def init_weights(net: nn.Cell, seed: int) -> None:
    """He-normal conv/dense weights and zero biases from a host RNG, so training is reproducible."""
    rng = runtime.host_rng(seed)
    for name, p in net.parameters_and_names():
        if name.endswith(".weight"):
            fan_in = int(np.prod(p.shape[1:]))
            arr = rng.standard_normal(p.shape, dtype=np.float32) * math.sqrt(2.0 / fan_in)
            p.set_data(ms.Tensor(arr))
        elif name.endswith(".bias"):
            p.set_data(ms.Tensor(np.zeros(p.shape, np.float32)))


def build(config: ClassifierConfig = ClassifierConfig(), seed: int = 0) -> PosterClassifier:
    """A freshly initialised classifier (training mode) that carries its config as `net.config`."""
    runtime.setup()
    net = PosterClassifier(config)
    init_weights(net, seed)
    net.config = config
    return net


def to_input(images: np.ndarray, size: int) -> np.ndarray:
    """uint8 (N, H, W, 3) → float32 (N, 3, size, size) in [-1, 1]; H must be a multiple of `size`."""
    images = np.asarray(images)
    if images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(f"images must be uint8 (N, H, W, 3), got shape {images.shape}")
    n, h, w, _ = images.shape
    if h != w or h % size:
        raise ValueError(f"posters must be square with a side that is a multiple of {size}, got {h}x{w}")
    x = images.astype(np.float32)
    if h != size:  # BOX downsample, like the renderer's
        f = h // size
        x = x.reshape(n, size, f, size, f, 3).mean(axis=(2, 4))
    return np.ascontiguousarray((x / 127.5 - 1.0).transpose(0, 3, 1, 2))


def save(net: PosterClassifier, config: ClassifierConfig, out_dir, metrics: dict | None = None) -> Path:
    """Write config.json + model.safetensors (+ metrics.json) into `out_dir`."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tensors = {p.name: p.asnumpy() for p in net.get_parameters()}
    save_safetensors(out / "model.safetensors", tensors, metadata={"format": "pmg-miniworld-classifier"})
    (out / "config.json").write_text(config.to_json())
    if metrics is not None:
        (out / "metrics.json").write_text(json.dumps(metrics, indent=1))
    return out


def load_classifier(model_dir) -> PosterClassifier:
    """Build the net from `model_dir/config.json` and load its weights strictly (eval mode)."""
    model_dir = Path(model_dir)
    config = ClassifierConfig.from_json((model_dir / "config.json").read_text())
    net = build(config)
    load_into(net, weight_files(model_dir))
    net.set_train(False)
    return net


def _eval_forward(self, x):
    # Not named `_predict`: ms.jit on a def whose first argument is a Cell dispatched that name to
    # nn.Cell._predict and silently returned (False, None).
    return self(x)


_compiled_predict = None


def _predict_fn():
    """The forward pass, compiled once per process when jit is enabled (the net is an argument)."""
    global _compiled_predict
    if _compiled_predict is None:
        _compiled_predict = runtime.jit(_eval_forward)
    return _compiled_predict


def classify(net: PosterClassifier, images: np.ndarray, batch: int = 256) -> dict[str, np.ndarray]:
    """Predicted class index per head for uint8 posters (N, H, W, 3); see world.labels for the meaning."""
    config = net.config
    x = to_input(images, config.size)
    net.set_train(False)
    predict = _predict_fn()
    out = {h: [] for h, _ in config.heads}
    for start in range(0, len(x), batch):
        chunk = x[start:start + batch]
        padded = np.zeros((batch,) + chunk.shape[1:], np.float32)  # one static shape → one compile
        padded[:len(chunk)] = chunk
        logits = predict(net, runtime.to_tensor(padded))
        for (h, _), lg in zip(config.heads, logits):
            out[h].append(runtime.to_numpy(lg)[:len(chunk)].argmax(-1))
    return {h: np.concatenate(v).astype(np.int32) if v else np.zeros(0, np.int32) for h, v in out.items()}


def accuracy(net: PosterClassifier, images: np.ndarray, labels: dict) -> dict[str, float]:
    """Per-head accuracy for the heads present in `labels`, plus "all" (bg, motif and accent all right)."""
    pred = classify(net, images)
    result = {h: float(np.mean(pred[h] == np.asarray(labels[h]))) for h in labels if h in pred}
    if all(h in labels for h in SCORED):
        ok = np.ones(len(images), bool)
        for h in SCORED:
            ok &= pred[h] == np.asarray(labels[h])
        result["all"] = float(ok.mean())
    return result


def _lr_schedule(steps: int, peak: float, warmup: int) -> list[float]:
    """Linear warm-up then cosine decay to 10 % of the peak, one value per step."""
    out = []
    for s in range(steps):
        if s < warmup:
            out.append(peak * (s + 1) / warmup)
        else:
            t = (s - warmup) / max(1, steps - warmup)
            out.append(peak * (0.1 + 0.45 * (1 + math.cos(math.pi * t))))
    return out


TRAIN_MODES = ("pynative", "grad", "step")


def make_train_step(net: PosterClassifier, optimizer, mode: str | None = None) -> Callable:
    """One optimisation step `step(x, bg, motif, accent, band) -> loss`: value_and_grad, then AdamW.

    Modes: "grad" compiles forward+backward (ms.jit on value_and_grad) and runs the optimizer in
    blocking PyNative, the fastest measured on CPU; "step" compiles the whole step, optimizer
    included; "pynative" compiles nothing. Default: "grad" if runtime.jit_enabled() else "pynative".
    """
    mode = mode or ("grad" if runtime.jit_enabled() else "pynative")
    if mode not in TRAIN_MODES:
        raise ValueError(f"train mode {mode!r} is not supported; choose one of {TRAIN_MODES}")
    runtime.setup()
    loss_fn = nn.SoftmaxCrossEntropyWithLogits(sparse=True, reduction="mean")

    def forward(x, bg, motif, accent, band):
        logits = net(x)
        return (loss_fn(logits[0], bg) + loss_fn(logits[1], motif)
                + loss_fn(logits[2], accent) + loss_fn(logits[3], band))

    grad_fn = ms.value_and_grad(forward, None, optimizer.parameters)
    if mode == "grad":
        grad_fn = ms.jit(grad_fn)

    def train_step(x, bg, motif, accent, band):
        loss, grads = grad_fn(x, bg, motif, accent, band)
        return ops.depend(loss, optimizer(grads))

    return ms.jit(train_step) if mode == "step" else train_step


def make_optimizer(net: PosterClassifier, lr, weight_decay: float = 1e-4):
    """AdamW (nn.AdamWeightDecay); no decay on BatchNorm and bias parameters."""
    params = net.trainable_params()
    decay = [p for p in params if p.name.endswith(".weight")]
    rest = [p for p in params if not p.name.endswith(".weight")]
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": rest, "weight_decay": 0.0}]
    return nn.AdamWeightDecay(groups, learning_rate=lr, eps=1e-8)


def train_classifier(out_dir, seed: int = 0, steps: int = 600, batch: int = 128, smoke: bool = False,
                     n_train: int | None = None, n_val: int | None = None, lr: float = 2e-3,
                     mode: str | None = None, on_step: Callable[[int, float], None] | None = None) -> dict:
    """Render posters, train the classifier, validate on separately seeded posters, save it.

    Args:
        out_dir: gets config.json, model.safetensors and metrics.json.
        seed: seeds weights, batches, and the train (seed·2+1) and validation (seed·2+2) renders.
        steps, batch: optimisation steps and batch size.
        smoke: tiny data sets (512 train / 256 val) for tests and CI.
        mode: see make_train_step.
        on_step: called as on_step(step, loss) after every step (progress output).
    Returns:
        metrics: validation accuracy per head and "all", loss curve ends, timings.
    """
    n_train = n_train or (512 if smoke else 30_000)
    n_val = n_val or (256 if smoke else 3_000)
    config = ClassifierConfig()
    t0 = time.perf_counter()
    train = posters.sample_dataset(n_train, seed * 2 + 1, config.size)
    val = posters.sample_dataset(n_val, seed * 2 + 2, config.size)
    t_data = time.perf_counter() - t0
    net = build(config, seed)
    net.set_train(True)
    optimizer = make_optimizer(net, _lr_schedule(steps, lr, max(1, min(100, steps // 10))))
    step_fn = make_train_step(net, optimizer, mode)
    x_all = to_input(train.images, config.size)
    y_all = [train.labels[h].astype(np.int32) for h in HEAD_NAMES]
    rng = runtime.host_rng(seed + 7)
    order, pos, losses, step_times = rng.permutation(n_train), 0, [], []
    for step in range(steps):
        if pos + batch > n_train:
            order, pos = rng.permutation(n_train), 0
        idx = order[pos:pos + batch]
        pos += batch
        ts = time.perf_counter()
        loss = step_fn(ms.Tensor(x_all[idx]), *(ms.Tensor(y[idx]) for y in y_all))
        losses.append(float(loss.asnumpy()))
        step_times.append(time.perf_counter() - ts)
        if on_step is not None:
            on_step(step, losses[-1])
    t_train = time.perf_counter() - t0 - t_data
    net.set_train(False)
    val_acc = accuracy(net, val.images, val.labels)
    steady = step_times[1:] or step_times
    metrics = {
        "val_accuracy": val_acc, "n_train": n_train, "n_val": n_val, "steps": steps, "batch": batch,
        "epochs": round(steps * batch / n_train, 2), "seed": seed, "mode": mode or ("grad" if runtime.jit_enabled() else "pynative"),
        "loss_first": float(np.mean(losses[:max(1, min(10, steps // 4))])),
        "loss_last": float(np.mean(losses[-max(1, min(10, steps // 4)):])),
        "seconds_data": round(t_data, 2), "seconds_train": round(t_train, 2),
        "seconds_first_step": round(step_times[0], 3), "seconds_per_step": round(float(np.median(steady)), 4),
    }
    save(net, config, out_dir, metrics)
    log.info("classifier: %s", metrics)
    return metrics
