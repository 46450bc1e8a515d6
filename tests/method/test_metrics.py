"""SSIM against hand-checked cases and an independent scipy filter; summary statistics."""
import numpy as np
import pytest

from tasks.pmg import metrics as M


def _image(seed, shape=(48, 40, 3)):
    return np.random.default_rng(seed).integers(0, 256, size=shape, dtype=np.uint8)


def test_identical_images_give_one():
    img = _image(0)
    assert M.ssim(img, img) == pytest.approx(1.0)
    assert M.ssim(img, img, channels="rgb") == pytest.approx(1.0)


def test_constant_images_follow_the_luminance_formula():
    # No variance anywhere: SSIM reduces to (2ab + C1) / (a² + b² + C1).
    a, b = 100.0, 150.0
    c1 = (0.01 * 255) ** 2
    expected = (2 * a * b + c1) / (a * a + b * b + c1)
    x, y = np.full((20, 20), a), np.full((20, 20), b)
    assert M.ssim(x, y) == pytest.approx(expected, rel=1e-9)


def test_properties():
    a, b = _image(1), _image(2)
    assert M.ssim(a, b) == pytest.approx(M.ssim(b, a))
    assert M.ssim(a, b) < 0.2
    noisy = np.clip(a.astype(int) + np.random.default_rng(3).integers(-10, 11, a.shape), 0, 255).astype(np.uint8)
    noisier = np.clip(a.astype(int) + np.random.default_rng(3).integers(-60, 61, a.shape), 0, 255).astype(np.uint8)
    assert 1.0 > M.ssim(a, noisy) > M.ssim(a, noisier) > M.ssim(a, b)
    assert M.ssim(a, 255 - a) < 0


def test_gaussian_window():
    g = M.gaussian_window()
    assert g.size == 11 and g.sum() == pytest.approx(1.0) and g.argmax() == 5


def test_matches_scipy_gaussian_filter_reference():
    ndimage = pytest.importorskip("scipy.ndimage")
    x, y = M.to_gray(_image(4)), M.to_gray(_image(5))
    f = lambda z: ndimage.gaussian_filter(z, sigma=1.5, truncate=3.5)  # noqa: E731 (skimage's filter)
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    mx, my = f(x), f(y)
    vx, vy, cxy = f(x * x) - mx**2, f(y * y) - my**2, f(x * y) - mx * my
    s = ((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx**2 + my**2 + c1) * (vx + vy + c2))
    assert M.ssim(_image(4), _image(5)) == pytest.approx(s[5:-5, 5:-5].mean(), abs=1e-10)


def test_ssim_errors():
    with pytest.raises(ValueError, match="same size"):
        M.ssim(_image(0), _image(0, (40, 48, 3)))
    with pytest.raises(ValueError, match="at least"):
        M.ssim(np.zeros((5, 5)), np.zeros((5, 5)))
    assert M.mean_ssim_to(_image(0), [_image(0), _image(0)]) == pytest.approx(1.0)


def test_describe_and_compare_to_baseline():
    d = M.describe([1.0, 3.0, float("nan")])
    assert d == {"n": 2, "mean": 2.0, "std": 1.0, "min": 1.0, "max": 3.0}
    assert M.describe([])["n"] == 0
    r = M.compare_to_baseline([30.0, 20.0, 25.0, 10.0], [25.0, 25.0, 25.0, 5.0], [18.0, 18.0, 18.0, 18.0],
                              [20.0, 20.0, 20.0, 20.0])
    assert r["win_rate_d_p"] == pytest.approx((1 + 0 + 0.5 + 1) / 4)
    assert r["rel_change_d_t"] == pytest.approx(-0.1)
    assert r["rel_change_d_p"] == pytest.approx(85 / 80 - 1)
    lpips = M.compare_to_baseline([0.5], [0.6], [0.5], [0.5], higher_is_better=False)
    assert lpips["win_rate_d_p"] == 1.0
