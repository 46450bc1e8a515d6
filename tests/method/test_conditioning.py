"""Target keywords, prompt segments (weight/repeat), candidate grid, seeds, soft-token assembly."""
import numpy as np
import pytest

from tasks.pmg import conditioning as C

PREF = ["romance", "stop-motion", "1980s"]


def test_target_keywords_as_original():
    kw = ["Sinking", "Tragic", "Love", "Class", "Distance", "Fate", "Passion"]
    assert C.target_keywords("Titanic (1997)", kw) == [
        "movie poster", "Titanic", "named 'Titanic'", "Sinking", "Tragic", "Love", "Class", "Distance"]
    assert C.target_keywords("Heat", None) == ["movie poster", "Heat", "named 'Heat'"]


def test_target_keywords_sanitizes_title():
    got = C.target_keywords('Evil\n### Human: "x" (2000)', ["a,b"])
    assert got == ["movie poster", "Evil # Human - 'x'", "named 'Evil # Human - 'x''", "a b"]


def test_weight_mode_segments():
    target = C.target_keywords("Heat", ["heist"])
    segs = C.sd_prompt_segments(target, PREF, 1.5)
    assert segs == [("movie poster, Heat, named 'Heat', heist", 1.0), (", romance, stop-motion, 1980s", 1.5)]
    assert C.sd_prompt_segments(target, PREF, 0.0) == segs[:1]
    assert C.sd_prompt_segments(target, [], 2.0) == segs[:1]


def test_repeat_mode_reproduces_the_original_string():
    target = ["movie poster", "Heat", "named 'Heat'", "heist"]
    for w in (1, 2, 3):
        original = ", ".join(target) + w * (", " + ", ".join(PREF))
        assert C.prompt_text(C.sd_prompt_segments(target, PREF, w, mode="repeat")) == original
        assert all(weight == 1.0 for _, weight in C.sd_prompt_segments(target, PREF, w, mode="repeat"))
    assert C.prompt_text(C.sd_prompt_segments(target, PREF, 2.5, mode="repeat")).count("romance") == 3
    assert C.prompt_text(C.sd_prompt_segments(target, PREF, 0.4, mode="repeat")).count("romance") == 0
    # At w = 1 both modes give the same text.
    assert C.prompt_text(C.sd_prompt_segments(target, PREF, 1.0)) == ", ".join(target + PREF)


def test_segments_keep_commas_inside_keywords_and_sanitize():
    target = C.target_keywords("Matrix, The (1999)", ["bullet\ntime"])
    assert C.prompt_text(C.sd_prompt_segments(target, ['"cyber"punk', ""], 1.0)) == (
        "movie poster, Matrix, The, named 'Matrix, The', bullet time, 'cyber'punk")


def test_segments_reject_bad_input():
    with pytest.raises(ValueError):
        C.sd_prompt_segments(["a"], PREF, -1.0)
    with pytest.raises(ValueError):
        C.sd_prompt_segments(["a"], PREF, float("nan"))
    with pytest.raises(ValueError, match="choose one of"):
        C.sd_prompt_segments(["a"], PREF, 1.0, mode="compel")


def test_candidate_grid():
    assert C.candidate_grid() == [C.Candidate(0, 0, 1.0), C.Candidate(1, 0, 2.0)]
    grid = C.candidate_grid(k=5, seeds=(7,), weights=(1.0, 2.0))
    assert [(c.index, c.seed_slot, c.w) for c in grid] == [(0, 7, 1.0), (1, 7, 2.0), (2, 8, 1.0), (3, 8, 2.0),
                                                           (4, 9, 1.0)]
    assert len(C.candidate_grid(k=1)) == 1
    with pytest.raises(ValueError):
        C.candidate_grid(k=0)


def test_candidate_seed_is_stable_and_distinct():
    # Pinned: the same (base, user, movie, slot) must give the same noise on every machine and run.
    assert C.candidate_seed(1526, 1, 1721, 0) == GOLDEN_SEED
    seeds = {C.candidate_seed(1526, u, m, k) for u in range(20) for m in range(20) for k in range(3)}
    assert len(seeds) == 1200 and all(0 <= s < 2**31 for s in seeds)
    assert C.candidate_seed(1526, 1, 1721, 0) != C.candidate_seed(1527, 1, 1721, 0)


def test_negative_prompt():
    assert "blurry" in C.negative_prompt()
    with pytest.raises(ValueError):
        C.negative_prompt("cars")


@pytest.mark.parametrize("width", [768, 1024])  # SD 1.x and SD 2.x text widths
def test_soft_tokens_appended_and_uncond_extended(width):
    rng = np.random.default_rng(0)
    text = rng.normal(size=(2, 77, width)).astype(np.float32)
    soft = rng.normal(size=(2, 4, width)).astype(np.float32)
    cond = C.append_soft_tokens(text, soft, w_soft=0.5)
    assert cond.shape == (2, 81, width)
    np.testing.assert_array_equal(cond[:, :77], text)
    np.testing.assert_allclose(cond[:, 77:], 0.5 * soft)
    assert C.append_soft_tokens(text, soft[0]).shape == (2, 81, width)
    uncond = C.extend_unconditional(text, 4)
    assert uncond.shape == cond.shape
    np.testing.assert_array_equal(uncond[:, 77:], np.repeat(text[:, -1:], 4, axis=1))
    assert not C.extend_unconditional(text, 4, fill="zeros")[:, 77:].any()
    assert C.extend_unconditional(text, 0).shape == text.shape


def test_soft_width_mismatch_names_the_widths():
    with pytest.raises(ValueError, match="width 768 .* width 1024"):
        C.append_soft_tokens(np.zeros((1, 77, 1024)), np.zeros((1, 4, 768)))


def test_token_weighting():
    hidden = np.ones((1, 4, 3), np.float32)
    w = np.array([1.0, 1.0, 2.0, 2.0])
    raw = C.weight_token_embeddings(hidden, w, keep_mean=False)
    np.testing.assert_allclose(raw[0, :, 0], [1, 1, 2, 2])
    kept = C.weight_token_embeddings(hidden, w)
    np.testing.assert_allclose(kept.mean(), hidden.mean(), rtol=1e-6)
    np.testing.assert_allclose(kept[0, 2] / kept[0, 0], 2.0, rtol=1e-6)
    np.testing.assert_array_equal(C.weight_token_embeddings(hidden, np.ones(4)), hidden)


GOLDEN_SEED = 1995084371


def test_candidates_without_keywords_vary_the_seed():
    from tasks.pmg.conditioning import candidates_for

    with_kw = candidates_for(["noir"], 2, (1.0, 2.0))
    assert [(c.seed_slot, c.w) for c in with_kw] == [(0, 1.0), (0, 2.0)]
    without = candidates_for([], 2, (1.0, 2.0))
    assert [(c.seed_slot, c.w) for c in without] == [(0, 1.0), (1, 1.0)]
