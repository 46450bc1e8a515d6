"""Training steps of the miniature world: pmg_models (MindSpore) vs diffusers/transformers (PyTorch CPU).

One optimizer step (forward, backward, global-norm clipping, AdamW) of each stage's model at its
training configuration and batch (tasks/miniworld): the SD UNet on 12×16×16 pixel-unshuffled posters,
the CLIP contrastive pair, the keyword Llama. Ours runs the stage's own step (`train_common.make_step`);
the peer builds the same architecture from the same config with random weights and the same loss.
Times are medians of alternating rounds. Usage: python -m bench.bench_train [--stages sd,clip,llama]
"""
from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np

from bench.bench_sd import ab_ms

LLAMA_TOKENS = 192      # about the world's prompt + answer length (265 at the longest bucket)


def sd_steps(rng):
    import torch
    from diffusers import UNet2DConditionModel as TorchUNet

    from pmg_models import runtime
    from tasks.miniworld import train_sd
    from tasks.miniworld.train_common import adamw, lr_schedule, make_step

    cfg = train_sd.SDStageConfig()
    ucfg = train_sd.unet_config(cfg, 128)
    b = cfg.batch
    x, v = (rng.standard_normal((b, 12, 16, 16), dtype=np.float32) for _ in range(2))
    t = rng.integers(0, 1000, b)
    ctx = rng.standard_normal((b, 77, 128), dtype=np.float32)
    pooled = rng.standard_normal((b, 128), dtype=np.float32)

    unet, _ = train_sd.init_unet(ucfg, 0)
    unet.set_train(True)
    optimizer = adamw(unet.trainable_params(), lr_schedule(1000, 1e-4, 10), 0.01)

    def forward(x_t, t, context, pooled_text, target):
        return ((unet(x_t, t, context, pooled_text) - target) ** 2).mean()

    step = make_step(forward, optimizer)
    args = [runtime.to_tensor(a) for a in (x, t.astype(np.float32), ctx, pooled, v)]

    ref = TorchUNet.from_config({k: val for k, val in ucfg.items() if not k.startswith("_")})
    xt, tt, ct, vt = torch.tensor(x), torch.tensor(t), torch.tensor(ctx), torch.tensor(v)
    return (lambda: step(*args)), _torch_step(ref, lambda: ((ref(xt, tt, ct).sample - vt) ** 2).mean()), b


def clip_steps(rng):
    import torch
    import transformers

    from pmg_models import runtime
    from pmg_models.clip import ImageProcessorConfig, causal_mask
    from tasks.miniworld import train_clip
    from tasks.miniworld.train_common import adamw, lr_schedule, make_step

    cfg = train_clip.ClipStageConfig()
    b, n = cfg.batch, train_clip.TRAIN_TOKENS
    with tempfile.TemporaryDirectory() as tmp:
        tok = train_clip.write_tokenizer(Path(tmp))
    hf = train_clip.hf_config(cfg, tok)
    image_cfg = ImageProcessorConfig(shortest_edge=cfg.image_size, crop_height=cfg.image_size,
                                     crop_width=cfg.image_size)
    model = train_clip.build(hf, tok, image_cfg, 0)
    model.net.set_train(True)
    optimizer = adamw(model.net.trainable_params(), lr_schedule(1000, 1e-4, 10), cfg.weight_decay)
    step = make_step(train_clip.contrastive_forward(model.net), optimizer)
    ids = rng.integers(4, len(tok.vocab), (b, n)).astype(np.int32)
    ends = rng.integers(8, n, b)
    pool = np.zeros((b, 1, n), np.float32)
    pool[np.arange(b), 0, ends] = 1.0
    pixels = rng.standard_normal((b, 3, cfg.image_size, cfg.image_size), dtype=np.float32)
    groups = rng.integers(0, b // 2, b)
    targets = (groups[:, None] == groups[None, :]).astype(np.float32)
    targets /= targets.sum(1, keepdims=True)
    args = [runtime.to_tensor(ids), runtime.to_tensor(causal_mask(b, n)), runtime.to_tensor(pool),
            runtime.to_tensor(pixels), runtime.to_tensor(targets)]

    ref = transformers.CLIPModel(transformers.CLIPConfig(text_config=hf["text_config"],
                                                         vision_config=hf["vision_config"],
                                                         projection_dim=hf["projection_dim"]))
    ids_t, px_t, tg_t = torch.tensor(ids, dtype=torch.long), torch.tensor(pixels), torch.tensor(targets)
    # HF pools at argmax(ids == eos) for this config; the random ids carry one eos at `ends`
    ids_t[torch.arange(b), torch.tensor(ends)] = tok.eos_id

    def loss():
        out = ref(input_ids=ids_t, pixel_values=px_t)
        li = -(tg_t * torch.log_softmax(out.logits_per_image, 1)).sum(1).mean()
        lt = -(tg_t * torch.log_softmax(out.logits_per_text, 1)).sum(1).mean()
        return (li + lt) / 2

    return (lambda: step(*args)), _torch_step(ref, loss), b


def llama_steps(rng):
    import torch
    import transformers
    from mindspore import ops

    from pmg_models import llama, runtime
    from tasks.miniworld import train_llama
    from tasks.miniworld.train_common import adamw, lr_schedule, make_step

    cfg = train_llama.LlamaStageConfig()
    b, n = cfg.batch, LLAMA_TOKENS
    mcfg = train_llama.model_config(cfg, cfg.vocab_size, n + 64)
    net = llama.build(mcfg)
    train_llama.init_weights(net, 0)
    net.set_train(True)
    optimizer = adamw(net.trainable_params(), lr_schedule(1000, 1e-4, 10), cfg.weight_decay)

    def forward(input_ids, attention_mask, position_ids, targets, weights):
        logp = ops.log_softmax(net(input_ids, attention_mask, position_ids), -1)
        nll = -ops.gather_elements(logp, 2, targets.expand_dims(-1)).squeeze(-1)
        return (nll * weights).sum() / weights.sum()

    step = make_step(forward, optimizer)
    ids = rng.integers(3, cfg.vocab_size, (b, n)).astype(np.int32)
    attn = np.ones((b, n), np.int32)
    positions = np.broadcast_to(np.arange(n, dtype=np.int32), (b, n)).copy()
    targets = np.concatenate([ids[:, 1:], ids[:, -1:]], 1)
    weights = np.zeros((b, n), np.float32)
    weights[:, -40:] = 1.0          # the answer tokens
    args = [runtime.to_tensor(a) for a in (ids, attn, positions, targets, weights)]

    ref = transformers.LlamaForCausalLM(transformers.LlamaConfig(**{
        k: val for k, val in mcfg.to_hf().items() if k not in ("architectures", "torch_dtype")}))
    ids_t, tg_t, w_t = torch.tensor(ids, dtype=torch.long), torch.tensor(targets, dtype=torch.long), torch.tensor(weights)

    def loss():
        logp = torch.log_softmax(ref(input_ids=ids_t).logits, -1)
        nll = -logp.gather(2, tg_t[..., None])[..., 0]
        return (nll * w_t).sum() / w_t.sum()

    return (lambda: step(*args)), _torch_step(ref, loss), b


def _torch_step(model, loss_fn):
    import torch

    optimizer = torch.optim.AdamW(model.parameters(), 1e-4, weight_decay=0.01)

    def step():
        optimizer.zero_grad()
        loss = loss_fn()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        return float(loss)

    return step


STAGES = {"sd": sd_steps, "clip": clip_steps, "llama": llama_steps}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--stages", default="sd,clip,llama")
    p.add_argument("--repeats", type=int, default=4)
    args = p.parse_args(argv)
    import torch

    torch.set_num_threads(2)
    print("| stage | batch | torch ms/step | ours ms/step | ours / torch |")
    print("|---|---|---|---|---|")
    for name in args.stages.split(","):
        ours, theirs, batch = STAGES[name](np.random.default_rng(0))
        t_ref, t_ours = ab_ms(theirs, ours, args.repeats)
        print(f"| {name} | {batch} | {t_ref:.0f} | {t_ours:.0f} | {t_ours / t_ref:.2f}× |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
