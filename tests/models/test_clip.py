"""CLIP without a reference framework: configs, tokenizer rows and segments, strict loading, tiny writers, jit."""
import json
import os
import subprocess
import sys
import time

import numpy as np
import pytest

from pmg_models import clip, clip_image
from pmg_models.checkpoint import CheckpointError
from pmg_models.runtime import to_numpy


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory):
    return clip.init_tiny(tmp_path_factory.mktemp("clip"), seed=0)


@pytest.fixture(scope="module")
def tokenizer(tiny_clip):
    return clip.CLIPTokenizer.from_dir(tiny_clip)


def test_configs_read_field_by_field():
    text = clip.CLIPTextConfig.from_hf({"hidden_size": 64, "num_hidden_layers": 23, "hidden_act": "gelu",
                                        "layer_norm_eps": 1e-6, "eos_token_id": 2, "unknown_field": 1})
    assert (text.hidden_size, text.num_hidden_layers, text.hidden_act, text.layer_norm_eps, text.eos_token_id) == \
        (64, 23, "gelu", 1e-6, 2)
    assert text.max_position_embeddings == 77
    vision = clip.CLIPVisionConfig.from_hf({"image_size": 30, "patch_size": 6})
    assert (vision.image_size, vision.patch_size, vision.hidden_act) == (30, 6, "quick_gelu")
    with pytest.raises(ValueError, match="choose one of"):
        clip.CLIPTextConfig.from_hf({"hidden_act": "relu"})


def test_image_config_reads_old_and_new_forms():
    old = clip.ImageProcessorConfig.from_hf({"size": 224, "crop_size": 224, "image_mean": [0.5] * 3})
    new = clip.ImageProcessorConfig.from_hf({"size": {"shortest_edge": 224}, "crop_size": {"height": 224, "width": 224},
                                             "image_mean": [0.5] * 3})
    assert old == new and old.image_mean == (0.5, 0.5, 0.5)


def test_tokenizer_rows(tokenizer):
    ids, counts = tokenizer.encode(["a red movie poster", "x " * 100])
    assert ids.shape == (2, 77) and ids.dtype == np.int32
    n = counts[0]
    assert ids[0, 0] == tokenizer.bos_id and ids[0, n + 1] == tokenizer.eos_id
    assert (ids[0, n + 2:] == tokenizer.pad_id).all()
    assert counts[1] == 100 and ids[1, -1] == tokenizer.eos_id
    with pytest.raises(ValueError, match="more than the 75"):
        tokenizer.encode(["x " * 100], truncate=False)


def test_encode_segments_matches_joined_text(tokenizer):
    segments = ["a poster of", "Toy Story", ", whimsical", "Café"]
    ids, index = tokenizer.encode_segments(segments)
    np.testing.assert_array_equal(ids, tokenizer.encode([" ".join(segments)])[0][0])
    assert index[0] == -1
    body = index[index >= 0]
    assert list(np.unique(body)) == [0, 1, 2, 3] and (np.diff(body) >= 0).all()
    assert len(tokenizer.tokenize("Toy Story")) == int((index == 1).sum())
    n = len(body)
    assert ids[n + 1] == tokenizer.eos_id and index[n + 1] == -1
    odd = ["東京 🎬 café", "naïve", "", "!!", "Léon"]
    _, index = tokenizer.encode_segments(odd)
    assert [int((index == i).sum()) for i in range(len(odd))] == [len(tokenizer.tokenize(s)) for s in odd]


def test_tiny_writers_are_fast_and_loadable(tmp_path):
    start = time.perf_counter()
    clip.init_tiny(tmp_path / "clip")
    clip.write_tiny_text_encoder(tmp_path / "te", tokenizer_dir=tmp_path / "clip", hidden_act="gelu")
    assert time.perf_counter() - start < 5
    cfg = json.loads((tmp_path / "te" / "config.json").read_text())
    assert cfg["eos_token_id"] == clip.CLIPTokenizer.from_dir(tmp_path / "clip").eos_id
    model = clip.CLIPTextModel.from_pretrained(tmp_path / "te")
    assert model.config.hidden_size == 32 and len(model.fingerprint) == 16
    ids, _ = clip.CLIPTokenizer.from_dir(tmp_path / "clip").encode(["a dark thriller"])
    assert tuple(model(ids).shape) == (1, 77, 32)


def test_encode_and_similarity(tiny_clip):
    model = clip.CLIPModel.from_pretrained(tiny_clip)
    rng = np.random.default_rng(0)
    arr = rng.integers(0, 256, (40, 52, 3), dtype=np.uint8)
    from PIL import Image
    img = model.encode_image([arr, Image.fromarray(arr)])
    np.testing.assert_allclose(img[0], img[1], atol=1e-6)
    txt = model.encode_text(["a red poster", "a blue poster", "horror"])
    np.testing.assert_allclose(np.linalg.norm(txt, axis=-1), 1, atol=1e-5)
    sim = model.similarity(img, txt)
    assert sim.shape == (2, 3) and np.abs(sim).max() <= 100 + 1e-3
    many = model.encode_text(["a red poster"] * 11 + ["horror"])  # two chunks of micro_batch=8, one padded
    np.testing.assert_allclose(many[[0, 11]], txt[[0, 2]], atol=1e-6)
    assert model.encode_text([]).shape == (0, model.projection_dim)


def test_soft_tokens_enter_through_embeddings(tiny_clip, tmp_path, tokenizer):
    clip.write_tiny_text_encoder(tmp_path, tokenizer_dir=tiny_clip)
    model = clip.CLIPTextModel.from_pretrained(tmp_path)
    ids, _ = tokenizer.encode(["a poster"])
    embeds = to_numpy(model.embed_tokens(ids))
    last, states = model.encode_embeds(embeds)
    np.testing.assert_allclose(to_numpy(last), to_numpy(model(ids)), atol=1e-6)
    assert len(states) == model.config.num_hidden_layers + 1
    embeds[0, 3] = np.random.default_rng(1).standard_normal(embeds.shape[-1])  # a soft token: later positions only
    moved = to_numpy(model.encode_embeds(embeds)[0])
    np.testing.assert_allclose(moved[0, :3], to_numpy(last)[0, :3], atol=1e-6)
    assert np.abs(moved[0, 3:] - to_numpy(last)[0, 3:]).max() > 1e-4


@pytest.mark.parametrize("change, message", [
    (lambda w: w.pop("text_model.encoder.layers.1.mlp.fc2.bias"), "missing.*encoder.layers.1.mlp.fc2.bias"),
    (lambda w: w.update({"text_model.extra.weight": np.zeros(2, np.float32)}), "unexpected.*text_model.extra.weight"),
    (lambda w: w.update({"text_model.final_layer_norm.weight": np.zeros(3, np.float32)}),
     "text_model.final_layer_norm.weight.*shape"),
])
def test_strict_loading_names_the_tensor(tmp_path, change, message):
    from safetensors.numpy import load_file, save_file

    clip.write_tiny_text_encoder(tmp_path)
    weights = load_file(tmp_path / "model.safetensors")
    change(weights)
    save_file(weights, tmp_path / "model.safetensors")
    with pytest.raises(CheckpointError, match=message):
        clip.CLIPTextModel.from_pretrained(tmp_path)


def test_center_crop_pads_small_images():
    img = np.full((3, 5, 3), 7, np.uint8)
    out = clip_image.center_crop(img, 6, 4)
    assert out.shape == (6, 4, 3) and out[0].sum() == 0 and (out[2, :, 0] == 7).all()


_JIT_SCRIPT = """
import json, sys
import numpy as np
from pmg_models import clip
model = clip.CLIPModel.from_pretrained(sys.argv[1])
img = np.random.default_rng(0).integers(0, 256, (40, 52, 3), dtype=np.uint8)
print(json.dumps({"text": model.encode_text(["a red poster", "horror"]).tolist(),
                  "image": model.encode_image([img]).tolist()}))
"""


def test_compiled_mode_matches_pynative(tiny_clip):
    env = dict(os.environ, PMG_JIT="1")
    out = subprocess.run([sys.executable, "-c", _JIT_SCRIPT, str(tiny_clip)], env=env, capture_output=True,
                         text=True, timeout=120, check=True)
    compiled = json.loads(out.stdout.strip().splitlines()[-1])
    model = clip.CLIPModel.from_pretrained(tiny_clip)
    img = np.random.default_rng(0).integers(0, 256, (40, 52, 3), dtype=np.uint8)
    np.testing.assert_allclose(compiled["text"], model.encode_text(["a red poster", "horror"]), atol=1e-5)
    np.testing.assert_allclose(compiled["image"], model.encode_image([img]), atol=1e-5)


def test_position_id_buffers_in_old_checkpoints_are_ignored(tmp_path):
    from safetensors.numpy import load_file, save_file

    clip.init_tiny(tmp_path / "clip")
    clip.write_tiny_text_encoder(tmp_path / "te")
    for path, prefixes in ((tmp_path / "clip", ("text_model", "vision_model")), (tmp_path / "te", ("text_model",))):
        weights = load_file(path / "model.safetensors")
        for prefix in prefixes:
            weights[f"{prefix}.embeddings.position_ids"] = np.arange(77, dtype=np.int64)[None]
        save_file(weights, path / "model.safetensors")
    clip.CLIPModel.from_pretrained(tmp_path / "clip")
    clip.CLIPTextModel.from_pretrained(tmp_path / "te")
