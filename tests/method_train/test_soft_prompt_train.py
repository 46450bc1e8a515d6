"""Soft-prompt training: noise math, batch order, AdamW, loss decrease, exact resume, determinism."""
import csv
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from pmg_models import soft_prompt as S
from pmg_models import soft_prompt_train as T
from tests.method_train.conftest import GENRES, poster

SIZE = 16  # 8x8 latents with the tiny VAE


@pytest.fixture(scope="module")
def data(tiny_models):
    _, pipe = tiny_models
    examples = [T.Example(f"{i}:{100 + i}", f"Someone watched and liked {g} movies, number {i}.",
                          [(f"movie poster, {g}", 1.0)], poster(i, SIZE)) for i, g in enumerate(GENRES)]
    return T.prepare(pipe, examples, SIZE)


def _soft(tiny_models, seed=0):
    lm, pipe = tiny_models
    return S.SoftPrompt(S.SoftPromptConfig.for_models(lm.config, pipe.text_width, lm.fingerprint, pipe.fingerprint),
                        seed=seed)


def _params(soft):
    return [p.asnumpy().copy() for p in soft.get_parameters()]


def test_prepare_shapes(data, tiny_models):
    _, pipe = tiny_models
    assert data.latents.shape == (8, 4, 8, 8) and data.states(np.arange(8)).shape == (8, 77, pipe.text_width)
    assert np.isfinite(data.latents).all() and data.keys[0] == "0:100"


@pytest.mark.parametrize("kind", ["epsilon", "v_prediction"])
def test_add_noise_matches_the_ddpm_formulas(kind):
    rng = np.random.default_rng(0)
    x0, eps = rng.standard_normal((2, 4, 3, 3), dtype=np.float32), rng.standard_normal((2, 4, 3, 3), dtype=np.float32)
    ac = np.linspace(0.99, 0.01, 1000, dtype=np.float32)
    noisy, target = T.add_noise(x0, eps, np.array([0, 999]), ac, kind)
    a = ac[[0, 999]][:, None, None, None]
    np.testing.assert_allclose(noisy, np.sqrt(a) * x0 + np.sqrt(1 - a) * eps, rtol=1e-6)
    want = eps if kind == "epsilon" else np.sqrt(a) * eps - np.sqrt(1 - a) * x0
    np.testing.assert_allclose(target, want, rtol=1e-6, atol=1e-7)
    with pytest.raises(ValueError, match="prediction_type"):
        T.add_noise(x0, eps, np.array([0, 1]), ac, "sample")


def test_batch_order_is_a_permutation_per_epoch_and_a_pure_function_of_the_step():
    cfg = T.TrainConfig(batch=3, grad_accum=2, seed=5)
    seen = np.concatenate([T.batch_indices(s, m, 6, cfg) for s in range(2) for m in range(2)])  # 12 = 2 epochs
    assert sorted(seen[:6]) == list(range(6)) and sorted(seen[6:]) == list(range(6))
    np.testing.assert_array_equal(T.batch_indices(1, 1, 6, cfg), seen[9:])


@pytest.mark.parity
def test_adamw_matches_torch():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(1)
    shapes = [(3, 4), (4,)]
    params = [rng.standard_normal(s).astype(np.float32) for s in shapes]
    cfg = T.TrainConfig(lr=0.01, weight_decay=0.1)
    ours = T.AdamW(["mapping.weight", "mapping.bias"], shapes, cfg)
    tw = torch.nn.Parameter(torch.tensor(params[0]))
    tb = torch.nn.Parameter(torch.tensor(params[1]))
    opt = torch.optim.AdamW([{"params": [tw], "weight_decay": 0.1}, {"params": [tb], "weight_decay": 0.0}],
                            lr=0.01, betas=(0.9, 0.999), eps=1e-8)
    for _ in range(3):
        grads = [rng.standard_normal(s).astype(np.float32) for s in shapes]
        params = ours.step(params, grads, 0.01)
        tw.grad, tb.grad = torch.tensor(grads[0]), torch.tensor(grads[1])
        opt.step()
    np.testing.assert_allclose(params[0], tw.detach().numpy(), atol=1e-6)
    np.testing.assert_allclose(params[1], tb.detach().numpy(), atol=1e-6)


def test_training_lowers_the_fixed_set_loss_and_only_the_soft_prompt_changes(tiny_models, data, tmp_path):
    lm, pipe = tiny_models
    unet_before = pipe.unet.conv_in.weight.asnumpy().copy()
    llm_before = lm.net.model.layers[0].self_attn.q_proj.weight.asnumpy().copy()
    soft = _soft(tiny_models)
    # 16 steps: the fixed-set loss is noisy step to step (4 of 8 examples per batch), not over 4 epochs.
    cfg = T.TrainConfig(steps=16, lr=0.05, batch=4, eval_every=8, checkpoint_every=8, eval_timesteps=2)
    result = T.train(soft, lm, pipe, data, cfg, tmp_path)
    evals = [r["eval_loss"] for r in result.curve if r["eval_loss"] is not None]
    assert len(evals) == 3 and evals[-1] < 0.9 * evals[0], evals
    np.testing.assert_array_equal(pipe.unet.conv_in.weight.asnumpy(), unet_before)
    np.testing.assert_array_equal(lm.net.model.layers[0].self_attn.q_proj.weight.asnumpy(), llm_before)
    # Outputs: final soft prompt (loadable for these models), step checkpoints, loss CSV and PNG.
    loaded = S.load(result.final_path, llm_fingerprint=lm.fingerprint, sd_fingerprint=pipe.fingerprint)
    for a, b in zip(loaded.get_parameters(), soft.get_parameters()):
        np.testing.assert_array_equal(a.asnumpy(), b.asnumpy())
    assert [p.name for p in T.checkpoints(tmp_path)] == ["step-0000008", "step-0000016"]
    rows = list(csv.DictReader(open(tmp_path / "loss.csv")))
    assert [int(r["step"]) for r in rows] == list(range(17)) and rows[0]["eval_loss"] and not rows[0]["train_loss"]
    assert (tmp_path / "loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(ValueError, match="--resume"):
        T.train(_soft(tiny_models), lm, pipe, data, cfg, tmp_path)


def test_resume_continues_exactly_and_runs_are_deterministic(tiny_models, data, tmp_path):
    lm, pipe = tiny_models
    cfg = dict(lr=0.02, batch=1, grad_accum=2, eval_every=2, eval_examples=2, eval_timesteps=1, checkpoint_every=2)
    full_soft = _soft(tiny_models)
    full = T.train(full_soft, lm, pipe, data, T.TrainConfig(steps=4, **cfg), tmp_path / "full")
    T.train(_soft(tiny_models), lm, pipe, data, T.TrainConfig(steps=2, **cfg), tmp_path / "split")
    resumed_soft = _soft(tiny_models, seed=99)  # its own init is overwritten by the checkpoint
    resumed = T.train(resumed_soft, lm, pipe, data, T.TrainConfig(steps=4, **cfg), tmp_path / "split", resume=True)
    assert resumed.resumed_from == 2
    # Bit-identical: steps 1-2 come from a fresh run (determinism), steps 3-4 from the resumed one.
    assert resumed.curve == full.curve
    for a, b in zip(_params(resumed_soft), _params(full_soft)):
        np.testing.assert_array_equal(a, b)
    with pytest.raises(ValueError, match="lr"):
        T.train(_soft(tiny_models), lm, pipe, data, T.TrainConfig(steps=6, **{**cfg, "lr": 0.1}),
                tmp_path / "split", resume=True)


def test_prepare_encodes_each_distinct_prompt_once(tiny_models):
    _, pipe = tiny_models
    prompts = ["movie poster, Heat", "movie poster, Heat", "movie poster, Up"]
    data = T.prepare(pipe, [T.Example(str(i), "text", p, poster(i, SIZE)) for i, p in enumerate(prompts)], SIZE)
    assert data.text_states.shape[0] == 2 and list(data.prompt_index) == [0, 0, 1]
    alone = T.prepare(pipe, [T.Example("2", "text", prompts[2], poster(2, SIZE))], SIZE)
    np.testing.assert_array_equal(data.states(np.array([2]))[0], alone.text_states[0])


@pytest.mark.slow  # two graph compilations (~30-70 s on a loaded 2-core box)
def test_compiled_training_matches_pynative(tiny_models, tiny_dirs, data, tmp_path):
    """PMG_JIT=1 (compiled grad and loss graphs, in-place parameter updates) gives the PyNative curve."""
    lm, pipe = tiny_models
    cfg = dict(steps=2, lr=0.05, batch=2, eval_every=2, eval_examples=2, eval_timesteps=1)
    eager = T.train(_soft(tiny_models), lm, pipe, data, T.TrainConfig(**cfg), tmp_path / "eager")
    script = textwrap.dedent(f"""
        import json, sys
        sys.path.insert(0, {str(Path(__file__).parents[2])!r})
        from pathlib import Path
        from pmg_models import soft_prompt as S, soft_prompt_train as T
        from pmg_models.generation import LlamaLM
        from pmg_models.sd.pipeline import StableDiffusion
        from tests.method_train.conftest import GENRES, poster
        lm = LlamaLM.from_pretrained({str(tiny_dirs["llm"])!r})
        pipe = StableDiffusion.from_pretrained({str(tiny_dirs["sd"])!r})
        ex = [T.Example(f"{{i}}:{{100 + i}}", f"Someone watched and liked {{g}} movies, number {{i}}.",
                        [(f"movie poster, {{g}}", 1.0)], poster(i, {SIZE})) for i, g in enumerate(GENRES)]
        soft = S.SoftPrompt(S.SoftPromptConfig.for_models(lm.config, pipe.text_width, lm.fingerprint,
                                                          pipe.fingerprint), seed=0)
        r = T.train(soft, lm, pipe, T.prepare(pipe, ex, {SIZE}), T.TrainConfig(**{cfg!r}), Path({str(tmp_path / "jit")!r}))
        print(json.dumps(r.curve))
    """)
    done = subprocess.run([sys.executable, "-c", script], env=dict(os.environ, PMG_JIT="1"), capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    compiled = json.loads(done.stdout.strip().splitlines()[-1])
    for a, b in zip(compiled, eager.curve):
        for k in ("train_loss", "eval_loss"):
            assert (a[k] is None) == (b[k] is None) and (a[k] is None or abs(a[k] - b[k]) < 1e-5), (k, a, b)


def test_a_pooled_text_unet_trains_with_each_example_pooled_prompt(tiny_models, tmp_path):
    """UNets with class_embed_type="projection" see the pooled target prompt in training too."""
    from pmg_models.sd import init_tiny
    from pmg_models.sd.pipeline import StableDiffusion

    lm, _ = tiny_models
    pipe = StableDiffusion.from_pretrained(init_tiny(tmp_path / "sd", seed=0, pooled_text=True))
    examples = [T.Example(f"{i}:{100 + i}", f"Someone liked {g} movies.", [(f"movie poster, {g}", 1.0)],
                          poster(i, SIZE)) for i, g in enumerate(GENRES[:4])]
    data = T.prepare(pipe, examples, SIZE)
    _, _, pooled, _ = pipe.encode_prompt([e.prompt for e in examples], return_pooled=True)
    np.testing.assert_array_equal(data.pooled(np.arange(4)), pooled)
    soft = S.SoftPrompt(S.SoftPromptConfig.for_models(lm.config, pipe.text_width, lm.fingerprint, pipe.fingerprint),
                        seed=0)
    trainer = T.Trainer(soft, lm, pipe, data, T.TrainConfig(steps=2, batch=2, eval_examples=2, eval_timesteps=1))
    before = trainer.eval_loss()
    data.pooled_text = data.pooled_text[::-1].copy()   # other pooled vectors, other loss: they are used
    assert trainer.eval_loss() != before
    result = T.train(soft, lm, pipe, data, T.TrainConfig(steps=2, batch=2, eval_every=2, eval_examples=2,
                                                         eval_timesteps=1, checkpoint_every=2), tmp_path / "out")
    assert result.steps == 2
