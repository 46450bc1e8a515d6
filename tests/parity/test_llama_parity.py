"""Llama parity against transformers (PyTorch CPU): logits, greedy generation, hooks, checkpoints, tokenizer."""
import json
import shutil

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from pmg_models import checkpoint, llama, tokenizers  # noqa: E402

pytestmark = pytest.mark.parity
PROMPTS = ["The user liked Star Wars (1977)", "Amélie", "Give five keywords for the poster of Léon (1994), Drama"]


@pytest.fixture(scope="module")
def tiny_tok(tmp_path_factory):
    """A tokenizer-only directory (from init_tiny) whose files the transformers-made checkpoints reuse."""
    return llama.init_tiny(tmp_path_factory.mktemp("tok"), seed=1)


def _hf_dir(root, tok_dir, name, **cfg):
    torch.manual_seed(0)
    config = transformers.LlamaConfig(
        vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=cfg.pop("kv", 2), max_position_embeddings=256, initializer_range=0.2, **cfg)
    model = transformers.LlamaForCausalLM(config).eval()
    out = root / name
    model.save_pretrained(out, safe_serialization=True, **({"max_shard_size": "60KB"} if "shard" in name else {}))
    for f in ("tokenizer.model", "tokenizer_config.json", "special_tokens_map.json"):
        shutil.copy(tok_dir / f, out / f)
    return model, out


@pytest.fixture(scope="module", params=["gqa_untied", "mha_tied"])
def pair(request, tmp_path_factory, tiny_tok):
    kw = {"kv": 2, "tie_word_embeddings": False} if request.param == "gqa_untied" else \
         {"kv": 4, "tie_word_embeddings": True}
    hf, path = _hf_dir(tmp_path_factory.mktemp("hf"), tiny_tok, request.param, **kw)
    return hf, llama.load(path)


def _batch(lm):
    ids = [lm.tokenizer.encode(p) for p in PROMPTS]
    t = max(map(len, ids))
    tokens = np.array([[0] * (t - len(i)) + i for i in ids])
    mask = np.array([[0] * (t - len(i)) + [1] * len(i) for i in ids])
    return tokens, mask


def test_full_prompt_logits_match(pair):
    hf, lm = pair
    tokens, mask = _batch(lm)
    with torch.no_grad():
        ref = hf(torch.tensor(tokens), attention_mask=torch.tensor(mask)).logits.numpy()
    ours = lm.logits(tokens, mask)
    real = mask.astype(bool)
    assert np.abs(ref[real] - ours[real]).max() <= 1e-4


def test_greedy_generation_matches_transformers(pair):
    hf, lm = pair
    tokens, mask = _batch(lm)
    with torch.no_grad():
        out = hf.generate(torch.tensor(tokens), attention_mask=torch.tensor(mask), max_new_tokens=20,
                          do_sample=False, eos_token_id=None, pad_token_id=0, min_new_tokens=20)
    ref = out[:, tokens.shape[1]:].numpy().tolist()
    ids = [lm.tokenizer.encode(p) for p in PROMPTS]
    ours = lm.generate_ids(ids, 20, _greedy(), [0] * len(ids))
    # a random model may emit EOS; compare up to it
    for r, o in zip(ref, ours):
        cut = r.index(lm.tokenizer.eos_id) if lm.tokenizer.eos_id in r else len(r)
        assert o == r[:cut]
    assert min(map(len, ours)) >= 16, [len(o) for o in ours]


def _greedy():
    from pmg_models.generation import Sampling
    return Sampling()


def test_hidden_states_with_soft_tokens_and_prefix_kv_match_hf(pair):
    hf, lm = pair
    cfg = lm.config
    rng = np.random.default_rng(0)
    tokens = np.array([lm.tokenizer.encode(PROMPTS[2])[:12]] * 2)
    b, t, p = tokens.shape[0], tokens.shape[1], 3
    prefix = rng.standard_normal((cfg.num_hidden_layers, 2, b, cfg.num_key_value_heads, p, cfg.head_dim),
                                 dtype=np.float32)
    soft_pos = np.array([[4, 5], [6, 7]])
    soft = rng.standard_normal((b, 2, cfg.hidden_size), dtype=np.float32)
    ours = lm.hidden_states(tokens, None, inputs_embeds_override=(soft_pos, soft), prefix_kv=prefix)

    with torch.no_grad():
        embeds = hf.model.embed_tokens(torch.tensor(tokens)).clone()
        for r in range(b):
            embeds[r, soft_pos[r]] = torch.tensor(soft[r])
        cache = transformers.DynamicCache(
            ddp_cache_data=[(torch.tensor(prefix[i, 0]), torch.tensor(prefix[i, 1])) for i in range(cfg.num_hidden_layers)],
            config=hf.config)
        ref = hf.model(inputs_embeds=embeds, attention_mask=torch.ones(b, p + t, dtype=torch.long),
                       cache=cache).last_hidden_state.numpy()
    assert np.abs(ref - ours).max() <= 1e-4
    picked = lm.hidden_states(tokens, None, inputs_embeds_override=(soft_pos, soft), prefix_kv=prefix,
                              positions=soft_pos)
    assert np.abs(picked - np.take_along_axis(ref, soft_pos[..., None], 1)).max() <= 1e-4


def test_sharded_checkpoint_loads(tmp_path, tiny_tok):
    hf, path = _hf_dir(tmp_path, tiny_tok, "gqa_shard", kv=2)
    assert (path / "model.safetensors.index.json").exists()
    assert len(checkpoint.weight_files(path)) > 1
    lm = llama.load(path)
    tokens = np.array([lm.tokenizer.encode(PROMPTS[0])])
    with torch.no_grad():
        ref = hf(torch.tensor(tokens)).logits.numpy()
    assert np.abs(ref - lm.logits(tokens)).max() <= 1e-4


def test_init_tiny_loads_in_transformers_and_matches(tmp_path):
    import time

    start = time.perf_counter()
    path = llama.init_tiny(tmp_path / "tiny", seed=3)
    assert time.perf_counter() - start < 5
    hf = transformers.LlamaForCausalLM.from_pretrained(path).eval()
    tok = transformers.AutoTokenizer.from_pretrained(path)
    lm = llama.load(path)
    ids = tok(PROMPTS[0]).input_ids
    assert ids == lm.tokenizer.encode(PROMPTS[0])
    with torch.no_grad():
        ref = hf(torch.tensor([ids])).logits.numpy()
    assert np.abs(ref - lm.logits(np.array([ids]))).max() <= 1e-4


STRINGS = ["The user liked Amélie (2001) — 東京 ☃ 42", "ÄÖÜ ß ñ 😀 日本語", "trail ", "a\tb\nc", "",
           "[INST] <<SYS>>\nBe brief.\n<</SYS>>\n\nKeywords? [/INST]", "Crouching Tiger, Hidden Dragon (Wo hu cang long) (2000)"]


def test_tokenizer_ids_match_transformers(tiny_tok, tmp_path):
    ours = tokenizers.LlamaTokenizer.from_dir(tiny_tok)
    ref = transformers.AutoTokenizer.from_pretrained(tiny_tok)
    for s in STRINGS:
        assert ours.encode(s) == ref(s).input_ids, s
        assert ours.decode(ours.encode(s)) == s
    # tokenizer.json route (the `tokenizers` backend): save HF's fast tokenizer, load it with ours
    ref.save_pretrained(tmp_path)
    (tmp_path / "tokenizer.model").unlink(missing_ok=True)
    fast = tokenizers.LlamaTokenizer.from_dir(tmp_path)
    for s in STRINGS + ["  two  leading spaces"]:
        assert fast.encode(s) == ref(s).input_ids, s


def test_misshaped_tensor_is_named(tmp_path, tiny_tok):
    _, path = _hf_dir(tmp_path, tiny_tok, "bad", kv=2)
    tensors = dict(checkpoint.iter_safetensors(path / "model.safetensors"))
    tensors["model.layers.1.self_attn.k_proj.weight"] = np.zeros((8, 64), np.float32)
    checkpoint.save_safetensors(path / "model.safetensors", tensors, {"format": "pt"})
    with pytest.raises(checkpoint.CheckpointError, match="model.layers.1.self_attn.k_proj.weight"):
        llama.load(path)
    del tensors["model.layers.1.self_attn.k_proj.weight"]
    checkpoint.save_safetensors(path / "model.safetensors", tensors, {"format": "pt"})
    with pytest.raises(checkpoint.CheckpointError, match="model.layers.1.self_attn.k_proj.weight"):
        llama.load(path)
    raw = (path / "model.safetensors").read_bytes()
    (path / "model.safetensors").write_bytes(raw[:len(raw) - 1000])  # truncated download
    with pytest.raises(checkpoint.CheckpointError, match="truncated"):
        llama.load(path)
    (path / "model.safetensors").write_bytes(raw)
    cfg = json.loads((path / "config.json").read_text())
    (path / "config.json").write_text(json.dumps({**cfg, "num_hidden_layers": 1}))
    with pytest.raises(checkpoint.CheckpointError, match="model.layers.1"):
        llama.load(path)


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_half_precision_checkpoint_is_cast_to_fp32(tmp_path, tiny_tok, dtype):
    hf, path = _hf_dir(tmp_path, tiny_tok, "half", kv=2)
    hf.to(getattr(torch, dtype)).save_pretrained(path, safe_serialization=True)
    header = checkpoint.read_header(path / "model.safetensors")
    assert {v["dtype"] for v in header.values()} == {"F16" if dtype == "float16" else "BF16"}
    lm = llama.load(path)
    tokens = np.array([lm.tokenizer.encode(PROMPTS[2])])
    ref_model = transformers.LlamaForCausalLM.from_pretrained(path, dtype=torch.float32).eval()  # rounded weights, fp32 math
    with torch.no_grad():
        ref = ref_model(torch.tensor(tokens)).logits.numpy()
    assert np.abs(ref - lm.logits(tokens)).max() <= 1e-4
