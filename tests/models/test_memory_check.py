"""Checkpoints too large for this machine are refused by name before any model is built (not OOM-killed)."""
import json
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import pytest

from pmg_models import clip_tiny, info, llama, runtime
from pmg_models import sd as sd_models

HUGE = [40_000, 1_000_000]  # 4e10 parameters: 160 GB in fp32, more than any test machine has


def header_only(path: Path, name: str) -> None:
    """A safetensors file whose header declares one huge tensor but holds none of its bytes."""
    header = json.dumps({name: {"dtype": "F16", "shape": HUGE, "data_offsets": [0, 2 * HUGE[0] * HUGE[1]]}}).encode()
    path.write_bytes(struct.pack("<Q", len(header)) + header)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny")
    return {"llm": llama.init_tiny(root / "llm"), "sd": sd_models.init_tiny(root / "sd"),
            "clip": clip_tiny.init_tiny(root / "clip")}


def too_big(tiny, kind: str, tmp_path: Path) -> Path:
    big = tmp_path / kind
    shutil.copytree(tiny[kind], big)
    if kind == "sd":
        header_only(big / "unet" / "diffusion_pytorch_model.safetensors", "conv_in.weight")
    else:
        header_only(big / "model.safetensors", "model.embed_tokens.weight" if kind == "llm" else "logit_scale")
    return big


@pytest.mark.parametrize("kind", ["llm", "sd", "clip"])
def test_loading_a_checkpoint_larger_than_memory_is_refused_before_building(tiny, kind, tmp_path, monkeypatch):
    from pmg_models.clip import CLIPModel
    from pmg_models.generation import LlamaLM
    from pmg_models.sd.pipeline import StableDiffusion

    load = {"llm": LlamaLM.from_pretrained, "sd": StableDiffusion.from_pretrained, "clip": CLIPModel.from_pretrained}[kind]
    load(tiny[kind])  # the real tiny checkpoint fits
    big = too_big(tiny, kind, tmp_path)
    assert info.parameters(big) >= 4 * 10**10
    monkeypatch.setattr(llama, "build", lambda cfg: pytest.fail("built a model that cannot fit"))
    with pytest.raises(runtime.HostMemoryError, match=r"the model weights need \d+\.\d GB as float32 on CPU \("):
        load(big)


def test_models_info_reads_an_sd_folder_with_only_fp16_variant_weights(tiny, tmp_path):
    sd = tmp_path / "sd"
    shutil.copytree(tiny["sd"], sd)
    for part in ("unet", "vae"):
        weights = sd / part / "diffusion_pytorch_model.safetensors"
        if weights.exists():
            weights.rename(weights.with_name("diffusion_pytorch_model.fp16.safetensors"))
    assert info.parameters(sd) == info.parameters(tiny["sd"]) > 0
    out = subprocess.run([sys.executable, "-m", "flows", "models", "info", str(sd)], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
