"""Soft prompt model: shapes, prefix layout (checked against the LLM's own keys/values), gradients, save/load."""
import json
import os
import subprocess
import sys
import textwrap
from dataclasses import asdict

import numpy as np
import pytest

ms = pytest.importorskip("mindspore")

from pmg_models import checkpoint, llama, runtime  # noqa: E402
from pmg_models import soft_prompt as S  # noqa: E402
from pmg_models.generation import LlamaLM  # noqa: E402

TEXTS = ["### Human: Someone watched and liked these movies: \"0. Heat(Action|Crime): heist.\". Describe.\n"
         "### Assistant:", "short one"]


@pytest.fixture(scope="module")
def lm(tmp_path_factory):
    directory = llama.init_tiny(tmp_path_factory.mktemp("llm"), seed=0)
    return LlamaLM.from_pretrained(directory)


def _soft(lm, width=768, seed=1, **kw):
    return S.SoftPrompt(S.SoftPromptConfig.for_models(lm.config, width, lm.fingerprint, "sd-fp", **kw), seed=seed)


def test_default_config_matches_the_original_parameter_count():
    cfg = S.SoftPromptConfig(sd_width=768)  # Llama-2-7B, P = M = 4, the original's 768 projector
    assert cfg.n_prefix * cfg.prefix_width == 1_048_576
    assert cfg.n_tokens * cfg.hidden_size == 16_384
    assert cfg.num_parameters == 1_048_576 + 16_384 + 4096 * 768 + 768
    for p, m in ((0, 4), (4, 0)):  # a zero-length prefix once crashed MindSpore's StridedSliceGrad mid-training
        with pytest.raises(ValueError, match=f"must be at least 1, got P={p}, M={m}"):
            S.SoftPromptConfig(n_prefix=p, n_tokens=m, sd_width=768)
    from pmg_models.soft_prompt_train import TrainConfig
    with pytest.raises(ValueError, match="seed must be a non-negative integer"):
        TrainConfig(seed=-1)


@pytest.mark.parametrize("width", [768, 1024])  # SD 1.x and SD 2.x text widths
def test_embed_shapes_and_batch_independence(lm, width):
    soft = _soft(lm, width)
    out = S.embed(soft, lm, TEXTS)
    assert out.shape == (2, 4, width) and out.dtype == np.float32 and np.isfinite(out).all()
    alone = S.embed(soft, lm, TEXTS[1:])
    np.testing.assert_allclose(alone[0], out[1], atol=1e-5)
    assert S.embed(soft, lm, []).shape == (0, 4, width)


def test_prefix_kv_layout_and_shapes(lm):
    soft = _soft(lm)
    c = soft.cfg
    kv = runtime.to_numpy(soft.prefix_kv(3))
    assert kv.shape == (c.num_layers, 2, 3, c.num_kv_heads, c.n_prefix, c.head_dim)
    table = soft.prefix.asnumpy()
    l, s, h, p, d = 1, 1, 0, 2, 5
    assert kv[l, s, 2, h, p, d] == table[p, ((l * 2 + s) * c.num_kv_heads + h) * c.head_dim + d]


def test_prefix_and_tokens_equal_running_the_text_they_stand_for(lm):
    """A prefix holding the LLM's own keys/values of a text A, and soft tokens holding the embeddings of
    tokens X, must give the same read-out as running A + B + X as plain text."""
    model = lm.net.model
    tok = lm.tokenizer
    a = tok.encode("Heat, Se7en", bos=True)[:4]
    b = tok.encode(" and Toy Story", bos=False)
    x = tok.encode(" crime drama", bos=False)[:2]
    p, m = len(a), len(x)
    soft = _soft(lm, n_prefix=p, n_tokens=m)
    # Reference: the whole text, read out at the positions of X.
    ids = np.array([a + b + x], np.int32)
    mask, pos = lm.model_inputs(ids)
    hidden = runtime.to_numpy(model(lm.embed(ids), mask, pos))[:, p + len(b):]
    expected = runtime.to_numpy(soft.mapping(ms.Tensor(hidden[0])))
    # Soft path: A as prefix keys/values, X as multimodal token vectors.
    mask_a, pos_a = lm.model_inputs(np.array([a], np.int32))
    _, ks, vs = model.forward(lm.embed(np.array([a], np.int32)), mask_a, pos_a)
    kv = np.stack([np.stack([runtime.to_numpy(k)[0], runtime.to_numpy(v)[0]]) for k, v in zip(ks, vs)])  # (L,2,H,P,D)
    soft.prefix.set_data(ms.Tensor(kv.transpose(3, 0, 1, 2, 4).reshape(p, -1).astype(np.float32)))
    soft.tokens.set_data(ms.Tensor(runtime.to_numpy(lm.embed(np.array([x], np.int32)))[0]))
    inputs = S.SoftInputs(np.array([b + [tok.pad_id] * m + [tok.pad_id] * 3], np.int32),
                          np.array([[1] * (len(b) + m) + [0] * 3], np.int32),
                          np.array([np.arange(len(b), len(b) + m)]))
    encoder = S.SoftPromptEncoder(soft, model)
    got = runtime.to_numpy(encoder(*S.model_inputs(inputs, p)))
    np.testing.assert_allclose(got[0], expected, atol=2e-5)


def test_gradients_reach_only_the_soft_prompt_and_loss_decreases(lm):
    soft = _soft(lm, width=32)
    encoder = S.SoftPromptEncoder(soft, lm.net.model)
    args = S.model_inputs(S.prepare_inputs(lm.tokenizer, TEXTS, 4), soft.cfg.n_prefix)
    target = ms.Tensor(runtime.host_rng(3).standard_normal((2, 4, 32), dtype=np.float32))

    def loss_fn(*inputs):
        return ((encoder(*inputs) - target) ** 2).mean()

    params = soft.trainable_params()
    grad_fn = ms.value_and_grad(loss_fn, None, params)
    loss0, grads = grad_fn(*args)
    assert [p.name for p in params] == ["prefix", "tokens", "mapping.weight", "mapping.bias"]
    assert all(float(np.abs(g.asnumpy()).max()) > 0 for g in grads)
    before = lm.net.model.layers[0].self_attn.q_proj.weight.asnumpy().copy()
    opt = ms.nn.AdamWeightDecay(params, learning_rate=1e-2)
    for _ in range(5):
        loss, grads = grad_fn(*args)
        opt(grads)
    assert float(loss_fn(*args).asnumpy()) < 0.9 * float(loss0.asnumpy())
    np.testing.assert_array_equal(lm.net.model.layers[0].self_attn.q_proj.weight.asnumpy(), before)


def test_save_load_round_trip_and_fingerprint_checks(lm, tmp_path):
    soft = _soft(lm, 1024, seed=5)
    path = S.save(soft, tmp_path / "user_soft.safetensors")
    assert path.stat().st_size < soft.cfg.num_parameters * 4 + 4096  # float32 tensors + a small header
    assert S.read_config(path) == soft.cfg
    loaded = S.load(path, llm_fingerprint=lm.fingerprint, sd_fingerprint="sd-fp", llm=lm.config, sd_width=1024)
    for a, b in zip(soft.get_parameters(), loaded.get_parameters()):
        assert a.name == b.name
        np.testing.assert_array_equal(a.asnumpy(), b.asnumpy())
    np.testing.assert_array_equal(S.embed(soft, lm, TEXTS), S.embed(loaded, lm, TEXTS))
    with pytest.raises(checkpoint.CheckpointError, match="LLM checkpoint"):
        S.load(path, llm_fingerprint="another-llm")
    with pytest.raises(checkpoint.CheckpointError, match="SD checkpoint"):
        S.load(path, sd_fingerprint="another-sd")
    with pytest.raises(checkpoint.CheckpointError, match="width 1024, the SD text encoder has width 768"):
        S.load(path, sd_width=768)


def test_load_rejects_foreign_and_broken_files(lm, tmp_path):
    plain = tmp_path / "plain.safetensors"
    checkpoint.save_safetensors(plain, {"x": np.zeros(2, np.float32)})
    with pytest.raises(checkpoint.CheckpointError, match="not a PMG soft-prompt file"):
        S.load(plain)
    soft = _soft(lm)
    path = S.save(soft, tmp_path / "s.safetensors")
    tensors = {p.name: p.asnumpy() for p in soft.get_parameters()}
    tensors["tokens"] = np.zeros((3, soft.cfg.hidden_size), np.float32)
    meta = {"format": S.FORMAT, "format_version": S.FORMAT_VERSION, "config": json.dumps(asdict(soft.cfg))}
    checkpoint.save_safetensors(path, tensors, meta)
    with pytest.raises(checkpoint.CheckpointError, match="tokens"):
        S.load(path)
    (tmp_path / "junk.safetensors").write_bytes(b"not a safetensors file at all")
    with pytest.raises(checkpoint.CheckpointError):
        S.load(tmp_path / "junk.safetensors")
    small = llama.LlamaConfig(hidden_size=32, num_hidden_layers=1, num_key_value_heads=1, head_dim=8)
    with pytest.raises(checkpoint.CheckpointError, match="loaded LLM has"):
        S.load(S.save(_soft(lm), tmp_path / "ok.safetensors"), llm=small)


def test_prepare_inputs_places_soft_tokens_after_the_text(lm):
    inputs = S.prepare_inputs(lm.tokenizer, TEXTS, 4)
    n0 = len(lm.tokenizer.encode(TEXTS[0]))
    assert inputs.input_ids.shape[1] >= n0 + 4
    assert list(inputs.positions[0]) == list(range(n0, n0 + 4))
    assert inputs.attention_mask[0].sum() == n0 + 4 and inputs.input_ids[0, 0] == lm.tokenizer.bos_id
    with pytest.raises(ValueError, match="positions"):
        S.prepare_inputs(lm.tokenizer, TEXTS, 4, max_length=8)


def test_compiled_mode_matches_pynative(lm, tmp_path):
    soft = _soft(lm, 768)
    path = S.save(soft, tmp_path / "soft.safetensors")
    expected = S.embed(soft, lm, TEXTS)
    np.save(tmp_path / "expected.npy", expected)
    script = textwrap.dedent(f"""
        import numpy as np
        from pmg_models import soft_prompt as S
        from pmg_models.generation import LlamaLM
        lm = LlamaLM.from_pretrained({str(lm.path)!r})
        out = S.embed(S.load({str(path)!r}), lm, {TEXTS!r})
        np.testing.assert_allclose(out, np.load({str(tmp_path / 'expected.npy')!r}), atol=1e-4)
    """)
    env = dict(os.environ, PMG_JIT="1")
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
