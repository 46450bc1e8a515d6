"""Stage 1 of the miniature world: a tiny CLIP trained contrastively on procedural posters and their captions.

Recipe from the feasibility study (../shared/reference/miniworld.md §2.2, §5.3): text 3 layers / 128 wide,
ViT 4 layers / 128 wide with 4-pixel patches at 32², projection 64, multi-positive InfoNCE (every image
whose caption is identical counts as a positive), AdamW with warm-up and cosine decay. The result is an HF
CLIPModel folder (config, safetensors, preprocessor config, CLIP BPE tokenizer files) that
`pmg_models.clip.CLIPModel.from_pretrained` loads like any real checkpoint; its text tower is also the
frozen text encoder of the world's Stable Diffusion.
"""
from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import mindspore as ms
from mindspore import ops

from pmg_models import checkpoint, runtime
from pmg_models.clip import CLIPModel, CLIPTextConfig, CLIPTokenizer, CLIPVisionConfig, ImageProcessorConfig
from pmg_models.clip import causal_mask, pooled_positions
from pmg_models.clip_tiny import text_tensors, vision_tensors
from pmg_models.clip_tokenizer import write_tiny_tokenizer
from tasks.miniworld import posters, world
from tasks.miniworld.train_common import Progress, adamw, all_captions, falling, half, lr_schedule, make_step

TRAIN_TOKENS = 40          # a three-block caption with a band is at most 36 BPE tokens + bos/eos
MAX_LOGIT_SCALE = math.log(100.0)


@dataclass(frozen=True)
class ClipStageConfig:
    # 450 steps with 15 % three-block captions: the SD's text encoder must tell a third block's motif
    # apart. Measured (seed 0): without triples a perfect generator's PMG captions scored d_p above the
    # baseline in 72 % of pairs; 300 steps with 30 % triples missed the retrieval gate (0.734).
    steps: int = 450
    batch: int = 256
    lr: float = 1e-3
    bias_correction: bool = False      # trained without AdamW's bias correction (train_common.bias_corrected)
    weight_decay: float = 0.05
    warmup: int = 60
    n_train: int = 30_000
    n_val: int = 1_000
    three_genre_p: float = 0.15      # training captions of three blocks (validation keeps the 1-2 block ones)
    width: int = 128                 # text and vision hidden size
    text_layers: int = 3
    vision_layers: int = 4
    heads: int = 4
    patch: int = 4
    image_size: int = 32
    projection_dim: int = 64

    @classmethod
    def smoke(cls) -> "ClipStageConfig":
        return cls(steps=30, batch=64, warmup=5, n_train=1024, n_val=128, text_layers=1, vision_layers=1)


def caption_corpus() -> list[str]:
    """Every caption the world can produce (the BPE is trained on it, so each world word is one token)."""
    return [world.caption(b, a) for b, a in all_captions()]


def write_tokenizer(directory: Path) -> CLIPTokenizer:
    """A CLIP BPE trained on the world's captions (pad = eos, as OpenAI CLIP), written in the HF layout."""
    write_tiny_tokenizer(directory, corpus=caption_corpus(), vocab_size=2000)
    return CLIPTokenizer.from_dir(directory)


def hf_config(cfg: ClipStageConfig, tok: CLIPTokenizer) -> dict:
    """transformers CLIPModel config.json; eos_token_id is the real eos id (never 2, which means argmax pooling)."""
    text = {"model_type": "clip_text_model", "attention_dropout": 0.0, "hidden_act": "quick_gelu",
            "hidden_size": cfg.width, "intermediate_size": 4 * cfg.width, "layer_norm_eps": 1e-5,
            "max_position_embeddings": 77, "num_attention_heads": cfg.heads, "num_hidden_layers": cfg.text_layers,
            "projection_dim": cfg.projection_dim, "vocab_size": len(tok.vocab), "bos_token_id": tok.bos_id,
            "eos_token_id": tok.eos_id, "pad_token_id": tok.pad_id, "initializer_factor": 1.0,
            "initializer_range": 0.02}
    vision = {"model_type": "clip_vision_model", "attention_dropout": 0.0, "hidden_act": "quick_gelu",
              "hidden_size": cfg.width, "intermediate_size": 4 * cfg.width, "image_size": cfg.image_size,
              "patch_size": cfg.patch, "num_channels": 3, "layer_norm_eps": 1e-5, "num_attention_heads": cfg.heads,
              "num_hidden_layers": cfg.vision_layers, "projection_dim": cfg.projection_dim,
              "initializer_factor": 1.0, "initializer_range": 0.02}
    return {"architectures": ["CLIPModel"], "model_type": "clip", "projection_dim": cfg.projection_dim,
            "logit_scale_init_value": 2.6592, "initializer_factor": 1.0, "torch_dtype": "float32",
            "text_config": text, "vision_config": vision}


def init_tensors(hf: dict, seed: int) -> dict[str, np.ndarray]:
    """Seeded initial weights with the HF names (the tiny-checkpoint writers' scaled-normal init)."""
    rng = runtime.host_rng(seed)
    text, vision, proj = hf["text_config"], hf["vision_config"], hf["projection_dim"]
    out = {**text_tensors(rng, text), **vision_tensors(rng, vision)}
    for name, width in (("text_projection.weight", text["hidden_size"]), ("visual_projection.weight", vision["hidden_size"])):
        out[name] = (rng.standard_normal((proj, width)) * width ** -0.5).astype(np.float32)
    out["logit_scale"] = np.array(2.6592, np.float32)
    return out


def build(hf: dict, tok: CLIPTokenizer, image_cfg: ImageProcessorConfig, seed: int) -> CLIPModel:
    model = CLIPModel(CLIPTextConfig.from_hf(hf["text_config"]), CLIPVisionConfig.from_hf(hf["vision_config"]),
                      hf["projection_dim"], tok, image_cfg)
    checkpoint.assign_strict(model.net, init_tensors(hf, seed).items(), source="init")
    return model


def contrastive_forward(net):
    """Multi-positive InfoNCE, symmetric: `targets` (B, B) is the row-normalized same-caption matrix."""
    def forward(ids, mask, pool, pixels, targets):
        t = net.text_features(ids, mask, pool)
        i = net.image_features(pixels)
        t = t / ops.sqrt((t * t).sum(-1, keepdims=True) + 1e-12)
        i = i / ops.sqrt((i * i).sum(-1, keepdims=True) + 1e-12)
        scale = ops.exp(ops.clamp(net.logit_scale, -10.0, MAX_LOGIT_SCALE))
        logits = scale * ops.matmul(i, t.T)
        loss_i = -(targets * ops.log_softmax(logits, 1)).sum(1).mean()
        loss_t = -(targets * ops.log_softmax(logits.T, 1)).sum(1).mean()
        return (loss_i + loss_t) / 2
    return forward


def same_caption_targets(captions: list[str]) -> np.ndarray:
    eq = np.array([[a == b for b in captions] for a in captions], np.float32)
    return eq / eq.sum(1, keepdims=True)


def save(model: CLIPModel, hf: dict, image_cfg: ImageProcessorConfig, directory: Path) -> None:
    tensors = {p.name: p.asnumpy() for p in model.net.get_parameters()}
    tensors["logit_scale"] = tensors["logit_scale"].reshape(())  # HF keeps it 0-d; the optimizer may not
    checkpoint.save_safetensors(directory / "model.safetensors", half(tensors), metadata={"format": "pt"})
    (directory / "config.json").write_text(json.dumps(hf, indent=2))
    (directory / "preprocessor_config.json").write_text(json.dumps(image_cfg.to_hf(), indent=2))


def evaluate(directory: Path, val: posters.Dataset) -> dict:
    """Image→text top-1 of the saved model (loaded back through CLIPModel.from_pretrained).

    retrieval_top1_all: over every world caption (blocks × title band, 2268); retrieval_top1_blocks:
    over the 324 band-free captions, counting the image's blocks; retrieval_single_genre: single-genre
    images over the 18 single-genre captions.
    """
    model = CLIPModel.from_pretrained(directory, micro_batch=64)
    pairs = all_captions()
    texts = [world.caption(b, a) for b, a in pairs]
    index = {c: i for i, c in enumerate(texts)}
    text_emb = model.encode_text(texts)
    img_emb = model.encode_image(list(val.images))
    sims = img_emb @ text_emb.T
    truth = np.array([index[c] for c in val.captions()])
    top1_all = float(np.mean(sims.argmax(1) == truth))
    block_rows = [i for i, (_, a) in enumerate(pairs) if a is None]
    block_of = {pairs[i][0]: j for j, i in enumerate(block_rows)}
    block_truth = np.array([block_of[tuple(b)] for b in val.blocks])
    top1_blocks = float(np.mean(sims[:, block_rows].argmax(1) == block_truth))
    single = np.array([len(b) == 1 for b in val.blocks])
    single_rows = block_rows[:len(world.GENRES)]
    single_ok = sims[single][:, single_rows].argmax(1) == block_truth[single]
    return {"retrieval_top1_all": round(top1_all, 4), "retrieval_top1_blocks": round(top1_blocks, 4),
            "retrieval_single_genre": round(float(single_ok.mean()) if single.any() else float("nan"), 4),
            "n_captions": len(texts), "n_val": len(val.images)}


def train_clip(out_dir, seed: int = 0, cfg: ClipStageConfig = ClipStageConfig(),
               emit: Callable[[str], None] | None = None) -> dict:
    """Train the tiny CLIP and write it to `out_dir` (HF CLIPModel layout); returns metrics."""
    runtime.setup()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tok = write_tokenizer(out)
    hf = hf_config(cfg, tok)
    image_cfg = ImageProcessorConfig(shortest_edge=cfg.image_size, crop_height=cfg.image_size,
                                     crop_width=cfg.image_size)
    model = build(hf, tok, image_cfg, seed)
    train = posters.sample_dataset(cfg.n_train, seed * 10 + 1, cfg.image_size, three_genre_p=cfg.three_genre_p)
    val = posters.sample_dataset(cfg.n_val, seed * 10 + 2, cfg.image_size)
    pixels = model.preprocess(list(train.images))
    captions = train.captions()
    ids_all, _ = tok.encode(captions, max_length=TRAIN_TOKENS, truncate=False)
    pool_all = pooled_positions(ids_all, tok.eos_id)
    mask = runtime.to_tensor(causal_mask(cfg.batch, TRAIN_TOKENS), ms.float32)
    model.net.set_train(True)
    optimizer = adamw(model.net.trainable_params(), lr_schedule(cfg.steps, cfg.lr, cfg.warmup), cfg.weight_decay,
                      cfg.bias_correction)
    step = make_step(contrastive_forward(model.net), optimizer)
    rng = runtime.host_rng(seed * 10 + 3)
    progress = Progress("clip", cfg.steps, emit)
    for s in range(cfg.steps):
        idx = rng.choice(cfg.n_train, cfg.batch, replace=False)
        pool = np.zeros((cfg.batch, 1, TRAIN_TOKENS), np.float32)
        pool[np.arange(cfg.batch), 0, pool_all[idx]] = 1.0
        loss = step(runtime.to_tensor(ids_all[idx]), mask, runtime.to_tensor(pool), runtime.to_tensor(pixels[idx]),
                    runtime.to_tensor(same_caption_targets([captions[i] for i in idx])))
        progress(s, loss)
    model.net.set_train(False)
    save(model, hf, image_cfg, out)
    metrics = {"stage": "clip", "steps": cfg.steps, "batch": cfg.batch, "seconds_train": round(progress.seconds, 1),
               **falling(progress.losses), **evaluate(out, val), "config": asdict(cfg)}
    (out / "train_metrics.json").write_text(json.dumps(metrics, indent=1))
    return metrics
