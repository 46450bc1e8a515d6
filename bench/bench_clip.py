"""CLIP image and text encode: ours (MindSpore, compiled) against transformers on PyTorch CPU, same weights.

Both towers run on the same random weights (made by transformers, loaded by us from its save), at a tiny
config and a ViT-B/32-shaped one, batch 8 and 32. Times are medians after warm-up (our first call
compiles). Prints Markdown rows on stdout.

Run: .venv/bin/python -m bench.bench_clip [--configs tiny,b32] [--batches 8,32] [--repeats 5]
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

CONFIGS = {
    "tiny": dict(text=dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=37),
                 vision=dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=37,
                             image_size=32, patch_size=8),
                 projection_dim=16),
    "b32": dict(text=dict(hidden_size=512, num_hidden_layers=12, num_attention_heads=8, intermediate_size=2048),
                vision=dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072,
                            image_size=224, patch_size=32),
                projection_dim=512),
}


def tower_flops(hidden: int, intermediate: int, layers: int, tokens: int) -> float:
    """Matmul FLOPs of one sequence through a transformer tower (projections, MLP, attention scores)."""
    per_layer = 2 * tokens * (4 * hidden * hidden + 2 * hidden * intermediate) + 4 * tokens * tokens * hidden
    return layers * per_layer


def image_flops(v: dict) -> float:
    patches = (v["image_size"] // v["patch_size"]) ** 2
    embed = 2 * patches * v["hidden_size"] * 3 * v["patch_size"] ** 2
    return embed + tower_flops(v["hidden_size"], v["intermediate_size"], v["num_hidden_layers"], patches + 1)


def text_flops(t: dict) -> float:
    return tower_flops(t["hidden_size"], t["intermediate_size"], t["num_hidden_layers"], 77)


def build(name: str, root: Path):
    """A transformers CLIPModel with random weights, saved with a tiny tokenizer; returns (torch model, dir)."""
    import torch
    import transformers

    from pmg_models.clip import CLIPTokenizer, write_tiny_tokenizer

    spec = CONFIGS[name]
    write_tiny_tokenizer(root)
    tok = CLIPTokenizer.from_dir(root)
    text = dict(spec["text"], vocab_size=max(len(tok.vocab), 1024) if name == "tiny" else 49408,
                bos_token_id=tok.bos_id, eos_token_id=tok.eos_id, pad_token_id=tok.pad_id)
    cfg = transformers.CLIPConfig(text_config=text, vision_config=spec["vision"],
                                  projection_dim=spec["projection_dim"])
    torch.manual_seed(0)
    model = transformers.CLIPModel(cfg).eval()
    model.save_pretrained(root, safe_serialization=True)
    return model, root


def median_ms(fn, repeats: int) -> float:
    fn()  # warm-up (compiles ours)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times)


def bench_config(name: str, batches: list[int], repeats: int, peak: float) -> list[str]:
    import torch

    from pmg_models.clip import CLIPModel

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        ref, path = build(name, Path(tmp))
        ours = CLIPModel.from_pretrained(path)
        spec = CONFIGS[name]
        size = spec["vision"]["image_size"]
        for batch in batches:
            rng = np.random.default_rng(batch)
            pixels = rng.standard_normal((batch, 3, size, size)).astype(np.float32)
            ids, _ = ours.tokenizer.encode([f"a {i} dark sci-fi movie poster, neon blue" for i in range(batch)])
            px_t, ids_t = torch.from_numpy(pixels), torch.from_numpy(ids.astype(np.int64))
            with torch.inference_mode():
                cases = [("image", image_flops(spec["vision"]),
                          lambda: ref.get_image_features(pixel_values=px_t), lambda: ours.image_features(pixels)),
                         ("text", text_flops(spec["text"]),
                          lambda: ref.get_text_features(input_ids=ids_t), lambda: ours.text_features(ids))]
                for tower, flops, theirs, mine in cases:
                    t_ref, t_ours = median_ms(theirs, repeats), median_ms(mine, repeats)
                    rate = batch * flops / (t_ours / 1000) / 1e9
                    rows.append(f"| {name} | {tower} | {batch} | {t_ref:.1f} | {t_ours:.1f} | {t_ours / t_ref:.2f} | "
                                f"{rate:.1f} | {100 * rate / peak:.0f}% |")
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configs", default="tiny,b32")
    parser.add_argument("--batches", default="8,32")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()

    from bench.machine import heading

    title, peak = heading("CLIP encode")
    print(title + "\n")
    print("| config | tower | batch | transformers ms | ours ms | ours/torch | ours GFLOP/s | of peak |")
    print("|---|---|---|---|---|---|---|---|")
    for name in args.configs.split(","):
        for row in bench_config(name, [int(b) for b in args.batches.split(",")], args.repeats, peak):
            print(row, flush=True)


if __name__ == "__main__":
    main()
