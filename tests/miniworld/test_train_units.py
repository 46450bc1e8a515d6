"""Pieces of the miniature-world training: schedules, targets, data pairs, CLI wiring."""
import dataclasses

import numpy as np
import pytest

from tasks.miniworld import world
from tasks.miniworld.train_clip import caption_corpus, same_caption_targets, write_tokenizer
from tasks.miniworld.train_common import all_captions, falling, lr_schedule
from tasks.miniworld.train_llama import keyword_accuracy, length_buckets, make_item_pair, make_pair, top_genres
from tasks.miniworld.train_sd import SDStageConfig, accuracies, eval_plan, scheduler_config, v_target
from tasks.pmg.history import HistoryItem


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
    assert len(full) == 324 + 72 + 36 and eval_plan(SDStageConfig(), 0) == full
    assert sum(len(b) == 2 for b, _, _ in full) == 306
    triples = [b for b, _, _ in full if len(b) == 3 and b[0] != b[1]]
    assert len(triples) == 72 and all(len(set(b)) == 3 for b in triples)
    repeats = [b for b, _, _ in full if len(b) == 3 and b[0] == b[1]]
    assert len(repeats) == 36 and all(b[2] != b[0] for b in repeats)
    # the repeats have their own RNG: the plan of the other captions is the one before they existed
    assert eval_plan(SDStageConfig(eval_repeats=0), 0) == full[:324 + 72]


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


def test_item_pairs_use_the_pipeline_item_prompt_and_answer_the_palette_block():
    from tasks.pmg.prompts import build_item_prompt

    pairs = [make_item_pair(0, i, "vicuna") for i in range(200)]
    assert pairs[3] == make_item_pair(0, 3, "vicuna")
    for p in pairs:
        assert p.prompt.endswith("The keywords are:") and "Describe a poster for this movie in 4 keywords" in p.prompt
        assert len(p.keywords) == 4 and p.keywords[1] == world.STYLES[world.genre_of(p.keywords[0])].background
    # genres are written as MovieLens lists them; the answer follows the poster's palette genre (fallbacks too)
    assert any(p.keywords[0] == world.FALLBACK_GENRE.lower() and "Drama" not in p.prompt for p in pairs)
    # the catalogue's long lists too (a Llama trained on 1–3 genres answered "comedy" for Animation|Children|Comedy|IMAX)
    from tasks.miniworld.train_llama import item_genres

    rng = np.random.default_rng(0)
    lists = [item_genres(rng) for _ in range(2000)]
    assert {len(g) for g in lists} >= {1, 2, 3, 4, 5, 6}
    long_firsts = {world.known_genres(g)[0] for g in lists if len(g) >= 4}
    assert len(long_firsts) >= 10
    assert sum(g == sorted(g) for g in lists if len(g) > 2) > sum(g != sorted(g) for g in lists if len(g) > 2) > 0
    assert build_item_prompt("X", ["Horror"], "", 4, "vicuna").count("4 keywords") == 1


def test_length_buckets_partition_rows_shortest_first():
    lengths = [50, 10, 30, 20, 40, 60, 15]
    buckets = length_buckets(lengths, 3)
    assert sorted(i for b in buckets for i in b) == list(range(7))
    assert max(lengths[i] for i in buckets[0]) <= min(lengths[i] for i in buckets[-1])
    assert len(length_buckets([5], 3)) == 1


def test_cli_registers_train_miniworld():
    from flows.cli import build_parser

    args = build_parser().parse_args(["train-miniworld", "out", "--seed", "3", "--smoke", "--stages", "clip,llama",
                                      "--sd-steps", "700"])
    assert args.seed == 3 and args.smoke and args.stages == "clip,llama" and args.sd_steps == 700


@pytest.mark.parity
def test_adamw_with_bias_correction_matches_torch():
    import mindspore as ms
    import torch

    from tasks.miniworld.train_common import adamw, make_step

    rng = np.random.default_rng(0)
    w0, x, y = (rng.standard_normal(s).astype(np.float32) for s in ((4, 3), (8, 3), (8, 4)))
    lrs = lr_schedule(12, 1e-2, 3)
    w = ms.Parameter(ms.Tensor(w0), name="w")
    step = make_step(lambda a, b: ((ms.ops.matmul(a, w.T) - b) ** 2).mean(), adamw([w], lrs, 0.0), clip=1e9)
    tw = torch.nn.Parameter(torch.tensor(w0))
    opt = torch.optim.AdamW([tw], lr=lrs[0], weight_decay=0.0, eps=1e-8)
    for lr in lrs:
        step(ms.Tensor(x), ms.Tensor(y))
        for group in opt.param_groups:
            group["lr"] = lr
        opt.zero_grad()
        ((torch.tensor(x) @ tw.T - torch.tensor(y)) ** 2).mean().backward()
        opt.step()
    # equal up to float32 rounding and ε placement (the decoupled decay differs early: see bias_corrected)
    np.testing.assert_allclose(w.asnumpy(), tw.detach().numpy(), atol=1e-5)


def test_sd_init_arrays_survive_training_steps():
    """The untrained UNet's arrays (the "random weights" baseline) must not be updated by training in place."""
    from pmg_models import runtime
    from tasks.miniworld.train_common import adamw, make_step
    from tasks.miniworld.train_sd import init_unet, unet_config

    cfg = dataclasses.replace(SDStageConfig.smoke(), pooled_text=True)   # the pooled-text option trains too
    unet, arrays = init_unet(unet_config(cfg, 32), seed=1)
    assert unet.class_conditioned
    before = {k: v.copy() for k, v in arrays.items()}
    unet.set_train(True)
    step = make_step(lambda x, t, c, p, v: ((unet(x, t, c, p) - v) ** 2).mean(),
                     adamw(unet.trainable_params(), lr_schedule(2, 1e-2, 1), 0.0))
    rng = np.random.default_rng(0)
    x, c = rng.standard_normal((2, 12, 16, 16), np.float32), rng.standard_normal((2, 77, 32), np.float32)
    pooled = rng.standard_normal((2, 32), np.float32)
    for _ in range(2):
        step(runtime.to_tensor(x), runtime.to_tensor(np.array([10.0, 500.0], np.float32)), runtime.to_tensor(c),
             runtime.to_tensor(pooled), runtime.to_tensor(x))
    moved = [p.name for p in unet.trainable_params() if not np.array_equal(p.asnumpy(), before[p.name])]
    assert moved, "the training steps changed nothing"
    assert all(np.array_equal(arrays[k], before[k]) for k in arrays)


def test_sd_accuracies_count_either_motif_of_a_two_motif_poster():
    """Pairs are scored against their one motif (the gate); a triple's read may be either later block's."""
    band = world.ATTRIBUTES[0]
    plan = [(("Comedy", "Horror"), band, 0), (("Comedy", "Horror", "War"), band, 1),
            (("Comedy", "Horror", "War"), band, 2), (("Drama", "Drama", "Western"), None, 3)]
    m, a = world.MOTIFS.index, world.ACCENT_NAMES.index
    pred = {"bg": np.array([world.GENRES.index(g) for g in ("Comedy", "Comedy", "Horror", "Drama")]),
            # pair: War's stripes (wrong); triples: War's stripes, then Horror's triangles; repeat: Western's
            "motif": np.array([m("stripes"), m("stripes"), m("triangles"), m("triangles")]),
            "accent": np.array([a("black"), a("black"), a("blue"), a("orange")]),
            "band": np.array([band.index, band.index, 0, len(world.ATTRIBUTES)])}
    acc = accuracies(pred, plan)
    assert acc["pair_motif"] == 0.0 and acc["preference_motif_accuracy"] == 0.0
    assert acc["pair_bg"] == 1.0 and acc["target_bg_accuracy"] == 1.0 and acc["pair_accent"] == 1.0
    assert acc["triple_motif"] == 1.0 and acc["triple_bg"] == 0.5 and acc["triple_accent"] == 0.5
    assert acc["repeat_motif"] == 1.0 and acc["repeat_accent"] == 1.0 and acc["repeat_band"] == 1.0
    assert world.accent_set(("Comedy", "Horror", "War")) == {a("black")}
