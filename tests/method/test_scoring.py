"""z = α·log d_p + (1−α)·log d_t, selection, image/text blending, α sweep."""
import math

import numpy as np
import pytest

from tasks.pmg import scoring as S


def test_z_arithmetic_and_default_alpha_matches_original_weight_2():
    assert S.z_score(30.0, 20.0, 0.5) == pytest.approx(0.5 * math.log(30) + 0.5 * math.log(20))
    # The original ranked by log s_item + 2·log s_pref: the same order as z at α = 2/3.
    d_p, d_t = np.array([25.0, 31.0, 28.0]), np.array([30.0, 22.0, 24.0])
    original = np.log(d_t) + 2 * np.log(d_p)
    z = S.z_score(d_p, d_t)
    np.testing.assert_allclose(z * 3, original)
    assert S.select_best(z) == int(np.argmax(original)) == 1


def test_alpha_extremes_pick_by_one_score():
    d_p, d_t = [10.0, 30.0], [30.0, 10.0]
    assert S.select_best(S.z_score(np.array(d_p), np.array(d_t), 1.0)) == 1
    assert S.select_best(S.z_score(np.array(d_p), np.array(d_t), 0.0)) == 0
    with pytest.raises(ValueError):
        S.z_score(1.0, 1.0, 1.5)


def test_non_positive_scores_are_floored_not_crashing():
    assert S.z_score(0.0, 20.0) == pytest.approx(2 / 3 * math.log(S.SCORE_FLOOR) + 1 / 3 * math.log(20))
    assert S.z_score(-5.0, 20.0) == S.z_score(0.0, 20.0)
    assert S.select_best(S.z_score(np.array([-3.0, 0.01]), np.array([20.0, 20.0]))) == 1


def test_select_best_ties_and_nan():
    assert S.select_best([1.0, 2.0, 2.0]) == 1
    assert S.select_best([float("nan"), -5.0]) == 1
    with pytest.raises(ValueError):
        S.select_best([float("nan")])
    with pytest.raises(ValueError):
        S.select_best([])


def test_blend_is_geometric_and_scale_free():
    assert S.blend_similarity(20.0) == 20.0
    assert S.blend_similarity(20.0, 80.0, 0.5) == pytest.approx(40.0)
    # Multiplying every image score by a constant does not change which candidate wins.
    text, img = np.array([22.0, 25.0, 24.0]), np.array([0.70, 0.60, 0.68])
    a = S.select_best(S.z_score(S.blend_similarity(text, img), 20.0))
    b = S.select_best(S.z_score(S.blend_similarity(text, 100 * img), 20.0))
    assert a == b


def test_score_candidates_keeps_every_score():
    scores = S.score_candidates([25.0, 30.0], [28.0, 20.0])
    assert [s.d_p_image for s in scores] == [None, None]
    assert scores[0].z == pytest.approx(S.z_score(25.0, 28.0))
    hist = np.array([[60.0, 80.0], [50.0, 50.0]])  # [K, H] vs history posters -> mean
    scores = S.score_candidates([25.0, 30.0], [28.0, 20.0], d_p_image=hist, d_t_image=[70.0, 40.0])
    assert scores[0].d_p_image == 70.0 and scores[1].d_t_image == 40.0
    assert scores[0].d_p == pytest.approx(math.sqrt(25.0 * 70.0))
    with pytest.raises(ValueError, match="candidates"):
        S.score_candidates([1.0, 2.0], [1.0])


def test_alpha_sweep():
    d_p = np.array([[10.0, 30.0], [20.0, 25.0]])
    d_t = np.array([[30.0, 10.0], [30.0, 10.0]])
    points = S.alpha_sweep(d_p, d_t, alphas=(0.0, 1.0))
    assert points[0].picks == (0, 0) and points[0].mean_d_t == 30.0 and points[0].mean_d_p == 15.0
    assert points[1].picks == (1, 1) and points[1].mean_d_p == 27.5
    default = S.alpha_sweep(d_p, d_t)
    assert len(default) == 11
    # More weight on preference never lowers the picked mean d_p on the same candidates.
    assert all(a.mean_d_p <= b.mean_d_p for a, b in zip(default, default[1:]))


def test_clip_texts_as_original():
    assert S.clip_texts(["movie poster", "Heat"], ["crime", "heist"]) == ("movie poster, Heat", "crime, heist")
