"""LPIPS-alex in MindSpore against the formula written out in torch on the same random weights."""
import numpy as np
import pytest

from pmg_models import checkpoint
from pmg_models import lpips as L

torch = pytest.importorskip("torch")
F = torch.nn.functional


def _weights(seed=0):
    rng = np.random.default_rng(seed)
    w = {}
    for layer in L.LAYERS:
        fan_in = layer.cin * layer.kernel ** 2
        w[f"features.{layer.features_index}.weight"] = (rng.standard_normal(
            (layer.cout, layer.cin, layer.kernel, layer.kernel)) / np.sqrt(fan_in)).astype(np.float32)
        w[f"features.{layer.features_index}.bias"] = (0.05 * rng.standard_normal(layer.cout)).astype(np.float32)
    for i, layer in enumerate(L.LAYERS):
        w[f"lin{i}.model.1.weight"] = np.abs(rng.standard_normal((1, layer.cout, 1, 1))).astype(np.float32) / 10
    return w


def _reference(x, y, w):
    """lpips v0.1 LPIPS(net='alex') forward, eval mode, spatial=False."""
    t = {k: torch.tensor(v) for k, v in w.items()}
    shift = torch.tensor(L.SHIFT).view(1, 3, 1, 1)
    scale = torch.tensor(L.SCALE).view(1, 3, 1, 1)

    def feats(z):
        z = (z - shift) / scale
        out = []
        for layer in L.LAYERS:
            if layer.pool_before:
                z = F.max_pool2d(z, 3, 2)
            i = layer.features_index
            z = F.relu(F.conv2d(z, t[f"features.{i}.weight"], t[f"features.{i}.bias"], layer.stride, layer.padding))
            out.append(z)
        return out

    total = 0
    for i, (a, b) in enumerate(zip(feats(x), feats(y))):
        na = a / (a.pow(2).sum(1, keepdim=True).sqrt() + 1e-10)
        nb = b / (b.pow(2).sum(1, keepdim=True).sqrt() + 1e-10)
        total = total + F.conv2d((na - nb) ** 2, t[f"lin{i}.model.1.weight"]).mean((2, 3))
    return total.view(-1).numpy()


@pytest.mark.parity
def test_lpips_matches_the_reference_and_loads_both_namings(tmp_path):
    w = _weights()
    checkpoint.save_safetensors(tmp_path / "alex.safetensors", w)
    model = L.LPIPS.from_weights(tmp_path / "alex.safetensors")
    rng = np.random.default_rng(1)
    a = rng.integers(0, 256, (2, 64, 64, 3), dtype=np.uint8)
    b = rng.integers(0, 256, (2, 64, 64, 3), dtype=np.uint8)
    ours = model.distance(list(a), list(b))
    ref = _reference(torch.tensor(L._to_input(a)), torch.tensor(L._to_input(b)), w)
    np.testing.assert_allclose(ours, ref, rtol=1e-4, atol=1e-6)
    assert float(model.distance([a[0]], [a[0]])[0]) == pytest.approx(0.0, abs=1e-7)
    # lpips' own state-dict names (net.sliceN.<index>) in a directory of files load the same.
    d = tmp_path / "lpips_dir"
    d.mkdir()
    renamed = {(f"net.slice{[l.features_index for l in L.LAYERS].index(int(k.split('.')[1])) + 1}."
                f"{k.split('.', 1)[1]}" if k.startswith("features.") else k): v for k, v in w.items()}
    checkpoint.save_safetensors(d / "net.safetensors", {k: v for k, v in renamed.items() if k.startswith("net.")})
    checkpoint.save_safetensors(d / "lin.safetensors", {k: v for k, v in renamed.items() if k.startswith("lin")})
    np.testing.assert_allclose(L.LPIPS.from_weights(d).distance(list(a), list(b)), ours, rtol=1e-6)


def test_lpips_refuses_incomplete_or_pickled_weights(tmp_path):
    w = _weights()
    del w["lin4.model.1.weight"]
    checkpoint.save_safetensors(tmp_path / "partial.safetensors", w)
    with pytest.raises(checkpoint.CheckpointError, match="lins.4.weight"):
        L.LPIPS.from_weights(tmp_path / "partial.safetensors")
    (tmp_path / "alex.pth").write_bytes(b"pickle")
    with pytest.raises(checkpoint.CheckpointError, match="safetensors"):
        L.LPIPS.from_weights(tmp_path / "alex.pth")
