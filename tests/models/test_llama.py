"""Llama without a reference framework: config, key maps, mindformers .ckpt, generation behaviour, compiled mode."""
import json

import numpy as np
import pytest

from pmg_models import checkpoint, llama, tokenizers
from pmg_models import generation
from pmg_models.generation import Sampling, batch_bucket, cache_bucket, length_bucket


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    path = llama.init_tiny(tmp_path_factory.mktemp("llama"), seed=0)
    return path, llama.load(path)


def test_config_from_hf_reads_fields_and_rejects_rope_scaling():
    base = {"vocab_size": 100, "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
            "num_attention_heads": 4, "rope_theta": 5e5, "eos_token_id": [2, 7]}
    cfg = llama.LlamaConfig.from_hf(base)
    assert (cfg.num_key_value_heads, cfg.head_dim, cfg.rope_theta, cfg.eos_token_id) == (4, 16, 5e5, 2)
    new_style = llama.LlamaConfig.from_hf({**base, "rope_theta": None, "rope_parameters": {"rope_type": "default",
                                                                                           "rope_theta": 1e4}})
    assert new_style.rope_theta == 1e4
    with pytest.raises(ValueError, match="rope scaling 'linear'"):
        llama.LlamaConfig.from_hf({**base, "rope_scaling": {"type": "linear", "factor": 2.0}})
    with pytest.raises(ValueError, match="rope scaling 'llama3'"):
        llama.LlamaConfig.from_hf({**base, "rope_parameters": {"rope_type": "llama3", "rope_theta": 1e4}})
    assert llama.LlamaConfig.from_hf(cfg.to_hf()) == cfg
    with pytest.raises(ValueError, match="hidden_size"):
        llama.LlamaConfig.from_hf({k: v for k, v in base.items() if k != "hidden_size"})
    with pytest.raises(ValueError, match="multiple"):
        llama.LlamaConfig.from_hf({**base, "num_key_value_heads": 3})


def test_mindformers_key_map():
    assert llama.map_mindformers_key("model.tok_embeddings.embedding_weight") == "model.embed_tokens.weight"
    assert llama.map_mindformers_key("model.layers.3.attention.wq.weight") == "model.layers.3.self_attn.q_proj.weight"
    assert llama.map_mindformers_key("model.layers.0.attention.wo.weight") == "model.layers.0.self_attn.o_proj.weight"
    assert llama.map_mindformers_key("model.layers.1.feed_forward.w1.weight") == "model.layers.1.mlp.gate_proj.weight"
    assert llama.map_mindformers_key("model.layers.1.feed_forward.w2.weight") == "model.layers.1.mlp.down_proj.weight"
    assert llama.map_mindformers_key("model.layers.1.feed_forward.w3.weight") == "model.layers.1.mlp.up_proj.weight"
    assert llama.map_mindformers_key("model.layers.2.attention_norm.weight") == "model.layers.2.input_layernorm.weight"
    assert llama.map_mindformers_key("model.layers.2.ffn_norm.weight") == "model.layers.2.post_attention_layernorm.weight"
    assert llama.map_mindformers_key("model.norm_out.weight") == "model.norm.weight"
    assert llama.map_mindformers_key("lm_head.weight") == "lm_head.weight"


_TO_MINDFORMERS = {"embed_tokens.weight": "tok_embeddings.embedding_weight", "self_attn.q_proj": "attention.wq",
                   "self_attn.k_proj": "attention.wk", "self_attn.v_proj": "attention.wv",
                   "self_attn.o_proj": "attention.wo", "mlp.gate_proj": "feed_forward.w1",
                   "mlp.down_proj": "feed_forward.w2", "mlp.up_proj": "feed_forward.w3",
                   "input_layernorm": "attention_norm", "post_attention_layernorm": "ffn_norm",
                   "model.norm.": "model.norm_out."}


def test_mindformers_ckpt_loads_like_safetensors(tiny, tmp_path):
    import mindspore as ms

    path, lm = tiny
    entries = []
    for name, arr in checkpoint.iter_safetensors(path / "model.safetensors"):
        for old, new in _TO_MINDFORMERS.items():
            name = name.replace(old, new)
        entries.append({"name": name, "data": ms.Tensor(arr)})
    ms.save_checkpoint(entries, str(tmp_path / "llama2.ckpt"))
    for f in ("config.json", "tokenizer.model"):
        (tmp_path / f).write_bytes((path / f).read_bytes())
    other = llama.load(tmp_path)
    ids = np.array([lm.tokenizer.encode("The user liked Heat (1995)")])
    assert np.abs(other.logits(ids) - lm.logits(ids)).max() == 0
    entries[3]["name"] = "model.layers.0.attention.wz.weight"
    ms.save_checkpoint(entries, str(tmp_path / "llama2.ckpt"))
    with pytest.raises(checkpoint.CheckpointError, match="attention.wz"):
        llama.load(tmp_path)


def test_pickle_checkpoint_is_refused(tmp_path, tiny):
    path, _ = tiny
    (tmp_path / "config.json").write_bytes((path / "config.json").read_bytes())
    (tmp_path / "pytorch_model.bin").write_bytes(b"not unpickled")
    with pytest.raises(checkpoint.CheckpointError, match="pickle"):
        llama.load(tmp_path)


def test_chat_template_strings():
    assert tokenizers.format_llama2_chat(None, " Hi ") == "[INST] Hi [/INST]"
    assert tokenizers.format_llama2_chat("Be brief.", "List keywords.") == \
        "[INST] <<SYS>>\nBe brief.\n<</SYS>>\n\nList keywords. [/INST]"
    segs = tokenizers.llama2_dialog_segments("S", [("u1", "a1")], "u2")
    assert segs == ["[INST] <<SYS>>\nS\n<</SYS>>\n\nu1 [/INST] a1 ", "[INST] u2 [/INST]"]


def test_dialog_encoding_puts_bos_eos_per_segment(tiny):
    _, lm = tiny
    ids = tokenizers.encode_llama2_dialog(lm.tokenizer, None, [("hi", "yo")], "more")
    assert ids[0] == lm.tokenizer.bos_id and ids.count(lm.tokenizer.bos_id) == 2
    assert ids.count(lm.tokenizer.eos_id) == 1


def test_buckets():
    assert [length_bucket(n) for n in (1, 16, 17, 200, 5000)] == [16, 16, 32, 256, 5120]
    assert [batch_bucket(n, 32) for n in (1, 3, 8, 9, 40)] == [1, 4, 8, 16, 32]
    assert [cache_bucket(n, 4096) for n in (1, 64, 65, 200, 300, 4096)] == [64, 64, 128, 256, 512, 4096]
    assert [cache_bucket(n, 500) for n in (300, 500, 560)] == [512, 512, 576]  # capped, but never below need


def test_prompt_lengths_do_not_thrash_compiled_buckets(tiny, monkeypatch):
    """Each (batch, cache) bucket is built once. Rebuilding an evicted one leaked its compiled memory
    (~300 MB each time on a 2-layer model), which grew a 1,000-user backfill to 5 GB."""
    _, lm = tiny
    built = []
    real = generation.llama.KVRunner
    monkeypatch.setattr(generation.llama, "KVRunner", lambda net, b, n: built.append((b, n)) or real(net, b, n))
    lm._runners.clear()
    words = [2, 20, 45, 70, 100, 140]   # prompt lengths across five length buckets
    for _ in range(2):
        for n in words:
            lm.generate([" ".join(["drama"] * n)] * 3, max_new_tokens=48)
    assert len(built) == len(set(built)) <= generation.MAX_RUNNERS


def test_row_output_does_not_depend_on_batch(tiny):
    _, lm = tiny
    prompts = ["The user liked", "Amélie (2001), Comedy|Romance, a much longer prompt than the first", "Heat"]
    kw = dict(max_new_tokens=12, temperature=0.9, top_k=50, top_p=0.9, repetition_penalty=1.2, seed=7)
    together = lm.generate(prompts, **kw)
    alone = [lm.generate([p], **kw)[0] for p in prompts]
    assert together == alone
    assert lm.generate(prompts, **kw) == together  # deterministic


def test_prefill_last_position_logits_match_the_full_forward(tiny):
    # the prefill skips the last layer's work for every position but the last (left-padded rows)
    _, lm = tiny
    rows = [lm.tokenizer.encode(p) for p in ("The user liked Heat", "A much longer prompt about Amélie and rain")]
    t = max(map(len, rows))
    tokens = np.array([[lm.tokenizer.pad_id] * (t - len(r)) + r for r in rows], np.int32)
    mask = (np.arange(t)[None] >= (t - np.array([len(r) for r in rows]))[:, None]).astype(np.int32)
    cache, prefill, _ = lm.runner(2, cache_bucket(t + 4, lm.config.max_position_embeddings))
    real = np.zeros((2, cache.length), np.int32)
    real[:, :t] = mask
    got = lm._run_prefill(prefill, tokens, real)
    want = lm.logits(tokens, mask)[:, -1]
    assert np.abs(got - want).max() <= 1e-4 * max(1.0, np.abs(want).max())


def test_greedy_batch_chunks_and_stop_strings(tiny):
    _, lm = tiny
    lm.max_batch = 2
    try:
        prompts = ["The user liked", "Heat", "Star Wars (1977)"]
        full = lm.generate(prompts, max_new_tokens=10)
        assert full == [lm.generate([p], max_new_tokens=10)[0] for p in prompts]
    finally:
        lm.max_batch = 32
    text = full[0]
    if len(text) > 3:
        stop = text[2:4]
        cut = lm.generate(prompts[:1], max_new_tokens=10, stop=(stop,))[0]
        assert cut == text[:text.find(stop)]
    assert lm.generate([], max_new_tokens=5) == []
    with pytest.raises(ValueError, match="max_position_embeddings"):
        lm.generate(["x"], max_new_tokens=10_000)


def test_sampling_filters():
    logits = np.log(np.array([[0.5, 0.3, 0.15, 0.05]], np.float32))
    rng = [np.random.default_rng(0)]
    assert Sampling().choose(logits, [[]], rng)[0] == 0
    assert Sampling(repetition_penalty=2.0).choose(logits, [[0]], rng)[0] == 1  # negative logit: multiplied
    draws = {int(Sampling(temperature=1.0, top_k=2).choose(logits, [[]], [np.random.default_rng(s)])[0])
             for s in range(50)}
    assert draws == {0, 1}
    draws = {int(Sampling(temperature=1.0, top_p=0.5).choose(logits, [[]], [np.random.default_rng(s)])[0])
             for s in range(50)}
    assert draws == {0}
    with pytest.raises(ValueError):
        Sampling(top_p=0.0)


def test_compiled_generation_matches_pynative(tiny, monkeypatch):
    path, lm = tiny
    prompts = ["The user liked", "Amélie (2001), Comedy|Romance"]
    eager = lm.generate(prompts, max_new_tokens=8)
    monkeypatch.setenv("PMG_JIT", "1")
    compiled = llama.load(path)
    assert compiled.generate(prompts, max_new_tokens=8) == eager


def test_fingerprint_and_info(tiny):
    path, lm = tiny
    assert lm.fingerprint == checkpoint.fingerprint(path) and len(lm.fingerprint) == 16
    cfg = json.loads((path / "config.json").read_text())
    assert llama.LlamaConfig.from_hf(cfg) == lm.config
    n = sum(int(np.prod(p.shape)) for p in lm.net.get_parameters())
    assert n == lm.config.num_parameters
    names = [p.name for p in lm.net.get_parameters()]
    lm.generate(["x"], max_new_tokens=2)
    assert [p.name for p in lm.net.get_parameters()] == names  # KV runners must not rename the model's params
    assert names[0] == "model.embed_tokens.weight"


def test_gradients_flow_to_prefix_kv_and_soft_tokens(tiny):
    """The soft-prompt path: value_and_grad through LlamaModel.construct w.r.t. prefix keys/values and soft tokens."""
    import mindspore as ms

    from pmg_models import runtime
    from pmg_models.generation import soft_token_onehot, splice_embeddings

    _, lm = tiny
    cfg = lm.config
    rng = np.random.default_rng(0)
    ids = np.array([lm.tokenizer.encode("The user liked Heat (1995) and Alien (1979)")[:10]] * 2)
    mask, pos = lm.model_inputs(ids, None, prefix_len=2)
    onehot = runtime.to_tensor(soft_token_onehot(np.array([[7, 8], [8, 9]]), ids.shape[1]))
    embeds = lm.embed(ids)
    probe = ms.Tensor(rng.standard_normal((cfg.hidden_size,), dtype=np.float32))
    prefix = rng.standard_normal((cfg.num_hidden_layers, 2, 2, cfg.num_key_value_heads, 2, cfg.head_dim),
                                 dtype=np.float32)
    soft = rng.standard_normal((2, 2, cfg.hidden_size), dtype=np.float32)

    def loss_fn(prefix_kv, vectors):
        h = lm.net.model(splice_embeddings(embeds, onehot, vectors), mask, pos, prefix_kv)
        return (h[:, -1] * probe).sum()

    loss, (g_prefix, g_soft) = ms.value_and_grad(loss_fn, grad_position=(0, 1))(ms.Tensor(prefix), ms.Tensor(soft))
    assert g_prefix.shape == prefix.shape and g_soft.shape == soft.shape
    eps = 1e-2
    for arr, grad, where in ((prefix, g_prefix, (1, 0, 0, 1, 1, 3)), (soft, g_soft, (0, 1, 5))):
        bumped = arr.copy()
        bumped[where] += eps
        args = (bumped, soft) if arr is prefix else (prefix, bumped)
        numeric = (float(loss_fn(*map(ms.Tensor, args))) - float(loss)) / eps
        assert abs(numeric) > 1e-3 and abs(numeric - float(grad.asnumpy()[where])) < 2e-2 * max(1.0, abs(numeric))


def test_decode_attention_kernel_matches_the_classic_form(tiny):
    """The native prefill and decode attention (open keys and cache slots only) and the classic batched
    matmuls over the whole slot-major cache (Ascend, or no compiler) give the same logits and greedy text."""
    path, _ = tiny
    native, classic = llama.load(path), llama.load(path)
    for layer in classic.net.model.layers:
        layer.self_attn.cache_attention.kernel, layer.self_attn.cache_attention.available = None, False
        layer.self_attn.masked_attention.kernel = None
    assert native.net.model.layers[0].self_attn.cache_attention.available
    assert native.net.model.layers[0].self_attn.masked_attention.kernel is not None
    rows = [native.tokenizer.encode(p) for p in ("The user liked Heat", "A much longer prompt about Amélie")]
    t = max(map(len, rows))
    tokens = np.array([[native.tokenizer.pad_id] * (t - len(r)) + r for r in rows], np.int32)
    steps = []
    for lm in (native, classic):
        cache, prefill, decode = lm.runner(2, cache_bucket(t + 4, lm.config.max_position_embeddings))
        real = np.zeros((2, cache.length), np.int32)
        real[:, :t] = (tokens != lm.tokenizer.pad_id)
        steps.append(lm._run_prefill(prefill, tokens, real))
        real[:, t] = 1
        pos = real[:, :t].sum(1).astype(np.int32)
        steps.append(lm._run_decode(decode, np.array([5, 9], np.int32), pos, real, t))
    for got, want in zip(steps[:2], steps[2:]):  # prefill, then decode step
        assert np.abs(got - want).max() <= 1e-4 * max(1.0, np.abs(want).max())
    prompts = ["The user liked", "Star Wars (1977)"]
    assert native.generate(prompts, max_new_tokens=10) == classic.generate(prompts, max_new_tokens=10)
