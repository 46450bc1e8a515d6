"""Stable Diffusion: UNet step, VAE decode and 20-step generation, ours (MindSpore, compiled) against
diffusers on PyTorch CPU, same weights, same process.

Configs: `tiny` (UNet blocks (32, 64)) and `small` (~35M-parameter UNet with the SD 2.1 block layout:
three cross-attention down blocks + one plain, linear projection, 64-dim heads, blocks (64, 128, 256, 256)),
both at 32x32 latents; UNet batch 2 and 8 (batch 2 = one image with classifier-free guidance). FLOPs are
counted on the diffusers model with torch's FlopCounterMode (matmuls and convolutions). Times are medians
after warm-up (our first call compiles). Prints Markdown rows on stdout.

Run: .venv/bin/python -m bench.bench_sd [--configs tiny,small] [--batches 2,8] [--repeats 5] [--gen-batch 2]
"""
from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

os.environ.setdefault("PMG_JIT", "1")

import numpy as np  # noqa: E402

LATENT = 32
CONFIGS = {
    "tiny": dict(unet=dict(block_out_channels=(32, 64), layers_per_block=1, attention_head_dim=(2, 4),
                           down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                           up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=32),
                 vae=dict(block_out_channels=(32, 64), layers_per_block=1), text_width=32),
    "small": dict(unet=dict(block_out_channels=(64, 128, 256, 256), layers_per_block=2, attention_head_dim=(1, 2, 4, 4),
                            down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
                            up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3, cross_attention_dim=256),
                  vae=dict(block_out_channels=(64, 128, 256, 256), layers_per_block=2), text_width=256),
}


def build(name: str, root: Path):
    """A diffusers StableDiffusionPipeline with random weights, saved to `root`; returns it."""
    import diffusers
    import torch
    import transformers

    from pmg_models.clip import CLIPTokenizer, write_tiny_tokenizer

    spec = CONFIGS[name]
    torch.manual_seed(0)
    unet = diffusers.UNet2DConditionModel(sample_size=LATENT, in_channels=4, out_channels=4, norm_num_groups=32,
                                          use_linear_projection=True, upcast_attention=True, **spec["unet"])
    n = len(spec["vae"]["block_out_channels"])
    vae = diffusers.AutoencoderKL(down_block_types=("DownEncoderBlock2D",) * n, up_block_types=("UpDecoderBlock2D",) * n,
                                  latent_channels=4, norm_num_groups=32, **spec["vae"])
    write_tiny_tokenizer(root / "tokenizer", pad_token="!")
    tok = CLIPTokenizer.from_dir(root / "tokenizer")
    d = spec["text_width"]
    # quick_gelu: clip.py's "gelu" activation does not compile under ms.jit yet (see pipeline adapter)
    text = transformers.CLIPTextModel(transformers.CLIPTextConfig(
        hidden_size=d, intermediate_size=4 * d, num_hidden_layers=2, num_attention_heads=max(1, d // 64),
        vocab_size=len(tok.vocab), hidden_act="quick_gelu", bos_token_id=tok.bos_id, eos_token_id=tok.eos_id,
        pad_token_id=tok.pad_id, max_position_embeddings=77))
    sched = diffusers.DPMSolverMultistepScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                                                  prediction_type="v_prediction")
    pipe = diffusers.StableDiffusionPipeline(vae=vae, text_encoder=text, unet=unet, scheduler=sched,
                                             tokenizer=transformers.CLIPTokenizer.from_pretrained(root / "tokenizer"),
                                             safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    pipe.save_pretrained(root, safe_serialization=True)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def count_flops(fn) -> float:
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        fn()
    return float(counter.get_total_flops())


def median_ms(fn, repeats: int) -> float:
    fn()  # warm-up (compiles ours)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times)


def ab_ms(theirs, mine, repeats: int, rounds: int = 3) -> tuple[float, float]:
    """Median ms of each side, timed in alternating rounds so that drift on shared cores hits both alike."""
    theirs(), mine()  # warm-up (compiles ours)
    times = ([], [])
    for _ in range(rounds):
        for side, fn in zip(times, (theirs, mine)):
            for _ in range(repeats):
                start = time.perf_counter()
                fn()
                side.append(time.perf_counter() - start)
    return tuple(1000 * statistics.median(side) for side in times)


def row(name, what, batch, t_ref, t_ours, flops, peak) -> str:
    rate = flops / (t_ours / 1000) / 1e9
    return (f"| {name} | {what} | {batch} | {t_ref:.1f} | {t_ours:.1f} | {t_ours / t_ref:.2f} | "
            f"{rate:.1f} | {100 * rate / peak:.0f}% |")


def bench_config(name: str, batches: list[int], repeats: int, gen_batch: int, peak: float) -> list[str]:
    import torch

    from pmg_models import runtime
    from pmg_models.sd.pipeline import StableDiffusion

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        ref = build(name, Path(tmp))
        params = sum(p.numel() for p in ref.unet.parameters()) / 1e6
        print(f"<!-- {name}: UNet {params:.1f}M params, VAE "
              f"{sum(p.numel() for p in ref.vae.parameters()) / 1e6:.1f}M -->", flush=True)
        for batch in batches:
            ours = StableDiffusion.from_pretrained(tmp, micro_batch=max(1, batch // 2))
            rng = np.random.default_rng(batch)
            x = rng.standard_normal((batch, 4, LATENT, LATENT)).astype(np.float32)
            ctx = rng.standard_normal((batch, 77, ours.text_width)).astype(np.float32)
            t = np.full((batch,), 500.0, np.float32)
            xt, ct, tt = torch.from_numpy(x), torch.from_numpy(ctx), torch.from_numpy(t)
            x_ms, c_ms, t_ms = runtime.to_tensor(x), runtime.to_tensor(ctx), runtime.to_tensor(t)
            z = x / ours.vae.config.scaling_factor
            with torch.inference_mode():
                unet_ref = lambda: ref.unet(xt, tt, ct).sample  # noqa: E731
                vae_ref = lambda: ref.vae.decode(torch.from_numpy(z)).sample  # noqa: E731
                cases = [("unet step", unet_ref, lambda: runtime.to_numpy(ours._plain(x_ms, t_ms, c_ms))),
                         ("vae decode", vae_ref, lambda: ours.decode_float(x))]
                for what, theirs, mine in cases:
                    if what == "vae decode":
                        ours.micro_batch = batch
                    flops = count_flops(theirs)
                    rows.append(row(name, what, batch, *ab_ms(theirs, mine, repeats), flops, peak))
                    print(rows[-1], flush=True)
        rows += bench_generation(name, ref, tmp, gen_batch, peak)
    return rows


def bench_generation(name: str, ref, directory: str, batch: int, peak: float) -> list[str]:
    """20 DPM-Solver++ steps + decode for `batch` prompts at once (CFG: UNet batch 2*batch)."""
    import torch

    from pmg_models.sd.pipeline import StableDiffusion

    rows = []
    prompts = [f"a {i} dark sci-fi movie poster, neon blue" for i in range(batch)]
    size = LATENT * ref.vae_scale_factor
    for micro in sorted({1, batch}):
        ours = StableDiffusion.from_pretrained(directory, micro_batch=micro)
        latents = ours.prepare_latents(list(range(batch)), size, size)
        with torch.inference_mode():
            theirs = lambda: ref(prompts, latents=torch.from_numpy(latents), num_inference_steps=20,  # noqa: E731
                                 height=size, width=size, output_type="np").images
            flops = count_flops(lambda: ref(prompts, latents=torch.from_numpy(latents), num_inference_steps=20,
                                            height=size, width=size, output_type="np"))
            mine = lambda: ours.generate(prompts, list(range(batch)), steps=20, height=size, width=size)  # noqa: E731
            rows.append(row(name, f"generate 20 steps (micro_batch {micro})", batch, median_ms(theirs, 1),
                            median_ms(mine, 1), flops, peak))
            print(rows[-1], flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configs", default="tiny,small")
    parser.add_argument("--batches", default="2,8")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--gen-batch", type=int, default=2)
    args = parser.parse_args()

    from bench.machine import heading

    title, peak = heading("Stable Diffusion")
    print(title + "\n")
    print("| config | what | batch | diffusers ms | ours ms | ours/torch | ours GFLOP/s | of peak |")
    print("|---|---|---|---|---|---|---|---|")
    for name in args.configs.split(","):
        bench_config(name, [int(b) for b in args.batches.split(",")], args.repeats, args.gen_batch, peak)


if __name__ == "__main__":
    main()
