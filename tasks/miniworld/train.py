"""`pmg train-miniworld`: every model of the miniature world, trained from one seed, with gates and metrics.

Stages, in order (each writes its own folder under OUT and its `train_metrics.json`):
  classifier/  the independent evaluation CNN (classifier.py; evaluation only, never trains a generator)
  clip/        tiny CLIP, HF CLIPModel layout (train_clip.py)
  sd/          tiny SD, diffusers layout with the pixel-unshuffle codec as vae/ (train_sd.py, pmg_models/sd/codec.py)
  llama/       tiny preference- and item-keyword Llama, HF layout (train_llama.py)
  soft_prompt/ the soft prompt's training warehouse, posters and run (train_soft.py); the trained file is
               OUT/soft_prompt.safetensors
OUT/metrics.json is rewritten after every stage: per-stage metrics, the gates of issue 8, the smoke checks
(losses fell, loaded shapes match) and timings (seconds per stage, `total` = their sum, kept stages
included; `this_run` = this invocation's wall time). A stage left out of `stages` keeps its earlier folder and
metrics, so a run can be completed or redone stage by stage.
"""
from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Callable

import numpy as np

from tasks.miniworld.train_clip import ClipStageConfig, train_clip
from tasks.miniworld.train_llama import LlamaStageConfig, train_llama
from tasks.miniworld.train_sd import SDStageConfig, train_sd
from tasks.miniworld.train_soft import SoftStageConfig, train_soft

STAGES = ("classifier", "clip", "sd", "llama", "soft_prompt")
# gate name → (stage, metric, threshold); thresholds from issue 8.
GATES = {
    "clip_retrieval_top1": ("clip", "retrieval_top1_all", 0.85),
    "sd_target_background": ("sd", "target_bg_accuracy", 0.5),
    "sd_preference_motif": ("sd", "preference_motif_accuracy", 0.8),
    "llama_keyword_accuracy": ("llama", "keyword_accuracy", 0.8),
}


@dataclass(frozen=True)
class WorldConfig:
    classifier_steps: int = 400
    classifier_batch: int = 128
    clip: ClipStageConfig = field(default_factory=ClipStageConfig)
    sd: SDStageConfig = field(default_factory=SDStageConfig)
    llama: LlamaStageConfig = field(default_factory=LlamaStageConfig)
    soft: SoftStageConfig = field(default_factory=SoftStageConfig)
    smoke: bool = False

    @classmethod
    def smoke_config(cls) -> "WorldConfig":
        return cls(classifier_steps=30, classifier_batch=64, clip=ClipStageConfig.smoke(), sd=SDStageConfig.smoke(),
                   llama=LlamaStageConfig.smoke(), soft=SoftStageConfig.smoke(), smoke=True)


def gates(stage_metrics: dict) -> dict:
    """{gate: {value, threshold, passed}} for the stages that have metrics."""
    out = {}
    for name, (stage, key, threshold) in GATES.items():
        value = stage_metrics.get(stage, {}).get(key)
        if value is not None and not (isinstance(value, float) and np.isnan(value)):
            out[name] = {"value": value, "threshold": threshold, "passed": bool(value >= threshold)}
    return out


def check_shapes(out: Path, stage_metrics: dict) -> dict:
    """Load each written model through its standard loader and check one call's output shape."""
    checks = {}
    if "clip" in stage_metrics:
        from pmg_models.clip import CLIPModel

        model = CLIPModel.from_pretrained(out / "clip")
        emb = model.encode_text(["movie poster, comedy, yellow, blue, circles"])
        img = model.encode_image([np.zeros((32, 32, 3), np.uint8)])
        checks["clip_shapes"] = emb.shape == (1, model.projection_dim) and img.shape == emb.shape
    if "sd" in stage_metrics:
        from pmg_models.sd.pipeline import StableDiffusion

        pipe = StableDiffusion.from_pretrained(out / "sd")
        images = pipe.generate(["movie poster, horror, darkred, black, triangles"], [0], steps=2, guidance=3.0)
        checks["sd_shapes"] = images.shape == (1, 32, 32, 3) and images.dtype == np.uint8
    if "llama" in stage_metrics:
        from pmg_models import llama

        lm = llama.load(out / "llama")
        logits = lm.logits(np.array([[lm.config.bos_token_id, 5, 6]], np.int32))
        checks["llama_shapes"] = logits.shape == (1, 3, lm.config.vocab_size)
    for stage, m in stage_metrics.items():
        if "loss_fell" in m:
            checks[f"{stage}_loss_fell"] = bool(m["loss_fell"])
    return checks


def _read(path: Path) -> dict | None:
    return json.loads(path.read_text()) if path.exists() else None


def train_miniworld(out_dir, seed: int = 0, smoke: bool = False, stages=STAGES, config: WorldConfig | None = None,
                    emit: Callable[[str], None] | None = None, sd_steps: int | None = None) -> dict:
    """Train the chosen stages into `out_dir`; returns (and writes to OUT/metrics.json) the run's metrics.

    `sd_steps` overrides the UNet's step count (its warm-up and cosine decay follow the new length).
    """
    from tasks.miniworld import classifier

    unknown = sorted(set(stages) - set(STAGES))
    if unknown:
        raise ValueError(f"unknown stage(s) {unknown}; choose from {list(STAGES)}")
    cfg = config or (WorldConfig.smoke_config() if smoke else WorldConfig())
    if sd_steps is not None:
        if sd_steps < 1:
            raise ValueError(f"sd steps must be at least 1, got {sd_steps}")
        cfg = replace(cfg, sd=replace(cfg.sd, steps=int(sd_steps)))
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    say = emit or (lambda line: None)
    previous = _read(out / "metrics.json") or {}
    # A kept stage keeps its training time, so `total` is what the folder's stages took to train.
    kept_seconds = {k: v for k, v in previous.get("seconds", {}).items() if k in STAGES and k not in stages}
    metrics = {"seed": seed, "smoke": cfg.smoke, "stages": dict(previous.get("stages", {})), "seconds": kept_seconds}
    t_all = time.perf_counter()

    def record():
        metrics["gates"] = gates(metrics["stages"])
        metrics["seconds"]["total"] = round(sum(v for k, v in metrics["seconds"].items() if k in STAGES), 1)
        metrics["seconds"]["this_run"] = round(time.perf_counter() - t_all, 1)
        (out / "metrics.json").write_text(json.dumps(metrics, indent=1, default=str))

    for stage in STAGES:
        if stage not in stages:
            kept = _read(out / stage / ("metrics.json" if stage == "classifier" else "train_metrics.json"))
            if kept is not None:
                metrics["stages"][stage] = kept
            continue
        say(f"[{stage}] training …")
        t0 = time.perf_counter()
        if stage == "classifier":
            m = classifier.train_classifier(out / "classifier", seed=seed, steps=cfg.classifier_steps,
                                            batch=cfg.classifier_batch, smoke=cfg.smoke,
                                            on_step=_every(say, "classifier", cfg.classifier_steps))
            m["loss_fell"] = m["loss_last"] < m["loss_first"]
        elif stage == "clip":
            m = train_clip(out / "clip", seed, cfg.clip, say)
        elif stage == "sd":
            # Looked up when the SD evaluation starts: the classifier may still be training in another process.
            m = train_sd(out / "sd", out / "clip", seed, cfg.sd, out / "classifier", say)
        elif stage == "llama":
            m = train_llama(out / "llama", seed, cfg.llama, say)
        else:
            m = train_soft(out / "soft_prompt", out, seed, cfg.soft, say)
        metrics["stages"][stage] = m
        metrics["seconds"][stage] = round(time.perf_counter() - t0, 1)
        say(f"[{stage}] done in {metrics['seconds'][stage]:.0f} s: "
            + ", ".join(f"{k}={v}" for k, v in m.items() if isinstance(v, (int, float)) and k != "seed"))
        record()
    metrics["checks"] = check_shapes(out, {s: m for s, m in metrics["stages"].items() if s in stages})
    metrics["config"] = asdict(cfg)
    record()
    return metrics


def _every(say, stage: str, steps: int, every: int = 50):
    t0 = time.perf_counter()

    def on_step(step: int, loss: float) -> None:
        if (step + 1) % every == 0 or step + 1 == steps:
            say(f"[{stage}] step {step + 1}/{steps} loss {loss:.4f} "
                f"({(time.perf_counter() - t0) / (step + 1):.2f} s/step)")
    return on_step
