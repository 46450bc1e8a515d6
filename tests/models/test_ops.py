"""The op layer against PyTorch's definitions (fp32)."""
import numpy as np
import pytest
import torch

from pmg_models import ops, runtime

rng = np.random.default_rng(0)


def _t(a):
    return runtime.to_tensor(a)


def test_group_norm_matches_torch():
    x = rng.standard_normal((2, 8, 5, 5)).astype(np.float32) * 3 + 1
    gn = ops.GroupNorm(4, 8, eps=1e-6)
    gn.weight.set_data(_t(rng.standard_normal(8).astype(np.float32)))
    gn.bias.set_data(_t(rng.standard_normal(8).astype(np.float32)))
    ref = torch.nn.functional.group_norm(torch.tensor(x), 4, torch.tensor(gn.weight.asnumpy()),
                                         torch.tensor(gn.bias.asnumpy()), eps=1e-6)
    np.testing.assert_allclose(gn(_t(x)).asnumpy(), ref.numpy(), atol=1e-5)


def test_layer_norm_and_rms_norm_match_torch():
    x = rng.standard_normal((2, 3, 16)).astype(np.float32)
    ln = ops.LayerNorm(16, eps=1e-5)
    ref = torch.nn.functional.layer_norm(torch.tensor(x), (16,), eps=1e-5)
    np.testing.assert_allclose(ln(_t(x)).asnumpy(), ref.numpy(), atol=1e-5)
    rms = ops.RMSNorm(16, eps=1e-6)
    expected = x / np.sqrt((x * x).mean(-1, keepdims=True) + 1e-6)
    np.testing.assert_allclose(rms(_t(x)).asnumpy(), expected, atol=1e-5)


@pytest.mark.parametrize("approximate", [False, True])
def test_gelu_variants(approximate):
    # the erf form is a polynomial erfc (|error| <= 1.5e-7): check it across the whole range, both tails
    x = np.concatenate([rng.standard_normal(64), np.linspace(-10, 10, 4001)]).astype(np.float32)
    ref = torch.nn.functional.gelu(torch.tensor(x), approximate="tanh" if approximate else "none").numpy()
    got = ops.gelu(_t(x), approximate).asnumpy()
    np.testing.assert_allclose(got, ref, atol=1e-6)


def test_attention_matches_torch_sdpa_with_mask():
    q, k, v = (rng.standard_normal((2, 3, 5, 8)).astype(np.float32) for _ in range(3))
    causal = np.triu(np.full((5, 5), -1e9, np.float32), 1)
    ref = torch.nn.functional.scaled_dot_product_attention(torch.tensor(q), torch.tensor(k), torch.tensor(v),
                                                           is_causal=True)
    out = ops.attention(_t(q), _t(k), _t(v), _t(causal))
    np.testing.assert_allclose(out.asnumpy(), ref.numpy(), atol=1e-5)


def test_conv2d_is_torch_style():
    conv = ops.Conv2d(3, 4, 3, stride=2, padding=1)
    assert {p.name for p in conv.get_parameters()} == {"weight", "bias"}
    assert conv(_t(np.zeros((1, 3, 8, 8), np.float32))).shape == (1, 4, 4, 4)
