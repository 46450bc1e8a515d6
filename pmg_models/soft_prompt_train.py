"""Training the PMG soft prompt: the standard denoising loss of a frozen Stable Diffusion.

The original never released its training (../shared/reference/pmg_method.md §3.2). Our design:
for a (user, target) example, the UNet is conditioned as at generation time, on the SD text-encoder
output of the target keywords followed by the user's M soft tokens (× w_soft); the target poster's
VAE latents are noised at a random timestep and the UNet's prediction is compared with ε or v (the
scheduler's prediction_type). Gradients flow through the frozen UNet into the mapping, the
multimodal tokens and the P-Tuning v2 prefix (SoftPrompt); the LLM, UNet, VAE and text encoder stay
frozen.

Host-side pieces keep runs reproducible and resumable on any device:
* timesteps, noise and batch order come from host RNGs derived from (seed, step), so a resumed run
  draws exactly what the uninterrupted run would have drawn, without saving RNG state;
* AdamW (decoupled weight decay, bias correction, as torch.optim.AdamW) runs in NumPy on the
  ~4 M trainable parameters, so its state is plain arrays saved next to each checkpoint;
* a fixed evaluation set (fixed examples, timesteps and noise) gives a comparable loss curve.
The gradient step and the evaluation loss are compiled with runtime.jit (PyNative with PMG_JIT=0); no
device-specific code: MindSpore runs on the device set up by pmg_models.runtime.
"""
from __future__ import annotations

import csv
import dataclasses
import hashlib
import json
import logging
import math
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import mindspore as ms
from mindspore import nn, ops

from pmg_models import checkpoint, runtime
from pmg_models import soft_prompt as S

log = logging.getLogger(__name__)
STATE_FORMAT = "pmg-soft-prompt-train-1"
CURVE_FIELDS = ("step", "train_loss", "eval_loss", "lr", "grad_norm")
FINAL_NAME = "soft_prompt.safetensors"
# Resuming may change these; every other TrainConfig field must equal the checkpoint's.
RESUMABLE_CHANGES = ("steps", "checkpoint_every", "eval_every", "keep_checkpoints")


@dataclass(frozen=True)
class TrainConfig:
    steps: int = 1000              # optimizer steps
    lr: float = 1e-3               # peak learning rate (constant after warmup)
    warmup_steps: int = 0          # linear warmup from 0
    weight_decay: float = 0.01     # decoupled (AdamW); not applied to biases
    beta1: float = 0.9
    beta2: float = 0.999
    eps: float = 1e-8
    max_grad_norm: float = 1.0     # global-norm clipping; 0 disables it
    batch: int = 4                 # examples per micro-batch
    grad_accum: int = 1            # micro-batches per optimizer step
    w_soft: float = 1.0            # scale of the soft tokens in the UNet context (as at generation)
    seed: int = 0                  # batch order, timesteps and noise
    eval_examples: int = 8         # fixed evaluation set: the first N examples ...
    eval_timesteps: int = 4        # ... each at this many fixed, evenly spread timesteps
    eval_every: int = 10           # evaluation loss every N steps (and at the first and last)
    checkpoint_every: int = 100    # state saved every N steps (and at the last)
    keep_checkpoints: int = 3      # most recent step checkpoints kept

    def __post_init__(self):
        for name in ("steps", "batch", "grad_accum", "eval_every", "checkpoint_every", "keep_checkpoints",
                     "eval_examples", "eval_timesteps"):
            if getattr(self, name) < 1:
                raise ValueError(f"training: {name.replace('_', '-')} must be at least 1, got {getattr(self, name)}")
        if not self.lr > 0:
            raise ValueError(f"training: lr must be positive, got {self.lr}")
        if self.seed < 0:
            raise ValueError(f"training: seed must be a non-negative integer, got {self.seed}")

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class Example:
    """One training pair: the user's soft-prompt text, the SD prompt of the target, its poster."""
    key: str                       # e.g. "user:target", identifies the example in checkpoints
    soft_text: str                 # tasks.pmg.prompts.build_soft_prompt(...)
    prompt: object                 # SD prompt: str or [(text, weight)] segments (target keywords)
    image: np.ndarray              # uint8 (H, W, 3) target poster


@dataclass
class Prepared:
    """Frozen inputs computed once: latents (N,C,h,w) × scaling factor, text states (U,77,D) and pooled
    text (U,D) of the U distinct prompts, and each example's row in them."""
    keys: list[str]
    soft_texts: list[str]
    latents: np.ndarray
    text_states: np.ndarray
    prompt_index: np.ndarray
    pooled_text: np.ndarray

    def states(self, idx: np.ndarray) -> np.ndarray:
        return self.text_states[self.prompt_index[idx]]

    def pooled(self, idx: np.ndarray) -> np.ndarray:
        return self.pooled_text[self.prompt_index[idx]]


@dataclass
class TrainResult:
    steps: int
    curve: list[dict]
    final_path: Path
    out_dir: Path
    resumed_from: int = 0


# ---------------------------------------------------------------------------------------- data
def resize_image(image: np.ndarray, size: int) -> np.ndarray:
    """uint8 (H, W, 3|4) → uint8 (size, size, 3), bicubic (no-op at the right size)."""
    from PIL import Image

    img = np.asarray(image)
    if img.ndim != 3 or img.shape[2] not in (3, 4):
        raise ValueError(f"a poster must be an (H, W, 3) RGB image, got shape {img.shape}")
    img = img[..., :3].astype(np.uint8)
    if img.shape[:2] == (size, size):
        return img
    return np.asarray(Image.fromarray(img).resize((size, size), Image.BICUBIC))


def encode_latents(pipe, images: Sequence[np.ndarray], size: int) -> np.ndarray:
    """Posters → UNet-space latents (N, C, size/8, size/8): VAE posterior mean × scaling_factor."""
    pipe.latent_shape(size, size)  # checks the size fits the UNet
    out = []
    for img in images:  # one at a time: an example's latents do not depend on the batch
        x = resize_image(img, size).astype(np.float32) / 127.5 - 1.0
        z = pipe.vae.encode(runtime.to_tensor(x.transpose(2, 0, 1)[None], runtime.compute_dtype()))
        out.append(runtime.to_numpy(z)[0])
    scale = np.float32(pipe.vae.config.scaling_factor)
    return (np.stack(out) * scale).astype(np.float32)


def prepare(pipe, examples: Sequence[Example], size: int) -> Prepared:
    """Encode every example's poster and SD prompt once with the frozen VAE and text encoder."""
    if not examples:
        raise ValueError("no training examples: need (user, target) pairs whose target poster exists")
    # Users who share a held-out target share its prompt: encode each distinct prompt once.
    distinct = list(dict.fromkeys(_prompt_key(e.prompt) for e in examples))
    first = {k: next(e.prompt for e in examples if _prompt_key(e.prompt) == k) for k in distinct}
    cond, _, pooled, _ = pipe.encode_prompt([first[k] for k in distinct], return_pooled=True)
    rows = {k: i for i, k in enumerate(distinct)}
    return Prepared([e.key for e in examples], [e.soft_text for e in examples],
                    encode_latents(pipe, [e.image for e in examples], size), cond.astype(np.float32),
                    np.asarray([rows[_prompt_key(e.prompt)] for e in examples], np.int64), pooled.astype(np.float32))


def _prompt_key(prompt) -> str:
    return json.dumps(prompt if isinstance(prompt, str) else [[str(t), float(w)] for t, w in prompt])


def examples_fingerprint(keys: Sequence[str]) -> str:
    return hashlib.sha256("\n".join(keys).encode()).hexdigest()[:16]


# ---------------------------------------------------------------------------------- noise math
def add_noise(latents: np.ndarray, noise: np.ndarray, timesteps: np.ndarray, alphas_cumprod: np.ndarray,
              prediction_type: str) -> tuple[np.ndarray, np.ndarray]:
    """(noisy latents, regression target) as diffusers' DDPM add_noise / get_velocity.

    x_t = sqrt(ᾱ_t)·x_0 + sqrt(1−ᾱ_t)·ε; target ε (epsilon) or v = sqrt(ᾱ_t)·ε − sqrt(1−ᾱ_t)·x_0.
    """
    a = alphas_cumprod[np.asarray(timesteps, np.int64)].astype(np.float32)[:, None, None, None]
    sa, sb = np.sqrt(a), np.sqrt(np.float32(1) - a)
    noisy = sa * latents + sb * noise
    if prediction_type == "epsilon":
        target = noise
    elif prediction_type == "v_prediction":
        target = sa * noise - sb * latents
    else:
        raise ValueError(f"prediction_type {prediction_type!r} is not supported; choose epsilon or v_prediction")
    return noisy.astype(np.float32), target.astype(np.float32)


def derived_rng(seed: int, *keys: int) -> np.random.Generator:
    """A host RNG for (seed, *keys): independent streams, reproducible after a resume."""
    state = np.random.SeedSequence([int(seed), *map(int, keys)]).generate_state(1, np.uint64)[0]
    return runtime.host_rng(int(state))


def batch_indices(step: int, micro: int, n: int, cfg: TrainConfig) -> np.ndarray:
    """Example indices of one micro-batch: epochs of seeded permutations, a pure function of the step."""
    first = (step * cfg.grad_accum + micro) * cfg.batch
    out = []
    for g in range(first, first + cfg.batch):
        epoch, pos = divmod(g, n)
        out.append(derived_rng(cfg.seed, 1, epoch).permutation(n)[pos])
    return np.asarray(out, np.int64)


def eval_plan(n: int, cfg: TrainConfig, num_train_timesteps: int, latent_shape: tuple) -> tuple:
    """Fixed evaluation: (example indices, timesteps, noise) — the same at every evaluation."""
    k = min(n, cfg.eval_examples)
    spread = np.linspace(0, num_train_timesteps - 1, cfg.eval_timesteps + 2)[1:-1].round().astype(np.int64)
    idx = np.repeat(np.arange(k), len(spread))
    ts = np.tile(spread, k)
    noise = derived_rng(cfg.seed, 2).standard_normal((len(idx), *latent_shape), dtype=np.float32)
    return idx, ts, noise


# ------------------------------------------------------------------------------------ the loss
class DenoisingLoss(nn.Cell):
    """MSE(UNet(x_t, t, [text states ⊕ w_soft·soft tokens] (, pooled text)), target); only `soft` is trained."""

    def __init__(self, encoder: S.SoftPromptEncoder, unet, w_soft: float):
        super().__init__(auto_prefix=False)
        self.encoder, self.unet, self.w_soft = encoder, unet, float(w_soft)

    def construct(self, input_ids, attention_mask, position_ids, onehot, text_states, noisy, timesteps, target,
                  pooled):
        soft = self.encoder(input_ids, attention_mask, position_ids, onehot) * self.w_soft  # (B,M,D) fp32
        context = ops.cat((text_states, soft.astype(text_states.dtype)), 1)               # (B,77+M,D)
        pred = self.unet(noisy, timesteps, context, pooled).astype(ms.float32)  # ignored without class embedding
        return ((pred - target) ** 2).mean()


class Trainer:
    """Holds the frozen models, the prepared data and the loss; `run` does the optimization."""

    def __init__(self, soft: S.SoftPrompt, lm, pipe, data: Prepared, cfg: TrainConfig):
        S.check_compatible(soft.cfg, lm.config)
        if soft.cfg.sd_width != pipe.text_width:
            raise ValueError(f"soft prompt maps to width {soft.cfg.sd_width}, the SD text encoder has width "
                             f"{pipe.text_width}")
        self.soft, self.lm, self.pipe, self.data, self.cfg = soft, lm, pipe, data, cfg
        sched = pipe.make_scheduler()
        self.alphas_cumprod = sched.alphas_cumprod
        self.prediction_type = sched.prediction_type
        self.num_train_timesteps = len(sched.alphas_cumprod)
        self.max_length = lm.config.max_position_embeddings - soft.cfg.n_prefix
        self.loss = DenoisingLoss(S.SoftPromptEncoder(soft, lm.net.model), pipe.unet, cfg.w_soft)
        self.loss.set_train(False)  # frozen models: no dropout; gradients are still taken below
        self.params = list(soft.trainable_params())
        grad_fn = ms.value_and_grad(self.loss, None, self.params)
        loss = self.loss

        def grad_step(*args):
            return grad_fn(*args)

        def loss_step(*args):
            return loss(*args)

        # Compiled unless PMG_JIT=0 (one graph per prompt-length bucket; ~80x faster per step on CPU).
        self.grad_fn, self.loss_fn = runtime.jit(grad_step), runtime.jit(loss_step)

    def inputs(self, idx: np.ndarray, timesteps: np.ndarray, noise: np.ndarray) -> tuple:
        """Tensors for DenoisingLoss from example indices and their (timesteps, noise)."""
        dtype = runtime.compute_dtype()
        soft_in = S.prepare_inputs(self.lm.tokenizer, [self.data.soft_texts[i] for i in idx], self.soft.cfg.n_tokens,
                                   self.max_length)
        noisy, target = add_noise(self.data.latents[idx], noise, timesteps, self.alphas_cumprod, self.prediction_type)
        return (*S.model_inputs(soft_in, self.soft.cfg.n_prefix), runtime.to_tensor(self.data.states(idx), dtype),
                runtime.to_tensor(noisy, dtype), runtime.to_tensor(timesteps.astype(np.float32)),
                runtime.to_tensor(target, ms.float32), runtime.to_tensor(self.data.pooled(idx), dtype))

    def micro_batch(self, step: int, micro: int) -> tuple:
        idx = batch_indices(step, micro, len(self.data.keys), self.cfg)
        rng = derived_rng(self.cfg.seed, 3, step, micro)
        ts = rng.integers(0, self.num_train_timesteps, len(idx))
        noise = rng.standard_normal((len(idx), *self.data.latents.shape[1:]), dtype=np.float32)
        return self.inputs(idx, ts, noise)

    def eval_loss(self) -> float:
        """Mean loss on the fixed evaluation set, in micro-batches of `batch`."""
        idx, ts, noise = eval_plan(len(self.data.keys), self.cfg, self.num_train_timesteps, self.data.latents.shape[1:])
        total = 0.0
        for a in range(0, len(idx), self.cfg.batch):
            b = min(a + self.cfg.batch, len(idx))
            loss = self.loss_fn(*self.inputs(idx[a:b], ts[a:b], noise[a:b]))
            total += float(runtime.to_numpy(loss)) * (b - a)
        return total / len(idx)

    def grads(self, step: int) -> tuple[float, list[np.ndarray]]:
        """Mean loss and mean gradients over the step's grad_accum micro-batches."""
        total, acc = 0.0, None
        for micro in range(self.cfg.grad_accum):
            loss, grads = self.grad_fn(*self.micro_batch(step, micro))
            g = [runtime.to_numpy(x).astype(np.float32) for x in grads]
            acc = g if acc is None else [a + b for a, b in zip(acc, g)]
            total += float(runtime.to_numpy(loss))
        n = np.float32(self.cfg.grad_accum)
        return total / self.cfg.grad_accum, [a / n for a in acc]


# ------------------------------------------------------------------------------------ optimizer
class AdamW:
    """torch.optim.AdamW's update in NumPy (float32 master weights); state is plain arrays."""

    def __init__(self, names: Sequence[str], shapes: Sequence[tuple], cfg: TrainConfig):
        self.names, self.cfg = list(names), cfg
        self.m = [np.zeros(s, np.float32) for s in shapes]
        self.v = [np.zeros(s, np.float32) for s in shapes]
        self.t = 0

    def step(self, params: list[np.ndarray], grads: list[np.ndarray], lr: float) -> list[np.ndarray]:
        c = self.cfg
        self.t += 1
        bc1, bc2 = 1 - c.beta1 ** self.t, 1 - c.beta2 ** self.t
        out = []
        for i, (p, g) in enumerate(zip(params, grads)):
            self.m[i] = (c.beta1 * self.m[i] + (1 - c.beta1) * g).astype(np.float32)
            self.v[i] = (c.beta2 * self.v[i] + (1 - c.beta2) * g * g).astype(np.float32)
            decay = 0.0 if self.names[i].endswith("bias") else c.weight_decay
            p = p * np.float32(1 - lr * decay)
            denom = np.sqrt(self.v[i]) / np.float32(math.sqrt(bc2)) + np.float32(c.eps)
            out.append((p - np.float32(lr / bc1) * self.m[i] / denom).astype(np.float32))
        return out

    def state(self) -> tuple[dict[str, np.ndarray], dict[str, str]]:
        tensors = {f"m.{n}": m for n, m in zip(self.names, self.m)} | {f"v.{n}": v for n, v in zip(self.names, self.v)}
        return tensors, {"t": str(self.t)}

    def load_state(self, tensors: dict[str, np.ndarray], meta: dict[str, str]) -> None:
        want = {f"{k}.{n}" for k in "mv" for n in self.names}
        if set(tensors) != want:
            raise checkpoint.CheckpointError(f"optimizer state holds {sorted(tensors)}, expected {sorted(want)}")
        self.m = [tensors[f"m.{n}"].astype(np.float32) for n in self.names]
        self.v = [tensors[f"v.{n}"].astype(np.float32) for n in self.names]
        self.t = int(meta["t"])


def learning_rate(step: int, cfg: TrainConfig) -> float:
    """lr of optimizer step `step` (0-based): linear warmup, then constant."""
    if cfg.warmup_steps and step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    return cfg.lr


def clip_by_global_norm(grads: list[np.ndarray], max_norm: float) -> tuple[list[np.ndarray], float]:
    norm = float(np.sqrt(sum(float((g.astype(np.float64) ** 2).sum()) for g in grads)))
    if max_norm > 0 and norm > max_norm:
        scale = np.float32(max_norm / (norm + 1e-6))
        grads = [g * scale for g in grads]
    return grads, norm


# ------------------------------------------------------------------------------- checkpointing
def _step_dir(out_dir: Path, step: int) -> Path:
    return out_dir / "checkpoints" / f"step-{step:07d}"


def save_state(out_dir: Path, step: int, soft: S.SoftPrompt, opt: AdamW, curve: list[dict], cfg: TrainConfig,
               keys_fp: str) -> Path:
    """Write checkpoints/step-N/ (soft prompt, optimizer, state.json) atomically; refresh the final file."""
    final = _step_dir(out_dir, step)
    tmp = final.with_name(f".tmp-{final.name}-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    S.save(soft, tmp / FINAL_NAME)
    tensors, meta = opt.state()
    checkpoint.save_safetensors(tmp / "optimizer.safetensors", tensors, {"format": STATE_FORMAT, **meta})
    state = {"format": STATE_FORMAT, "step": step, "config": cfg.as_dict(), "examples": keys_fp, "curve": curve}
    (tmp / "state.json").write_text(json.dumps(state, indent=1))
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)
    shutil.copyfile(final / FINAL_NAME, out_dir / f".{FINAL_NAME}.tmp")
    os.replace(out_dir / f".{FINAL_NAME}.tmp", out_dir / FINAL_NAME)
    for old in checkpoints(out_dir)[:-cfg.keep_checkpoints]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def checkpoints(out_dir: Path) -> list[Path]:
    """Complete step checkpoints (state.json present), oldest first."""
    base = Path(out_dir) / "checkpoints"
    found = [p for p in base.glob("step-*") if (p / "state.json").is_file()] if base.is_dir() else []
    return sorted(found, key=lambda p: p.name)


def latest_checkpoint(out_dir: Path) -> Path | None:
    found = checkpoints(out_dir)
    return found[-1] if found else None


def restore(path: Path, soft: S.SoftPrompt, opt: AdamW, cfg: TrainConfig, keys_fp: str) -> tuple[int, list[dict]]:
    """Load a step checkpoint into `soft` and `opt`; the run's settings and examples must match."""
    from safetensors import safe_open

    state = json.loads((path / "state.json").read_text())
    if state.get("format") != STATE_FORMAT:
        raise checkpoint.CheckpointError(f"{path} is not a soft-prompt training checkpoint")
    saved, now = state["config"], cfg.as_dict()
    diff = sorted(k for k in now if k not in RESUMABLE_CHANGES and saved.get(k) != now[k])
    if diff:
        raise ValueError(f"cannot resume from {path}: settings {diff} differ from the checkpoint's "
                         f"({', '.join(f'{k}={saved.get(k)!r}' for k in diff)}); use them or start a new --out")
    if state["examples"] != keys_fp:
        raise ValueError(f"cannot resume from {path}: the training examples changed (different users, targets or "
                         "posters); start a new --out")
    loaded = S.load(path / FINAL_NAME)
    if loaded.cfg != soft.cfg:
        raise checkpoint.CheckpointError(f"{path} holds a soft prompt for other models or sizes than this run's")
    for p, q in zip(soft.get_parameters(), loaded.get_parameters()):
        ops.assign(p, ms.Tensor(q.asnumpy()))
    with safe_open(str(path / "optimizer.safetensors"), framework="numpy") as f:
        opt.load_state({k: f.get_tensor(k) for k in f.keys()}, f.metadata() or {})
    return int(state["step"]), list(state["curve"])


# ---------------------------------------------------------------------------------- the loop
def train(soft: S.SoftPrompt, lm, pipe, data: Prepared, cfg: TrainConfig, out_dir: Path, resume: bool = False,
          on_step: Callable[[dict], None] | None = None) -> TrainResult:
    """Optimize `soft` on `data`; checkpoints, loss.csv and loss.png go to `out_dir`.

    With `resume`, continue from the newest complete checkpoint in `out_dir` (optimizer state and
    curve included); the result equals an uninterrupted run with the same settings.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    trainer = Trainer(soft, lm, pipe, data, cfg)
    opt = AdamW([p.name for p in trainer.params], [tuple(p.shape) for p in trainer.params], cfg)
    keys_fp = examples_fingerprint(data.keys)
    start, curve = 0, []
    latest = latest_checkpoint(out_dir) if resume else None
    if resume and latest is None:
        log.info("no checkpoint in %s; starting from step 0", out_dir)
    if latest is not None:
        start, curve = restore(latest, soft, opt, cfg, keys_fp)
    elif checkpoints(out_dir):
        raise ValueError(f"{out_dir} already holds training checkpoints; pass --resume or choose a new --out")
    (out_dir / "train_config.json").write_text(json.dumps(
        {"train": cfg.as_dict(), "soft_prompt": dataclasses.asdict(soft.cfg), "examples": len(data.keys),
         "examples_fingerprint": keys_fp, "prediction_type": trainer.prediction_type}, indent=1))
    if start == 0:
        curve = [{"step": 0, "train_loss": None, "eval_loss": trainer.eval_loss(), "lr": None, "grad_norm": None}]
    for step in range(start, cfg.steps):
        loss, grads = trainer.grads(step)
        grads, norm = clip_by_global_norm(grads, cfg.max_grad_norm)
        lr = learning_rate(step, cfg)
        new = opt.step([p.asnumpy().astype(np.float32) for p in trainer.params], grads, lr)
        for p, arr in zip(trainer.params, new):
            ops.assign(p, ms.Tensor(arr))  # in place: compiled graphs keep reading the same buffer
        done = step + 1
        row = {"step": done, "train_loss": loss, "lr": lr, "grad_norm": norm,
               "eval_loss": trainer.eval_loss() if done % cfg.eval_every == 0 or done == cfg.steps else None}
        curve.append(row)
        if on_step is not None:
            on_step(row)
        if done % cfg.checkpoint_every == 0 or done == cfg.steps:
            save_state(out_dir, done, soft, opt, curve, cfg, keys_fp)
            write_curve(out_dir, curve)
    if start >= cfg.steps:
        write_curve(out_dir, curve)
    return TrainResult(cfg.steps, curve, out_dir / FINAL_NAME, out_dir, start)


def write_curve(out_dir: Path, curve: list[dict]) -> tuple[Path, Path]:
    """loss.csv (every step; eval_loss where evaluated) and loss.png (train and eval loss vs step)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir = Path(out_dir)
    csv_path, png_path = out_dir / "loss.csv", out_dir / "loss.png"
    with open(csv_path.with_suffix(".csv.tmp"), "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=CURVE_FIELDS)
        w.writeheader()
        for row in curve:
            w.writerow({k: "" if row.get(k) is None else row[k] for k in CURVE_FIELDS})
    os.replace(csv_path.with_suffix(".csv.tmp"), csv_path)
    fig, ax = plt.subplots(figsize=(6, 4), dpi=100)
    tr = [(r["step"], r["train_loss"]) for r in curve if r.get("train_loss") is not None]
    ev = [(r["step"], r["eval_loss"]) for r in curve if r.get("eval_loss") is not None]
    if tr:
        ax.plot(*zip(*tr), lw=0.8, alpha=0.6, label="train (random t, noise)")
    if ev:
        ax.plot(*zip(*ev), marker="o", ms=3, label="eval (fixed set)")
    ax.set_xlabel("step")
    ax.set_ylabel("denoising MSE")
    ax.set_title("PMG soft-prompt training")
    ax.legend()
    fig.tight_layout()
    fig.savefig(png_path.with_suffix(".tmp.png"))
    plt.close(fig)
    os.replace(png_path.with_suffix(".tmp.png"), png_path)
    return csv_path, png_path
