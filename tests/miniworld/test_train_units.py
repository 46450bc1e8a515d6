"""Pieces of the miniature-world training: codec, schedules, targets, data pairs, CLI wiring."""
import numpy as np
import pytest

from tasks.miniworld import codec, world
from tasks.miniworld.train_clip import caption_corpus, same_caption_targets, write_tokenizer
from tasks.miniworld.train_common import all_captions, falling, lr_schedule
from tasks.miniworld.train_llama import keyword_accuracy, make_pair, top_genres
from tasks.miniworld.train_sd import SDStageConfig, eval_plan, scheduler_config, v_target
from tasks.pmg.history import HistoryItem


def test_codec_is_pixel_unshuffle_and_lossless():
    torch = pytest.importorskip("torch")
    from pmg_models import runtime

    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (2, 32, 32, 3), dtype=np.uint8)
    z = codec.encode_numpy(images)
    x = np.asarray(images, np.float32).transpose(0, 3, 1, 2) / 127.5 - 1.0
    ref = torch.nn.functional.pixel_unshuffle(torch.from_numpy(x), 2).numpy()
    np.testing.assert_array_equal(z, ref)
    cell = codec.PixelUnshuffleCodec()
    np.testing.assert_array_equal(runtime.to_numpy(cell.encode(runtime.to_tensor(x))), ref)
    np.testing.assert_array_equal(runtime.to_numpy(cell.decode(runtime.to_tensor(z))), x)
    cfg = cell.config
    assert 2 ** (len(cfg.block_out_channels) - 1) == 2 and cfg.latent_channels == 12
    assert codec.CodecConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ValueError, match="not a PixelUnshuffleCodec"):
        codec.CodecConfig.from_dict({"_class_name": "AutoencoderKL"})


def test_lr_schedule_warms_up_then_decays_to_floor():
    lr = lr_schedule(100, 1e-3, 10, floor=0.1)
    assert len(lr) == 100 and lr[0] == pytest.approx(1e-4) and lr[9] == pytest.approx(1e-3)
    assert lr[-1] == pytest.approx(1e-4) and all(a >= b for a, b in zip(lr[9:], lr[10:]))
    assert falling([3, 3, 2, 1])["loss_fell"] and not falling([1, 1, 2, 3])["loss_fell"]


def test_caption_space_and_tokenizer_make_every_world_word_one_token(tmp_path):
    pairs = all_captions()
    assert len(pairs) == (18 + 18 * 17) * (len(world.ATTRIBUTES) + 1)
    tok = write_tokenizer(tmp_path)
    ids, counts = tok.encode(caption_corpus(), max_length=32, truncate=False)
    assert max(counts) <= 30 and tok.eos_id != 2
    for word in world.vocabulary():
        if "-" not in word:
            assert len(tok.tokenize(word)) == 1, word


def test_multi_positive_targets_rows_sum_to_one():
    t = same_caption_targets(["a", "b", "a"])
    np.testing.assert_allclose(t.sum(1), 1.0)
    assert t[0, 2] == t[0, 0] == 0.5 and t[1, 1] == 1.0


def test_v_target_matches_diffusers_get_velocity():
    from pmg_models.sd.schedulers import make_scheduler

    alphas = make_scheduler(scheduler_config()).alphas_cumprod
    rng = np.random.default_rng(1)
    x0, eps = rng.standard_normal((2, 12, 4, 4), dtype=np.float32), rng.standard_normal((2, 12, 4, 4), dtype=np.float32)
    t = np.array([0, 999])
    x_t, v = v_target(x0, eps, t, alphas)
    a = alphas[t][:, None, None, None]
    np.testing.assert_allclose(x_t, np.sqrt(a) * x0 + np.sqrt(1 - a) * eps, rtol=1e-6)
    np.testing.assert_allclose(v, np.sqrt(a) * eps - np.sqrt(1 - a) * x0, rtol=1e-6)
    assert alphas[-1] < 1e-4   # sampling starts from (almost) pure noise, as training ends


def test_eval_plan_is_seeded_and_covers_pairs():
    full = eval_plan(SDStageConfig(), 0)
    assert len(full) == 324 and eval_plan(SDStageConfig(), 0) == full
    assert sum(len(b) == 2 for b, _, _ in full) == 306


def test_top_genres_counts_with_first_appearance_ties():
    items = [HistoryItem(1, "A", ("Comedy", "Horror"), 5, None), HistoryItem(2, "B", ("Horror",), 5, None),
             HistoryItem(3, "C", ("Drama", "Comedy"), 5, None), HistoryItem(4, "D", ("Drama",), 5, None)]
    assert top_genres(items) == ["Comedy", "Horror"]


def test_llama_pairs_are_deterministic_pmg_prompts():
    a, b = make_pair(0, 7, 0.5, "vicuna"), make_pair(0, 7, 0.5, "vicuna")
    assert a == b and a.prompt.endswith("The keywords are:") and len(a.keywords) == 8
    assert a.answer == "".join(f" {i + 1}. {k}" for i, k in enumerate(a.keywords))
    assert keyword_accuracy([a.answer], [a])["keyword_accuracy"] == 1.0
    assert keyword_accuracy(["1. war 2. blue"], [a])["keyword_accuracy"] <= 2 / 8


def test_cli_registers_train_miniworld():
    from flows.cli import build_parser

    args = build_parser().parse_args(["train-miniworld", "out", "--seed", "3", "--smoke", "--stages", "clip,llama",
                                      "--sd-steps", "700"])
    assert args.seed == 3 and args.smoke and args.stages == "clip,llama" and args.sd_steps == 700
