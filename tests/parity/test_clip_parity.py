"""CLIP parity against transformers on PyTorch CPU: tiny random models made and saved by transformers.

Tolerance: 1e-4 relative to the output scale (max |ref|), fp32. Tokenizer ids and pixel values: exact.
"""
import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from pmg_models import clip  # noqa: E402
from pmg_models.runtime import to_numpy  # noqa: E402

pytestmark = pytest.mark.parity

TEXTS = ["a photo of a cat", "Action|Sci-Fi  movie poster, NEON blue!!", "Léon: The Professional (1994) café 東京 🎬",
         "", "it's   they're I'll <|endoftext|> ok", "dark " * 120]


def close(ours, ref, tol=1e-4):
    ours, ref = np.asarray(ours, np.float64), np.asarray(ref, np.float64)
    assert ours.shape == ref.shape
    err = np.abs(ours - ref).max() / max(np.abs(ref).max(), 1e-6)
    assert err < tol, f"relative error {err:.2e}"


def _perturb_norms(model, seed=0):
    """transformers inits LayerNorms to (1, 0); random affine params catch a swapped or skipped norm."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.add_(0.2 * torch.randn(p.shape, generator=g))
    return model


@pytest.fixture(scope="module")
def tok_dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("clip_tok")
    return {"eos": clip.write_tiny_tokenizer(root / "sd1"), "!": clip.write_tiny_tokenizer(root / "sd2", pad_token="!")}


@pytest.fixture(scope="module")
def tokenizer(tok_dirs):
    return clip.CLIPTokenizer.from_dir(tok_dirs["eos"])


@pytest.mark.parametrize("pad", ["eos", "!"])
def test_tokenizer_ids_equal_transformers(tok_dirs, pad):
    ref = transformers.CLIPTokenizer.from_pretrained(tok_dirs[pad])
    ours = clip.CLIPTokenizer.from_dir(tok_dirs[pad])
    want = ref(TEXTS, padding="max_length", max_length=77, truncation=True, return_tensors="np").input_ids
    ids, counts = ours.encode(TEXTS)
    np.testing.assert_array_equal(ids, want)
    assert (ours.bos_id, ours.eos_id, ours.pad_id) == (ref.bos_token_id, ref.eos_token_id, ref.pad_token_id)
    assert counts[-1] > 75 and counts[3] == 0


def _text_model(path, tokenizer, act, eos=None, layers=3):
    cfg = transformers.CLIPTextConfig(hidden_size=32, num_hidden_layers=layers, num_attention_heads=4,
                                      intermediate_size=37, vocab_size=len(tokenizer.vocab), hidden_act=act,
                                      bos_token_id=tokenizer.bos_id, pad_token_id=tokenizer.pad_id,
                                      eos_token_id=tokenizer.eos_id if eos is None else eos, layer_norm_eps=1e-5)
    torch.manual_seed(0)
    model = _perturb_norms(transformers.CLIPTextModel(cfg)).eval()
    model.save_pretrained(path, safe_serialization=True)
    return model, path


@pytest.fixture(scope="module", params=["quick_gelu", "gelu"])
def text_pair(request, tmp_path_factory, tokenizer):
    ref, path = _text_model(tmp_path_factory.mktemp("text"), tokenizer, request.param)
    return ref, clip.CLIPTextModel.from_pretrained(path), tokenizer.encode(TEXTS)[0]


def test_text_encoder_last_penultimate_pooled(text_pair):
    ref, ours, ids = text_pair
    with torch.no_grad():
        out = ref(torch.tensor(ids, dtype=torch.long), output_hidden_states=True)
        pen = ref.final_layer_norm(out.hidden_states[-2])
    close(to_numpy(ours(ids)), out.last_hidden_state)
    close(to_numpy(ours(ids, output_layer="penultimate")), pen)
    close(ours.pooled(ids), out.pooler_output)
    _, states = ours.encode_embeds(ours.embed_tokens(ids))
    assert len(states) == len(out.hidden_states)
    for mine, theirs in zip(states, out.hidden_states):
        close(to_numpy(mine), theirs)


def test_text_encoder_padding_mask(text_pair):
    ref, ours, ids = text_pair
    mask = (np.arange(77)[None] < np.array([5, 9, 20, 2, 12, 77])[:, None]).astype(np.int64)
    with torch.no_grad():
        want = ref(torch.tensor(ids, dtype=torch.long), attention_mask=torch.tensor(mask)).last_hidden_state
    close(to_numpy(ours(ids, attention_mask=mask)), want)


def test_legacy_eos_token_id_pools_at_argmax(tmp_path_factory, tokenizer):
    ref, path = _text_model(tmp_path_factory.mktemp("legacy"), tokenizer, "quick_gelu", eos=2, layers=1)
    ours = clip.CLIPTextModel.from_pretrained(path)
    ids = tokenizer.encode(TEXTS[:3])[0]
    ids[0, 3] = len(tokenizer.vocab) - 1  # a larger id before the eos moves HF's legacy pooling position
    with torch.no_grad():
        want = ref(torch.tensor(ids, dtype=torch.long)).pooler_output
    close(ours.pooled(ids), want)


def test_fp16_weights_load(tmp_path, tokenizer):
    ref, _ = _text_model(tmp_path / "fp32", tokenizer, "gelu", layers=1)
    ref.half().save_pretrained(tmp_path / "fp16", safe_serialization=True)
    ours = clip.CLIPTextModel.from_pretrained(tmp_path / "fp16")
    ids = tokenizer.encode(TEXTS[:2])[0]
    with torch.no_grad():
        want = ref.float()(torch.tensor(ids, dtype=torch.long)).last_hidden_state
    close(to_numpy(ours(ids)), want)


@pytest.fixture(scope="module")
def clip_pair(tmp_path_factory, tok_dirs):
    tok = clip.CLIPTokenizer.from_dir(tok_dirs["eos"])
    text = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=37,
                vocab_size=len(tok.vocab), bos_token_id=tok.bos_id, eos_token_id=tok.eos_id, pad_token_id=tok.pad_id)
    vision = dict(hidden_size=24, num_hidden_layers=2, num_attention_heads=3, intermediate_size=29, image_size=30,
                  patch_size=6, hidden_act="gelu", layer_norm_eps=1e-6)
    cfg = transformers.CLIPConfig(text_config=text, vision_config=vision, projection_dim=16)
    torch.manual_seed(1)
    model = _perturb_norms(transformers.CLIPModel(cfg)).eval()
    path = tmp_path_factory.mktemp("clip_full")
    model.save_pretrained(path, safe_serialization=True)
    image_proc = transformers.CLIPImageProcessor(size={"shortest_edge": 30}, crop_size={"height": 30, "width": 30},
                                                 image_mean=[0.5, 0.4, 0.3], image_std=[0.2, 0.25, 0.3])
    processor = transformers.CLIPProcessor(image_processor=image_proc,
                                           tokenizer=transformers.CLIPTokenizer.from_pretrained(tok_dirs["eos"]))
    processor.save_pretrained(path)
    return model, processor, clip.CLIPModel.from_pretrained(path)


def _images():
    from PIL import Image

    rng = np.random.default_rng(3)
    arrays = [rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for h, w in [(37, 50), (64, 31), (17, 23), (30, 30)]]
    rgba = Image.fromarray(rng.integers(0, 256, (41, 45, 4), dtype=np.uint8), "RGBA")
    return arrays + [Image.fromarray(arrays[0]), rgba, np.asarray(rgba)]


def test_preprocessing_equals_clip_image_processor(clip_pair):
    _, processor, ours = clip_pair
    images = _images()
    want = processor(images=images, return_tensors="np").pixel_values
    np.testing.assert_array_equal(ours.preprocess(images), want)


def test_image_text_embeddings_and_logits(clip_pair):
    ref, processor, ours = clip_pair
    images = _images()[:4]
    inputs = processor(text=TEXTS, images=images, return_tensors="pt", padding="max_length", max_length=77,
                       truncation=True)
    with torch.no_grad():
        out = ref(input_ids=inputs.input_ids, pixel_values=inputs.pixel_values)
    text, image = ours.encode_text(TEXTS), ours.encode_image(images)
    close(text, out.text_embeds)
    close(image, out.image_embeds)
    close(ours.logits_per_image(image, text), out.logits_per_image)
    close(ours.similarity(image, text), 100 * out.image_embeds @ out.text_embeds.T)
    with torch.no_grad():
        want = ref.get_text_features(input_ids=inputs.input_ids).pooler_output
    close(ours.text_features(inputs.input_ids.numpy()), want)


def test_tiny_writers_load_in_transformers(tmp_path):
    """Our NumPy-written tiny dirs are real HF checkpoints: transformers loads them and agrees with us."""
    root = clip.init_tiny(tmp_path / "clip")
    clip.write_tiny_text_encoder(tmp_path / "text_encoder", tokenizer_dir=root, hidden_act="gelu")
    ref_text = transformers.CLIPTextModel.from_pretrained(tmp_path / "text_encoder").eval()
    ref = transformers.CLIPModel.from_pretrained(root).eval()
    processor = transformers.CLIPProcessor.from_pretrained(root)
    ours_text, ours = clip.CLIPTextModel.from_pretrained(tmp_path / "text_encoder"), clip.CLIPModel.from_pretrained(root)
    images = _images()[:3]
    inputs = processor(text=TEXTS, images=images, return_tensors="pt", padding="max_length", max_length=77,
                       truncation=True)
    np.testing.assert_array_equal(inputs.input_ids.numpy(), ours.tokenizer.encode(TEXTS)[0])
    with torch.no_grad():
        out = ref(input_ids=inputs.input_ids, pixel_values=inputs.pixel_values)
        last = ref_text(inputs.input_ids).last_hidden_state
    close(to_numpy(ours_text(inputs.input_ids.numpy())), last)
    close(ours.encode_text(TEXTS), out.text_embeds)
    close(ours.encode_image(images), out.image_embeds)
