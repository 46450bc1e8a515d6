"""Native CPU kernels (pmg_models/kernels) and the classic-op forms they replace, against torch.

Both paths run every case: forward values and gradients (input and affine parameters, with a random
upstream gradient), eagerly and compiled, since training and soft-prompt fitting differentiate through them.
On the native path the gradients come from the gradient kernels (`NameGrad`), on the classic path from
MindSpore's autodiff of the classic ops.
"""
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch

import mindspore as ms

from pmg_models import kernels, ops, runtime

rng = np.random.default_rng(0)
PATHS = ["native", "classic"]


@pytest.fixture(params=PATHS)
def path(request, monkeypatch):
    if request.param == "classic":
        monkeypatch.setattr(ops, "_native", lambda *args: None)
        monkeypatch.setattr(ops, "_gradient_kernel", lambda *args: None)
    return request.param


def _grads(cell, x, dout, compiled):
    """(output, d/dx, d/dweight, d/dbias...) of sum(cell(x) * dout)."""
    params = cell.trainable_params()

    def loss(x):
        return (cell(x) * runtime.to_tensor(dout)).sum()

    fn = ms.value_and_grad(loss, 0, params)
    if compiled:
        fn = ms.jit(fn)
    _, (dx, dparams) = fn(runtime.to_tensor(x))
    return [cell(runtime.to_tensor(x)).asnumpy(), dx.asnumpy(), *(g.asnumpy() for g in dparams)]


def _torch_grads(fn, x, dout, params):
    xt = torch.tensor(x, requires_grad=True)
    pt = [torch.tensor(p, requires_grad=True) for p in params]
    out = fn(xt, *pt)
    (out * torch.tensor(dout)).sum().backward()
    return [out.detach().numpy(), xt.grad.numpy(), *(p.grad.numpy() for p in pt)]


def _check(ours, ref, atol):
    names = ["output", "d/dx", "d/dweight", "d/dbias"]
    for name, a, b in zip(names, ours, ref):
        scale = max(1.0, float(np.abs(b).max()))
        np.testing.assert_allclose(a, b, atol=atol * scale, err_msg=name)


def test_native_kernels_are_built_and_used_on_cpu():
    assert kernels.library() is not None, "no native kernels: is a C++ compiler installed?"
    assert ops.GroupNorm(2, 4).kernel is not None and ops.LayerNorm(8).kernel is not None
    assert ops.GEGLU().kernel is not None and ops.Upsample2x().kernel is not None
    assert ops.RMSNorm(8).kernel is not None and ops.SwiGLU().kernel is not None
    assert ops.Rope().kernel is not None
    assert ops.Softmax().grad is not None
    assert kernels.convolutions() and ops.Conv2d(2, 3, 3).native is not None
    assert ops.PlanesToTokens().kernel is not None and ops.TokensToPlanes().kernel is not None


@pytest.mark.parametrize("silu", [False, True])
@pytest.mark.parametrize("compiled", [False, True])
def test_group_norm(path, silu, compiled):
    x = (rng.standard_normal((2, 8, 5, 6)) * 3 + 1).astype(np.float32)
    dout = rng.standard_normal(x.shape).astype(np.float32)
    w, b = rng.standard_normal(8).astype(np.float32), rng.standard_normal(8).astype(np.float32)
    gn = ops.GroupNorm(4, 8, eps=1e-6, silu=silu)
    assert (gn.kernel is not None) == (path == "native")
    gn.weight.set_data(runtime.to_tensor(w))
    gn.bias.set_data(runtime.to_tensor(b))

    def ref(x, w, b):
        y = torch.nn.functional.group_norm(x, 4, w, b, eps=1e-6)
        return torch.nn.functional.silu(y) if silu else y

    _check(_grads(gn, x, dout, compiled), _torch_grads(ref, x, dout, [w, b]), 2e-5)


def test_group_norm_split_over_threads_matches_torch_and_is_batch_independent():
    """Above ~128K values the groups are split over the kernel pool's threads."""
    x = (rng.standard_normal((2, 64, 64, 64)) * 2 - 1).astype(np.float32)
    gn = ops.GroupNorm(32, 64, eps=1e-6, silu=True)
    assert gn.kernel is not None
    full = gn(runtime.to_tensor(x)).asnumpy()
    want = torch.nn.functional.silu(torch.nn.functional.group_norm(torch.tensor(x), 32, eps=1e-6)).numpy()
    np.testing.assert_allclose(full, want, atol=2e-5)
    assert np.array_equal(gn(runtime.to_tensor(x[1:])).asnumpy(), full[1:])


@pytest.mark.parametrize("compiled", [False, True])
def test_layer_norm(path, compiled):
    x = (rng.standard_normal((2, 7, 48)) * 2 - 1).astype(np.float32)
    dout = rng.standard_normal(x.shape).astype(np.float32)
    w, b = rng.standard_normal(48).astype(np.float32), rng.standard_normal(48).astype(np.float32)
    ln = ops.LayerNorm(48, eps=1e-5)
    assert (ln.kernel is not None) == (path == "native")
    ln.weight.set_data(runtime.to_tensor(w))
    ln.bias.set_data(runtime.to_tensor(b))
    ref = lambda x, w, b: torch.nn.functional.layer_norm(x, (48,), w, b, eps=1e-5)  # noqa: E731
    _check(_grads(ln, x, dout, compiled), _torch_grads(ref, x, dout, [w, b]), 2e-5)


@pytest.mark.parametrize("compiled", [False, True])
def test_geglu(path, compiled):
    # both tails of the erf and values near 0, where GELU's slope changes fastest
    x = np.concatenate([rng.standard_normal((3, 5, 64)) * 3, np.linspace(-9, 9, 3 * 5 * 64).reshape(3, 5, 64)],
                       -1).astype(np.float32)
    dout = rng.standard_normal((3, 5, 64)).astype(np.float32)
    act = ops.GEGLU()
    assert (act.kernel is not None) == (path == "native")

    def ref(x):
        h, gate = x.chunk(2, -1)
        return h * torch.nn.functional.gelu(gate)

    _check(_grads(act, x, dout, compiled), _torch_grads(ref, x, dout, []), 2e-5)


@pytest.mark.parametrize("compiled", [False, True])
def test_rms_norm(path, compiled):
    x = (rng.standard_normal((2, 7, 48)) * 2 - 1).astype(np.float32)
    dout = rng.standard_normal(x.shape).astype(np.float32)
    w = rng.standard_normal(48).astype(np.float32)
    norm = ops.RMSNorm(48, eps=1e-5)
    assert (norm.kernel is not None) == (path == "native")
    norm.weight.set_data(runtime.to_tensor(w))
    ref = lambda x, w: x * torch.rsqrt((x * x).mean(-1, keepdim=True) + 1e-5) * w  # noqa: E731
    _check(_grads(norm, x, dout, compiled), _torch_grads(ref, x, dout, [w]), 2e-5)


@pytest.mark.parametrize("compiled", [False, True])
def test_swiglu(path, compiled):
    gate, up = (rng.standard_normal((3, 5, 40)).astype(np.float32) * 3 for _ in range(2))
    dout = rng.standard_normal(gate.shape).astype(np.float32)
    act = ops.SwiGLU()
    assert (act.kernel is not None) == (path == "native")
    gate_t, up_t = runtime.to_tensor(gate), runtime.to_tensor(up)
    upstream = runtime.to_tensor(dout)

    def loss(g, u):
        return (act(g, u) * upstream).sum()

    fn = ms.value_and_grad(loss, (0, 1))
    _, (dg, du) = (ms.jit(fn) if compiled else fn)(gate_t, up_t)
    ours = [act(gate_t, up_t).asnumpy(), dg.asnumpy(), du.asnumpy()]
    g, u = torch.tensor(gate, requires_grad=True), torch.tensor(up, requires_grad=True)
    out = torch.nn.functional.silu(g) * u
    (out * torch.tensor(dout)).sum().backward()
    _check(ours, [out.detach().numpy(), g.grad.numpy(), u.grad.numpy()], 2e-5)


@pytest.mark.parametrize("name", ["QuickGELU", "GELU"])
@pytest.mark.parametrize("compiled", [False, True])
def test_activations(path, name, compiled):
    x = np.concatenate([rng.standard_normal(199) * 3, np.linspace(-9, 9, 200)]).astype(np.float32).reshape(3, -1)
    dout = rng.standard_normal(x.shape).astype(np.float32)
    act = getattr(ops, name)()
    assert (act.kernel is not None) == (path == "native")
    ref = {"QuickGELU": lambda x: x * torch.sigmoid(1.702 * x), "GELU": torch.nn.functional.gelu}[name]
    _check(_grads(act, x, dout, compiled), _torch_grads(ref, x, dout, []), 2e-5)


@pytest.mark.parametrize("compiled", [False, True])
def test_upsample2x(path, compiled):
    x = rng.standard_normal((2, 3, 5, 7)).astype(np.float32)
    dout = rng.standard_normal((2, 3, 10, 14)).astype(np.float32)
    up = ops.Upsample2x()
    assert (up.kernel is not None) == (path == "native")
    ref = lambda x: torch.nn.functional.interpolate(x, scale_factor=2.0, mode="nearest")  # noqa: E731
    _check(_grads(up, x, dout, compiled), _torch_grads(ref, x, dout, []), 1e-6)


@pytest.mark.parametrize("compiled", [False, True])
def test_softmax(path, compiled):
    # rows with a dominant entry (probabilities near 0 and 1) and flat ones
    x = (rng.standard_normal((2, 3, 6, 9)) * np.array([0.1, 1.0, 8.0])[None, :, None, None]).astype(np.float32)
    dout = rng.standard_normal(x.shape).astype(np.float32)
    sm = ops.Softmax()
    assert (sm.grad is not None) == (path == "native")
    _check(_grads(sm, x, dout, compiled), _torch_grads(lambda x: torch.softmax(x, -1), x, dout, []), 1e-6)


# (batch, in, out, size, kernel, stride, padding, bias): the UNet/VAE 3x3 convs, a 5x5 'same' conv (both
# take the shifted-plane im2col), a 3x3 'valid' one, stride-2 downsampling with and without padding, the
# 1x1 shortcut (no im2col), CLIP's patch embedding, and channels x 9 above the kernel's column-chunk budget
# (2 chunks per image, the second starting at an inner row).
CONVS = [(3, 5, 7, 9, 3, 1, 1, True), (2, 3, 4, 7, 5, 1, 2, True), (2, 3, 4, 7, 3, 1, 0, True),
         (2, 4, 6, 8, 3, 2, 1, True), (2, 4, 6, 9, 3, 2, 0, True), (3, 8, 5, 6, 1, 1, 0, True),
         (1, 3, 16, 28, 14, 14, 0, False), (2, 300, 9, 20, 3, 1, 1, True)]


@pytest.mark.parametrize("case", CONVS, ids=lambda c: "b{}c{}o{}h{}k{}s{}p{}{}".format(*c[:7], "" if c[7] else "-nobias"))
@pytest.mark.parametrize("compiled", [False, True])
def test_conv2d(path, case, compiled):
    b, c, o, h, k, s, p, bias = case
    conv = ops.Conv2d(c, o, k, s, p, bias)
    assert (conv.native is not None) == (path == "native")
    w = (rng.standard_normal((o, c, k, k)) / np.sqrt(c * k * k)).astype(np.float32)
    conv.weight.set_data(runtime.to_tensor(w))
    params = [w]
    if bias:
        params.append(rng.standard_normal(o).astype(np.float32))
        conv.bias.set_data(runtime.to_tensor(params[1]))
    x = rng.standard_normal((b, c, h, h)).astype(np.float32)
    out = (h + 2 * p - k) // s + 1
    dout = rng.standard_normal((b, o, out, out)).astype(np.float32)

    def ref(x, w, b=None):
        return torch.nn.functional.conv2d(x, w, b, stride=s, padding=p)

    _check(_grads(conv, x, dout, compiled), _torch_grads(ref, x, dout, params), 1e-5)


@pytest.mark.parametrize("case", [(3, 5, 7, 9, 3, 1, 1), (2, 6, 4, 8, 1, 1, 0), (2, 300, 9, 20, 3, 1, 1),
                                  (1, 64, 64, 32, 3, 1, 1)],
                         ids=["3x3", "1x1", "2chunks", "split-for-threads"])
@pytest.mark.parametrize("compiled", [False, True])
def test_conv2d_shift_and_residual(path, case, compiled):
    """conv(x) + bias + shift[:, :, None, None] + residual, as the UNet's ResNet blocks use it."""
    b, c, o, h, k, s, p = case
    conv = ops.Conv2d(c, o, k, s, p)
    assert (conv.native_residual is not None) == (path == "native")
    w = (rng.standard_normal((o, c, k, k)) / np.sqrt(c * k * k)).astype(np.float32)
    bias, x = rng.standard_normal(o).astype(np.float32), rng.standard_normal((b, c, h, h)).astype(np.float32)
    shift, res, dout = (rng.standard_normal(shape).astype(np.float32) for shape in ((b, o), (b, o, h, h), (b, o, h, h)))
    conv.weight.set_data(runtime.to_tensor(w))
    conv.bias.set_data(runtime.to_tensor(bias))

    def loss(x, shift, res):
        return (conv(x, shift, res) * runtime.to_tensor(dout)).sum()

    fn = ms.value_and_grad(loss, (0, 1, 2), conv.trainable_params())
    args = [runtime.to_tensor(a) for a in (x, shift, res)]
    _, (grads, (dw, db)) = (ms.jit(fn) if compiled else fn)(*args)
    ours = [conv(*args).asnumpy(), *grads, dw, db]
    ts = [torch.tensor(a, requires_grad=True) for a in (x, shift, res, w, bias)]
    out = torch.nn.functional.conv2d(ts[0], ts[3], ts[4], stride=s, padding=p) + ts[1][:, :, None, None] + ts[2]
    (out * torch.tensor(dout)).sum().backward()
    names = ["output", "dx", "dshift", "dresidual", "dw", "dbias"]
    for name, a, want in zip(names, ours, [out.detach().numpy(), *(t.grad.numpy() for t in ts)]):
        np.testing.assert_allclose(np.asarray(a), want, atol=1e-5 * max(1.0, float(np.abs(want).max())), err_msg=name)
    want = out.detach().numpy() - res  # shift without a residual
    np.testing.assert_allclose(conv(args[0], args[1]).asnumpy(), want, atol=1e-5 * max(1.0, float(np.abs(want).max())))


@pytest.mark.parametrize("compiled", [False, True])
def test_conv2d_geometries_side_by_side(compiled):
    """Eager MindSpore keeps one shape function per Custom op name: each conv's geometry must still count."""
    class Both(ms.nn.Cell):
        def __init__(self):
            super().__init__()
            self.same, self.down = ops.Conv2d(4, 4, 3, padding=1), ops.Conv2d(4, 4, 3, stride=2, padding=1)

        def construct(self, x):
            return self.same(x), self.down(x)

    fn = ms.jit(Both()) if compiled else Both()
    outs = fn(runtime.to_tensor(rng.standard_normal((2, 4, 8, 8)).astype(np.float32)))
    assert [tuple(o.shape) for o in outs] == [(2, 4, 8, 8), (2, 4, 4, 4)]


def test_native_conv2d_is_batch_independent_and_repeatable():
    """Images are computed one by one with the same column chunks, whatever else is in the batch."""
    conv = ops.Conv2d(300, 8, 3, 1, 1)
    x = rng.standard_normal((5, 300, 20, 20)).astype(np.float32)
    full = conv(runtime.to_tensor(x)).asnumpy()
    assert np.array_equal(full, conv(runtime.to_tensor(x)).asnumpy())
    assert np.array_equal(full[3:4], conv(runtime.to_tensor(x[3:4])).asnumpy())
    conv = ops.Conv2d(64, 64, 3, 1, 1)   # one chunk's worth of rows, split in two for the threads
    x = rng.standard_normal((3, 64, 32, 32)).astype(np.float32)
    full = conv(runtime.to_tensor(x)).asnumpy()
    assert np.array_equal(full[1:2], conv(runtime.to_tensor(x[1:2])).asnumpy())


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("shape", [(6, 12), (2, 5, 12)])
def test_linear_matches_torch(shape, bias):
    x = rng.standard_normal(shape).astype(np.float32)
    dout = rng.standard_normal(shape[:-1] + (7,)).astype(np.float32)
    w, b = rng.standard_normal((7, 12)).astype(np.float32), rng.standard_normal(7).astype(np.float32)
    lin = ops.Linear(12, 7, bias)
    lin.weight.set_data(runtime.to_tensor(w))
    params = [w]
    if bias:
        lin.bias.set_data(runtime.to_tensor(b))
        params.append(b)
    ref = lambda x, *p: torch.nn.functional.linear(x, *p)  # noqa: E731
    _check(_grads(lin, x, dout, True), _torch_grads(ref, x, dout, params), 1e-5)


def test_failed_build_falls_back_to_classic_ops(tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("PMG_KERNEL_CACHE", str(tmp_path))
    monkeypatch.setenv("CXX", "/bin/false")
    kernels.library.cache_clear()
    try:
        assert kernels.library() is None
        assert ops.GroupNorm(2, 4).kernel is None
        assert "classic ops" in caplog.text
        assert not list(tmp_path.iterdir()), "a failed build must leave nothing behind"
    finally:
        kernels.library.cache_clear()


def test_unwritable_cache_falls_back_to_the_temp_dir(tmp_path, monkeypatch):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    monkeypatch.setenv("PMG_KERNEL_CACHE", str(blocker / "kernels"))
    kernels.library.cache_clear()
    try:
        built = kernels.library()
        assert built is not None and built.startswith(tempfile.gettempdir())
    finally:
        kernels.library.cache_clear()


def test_disabled_by_environment(monkeypatch):
    monkeypatch.setenv("PMG_NATIVE_KERNELS", "0")
    kernels.library.cache_clear()
    try:
        assert ops.LayerNorm(8).kernel is None
    finally:
        kernels.library.cache_clear()


# (rows, in, out, bias): one row (oneDNN's path), the native few-row kernel with weight-row and column
# tails (in % 16 != 0, out % 4 != 0), 32 rows, and 33 (MatMul again).
ROWS = [(1, 40, 7, True), (3, 17, 9, True), (8, 64, 130, False), (32, 100, 5, True), (33, 20, 7, False)]


@pytest.mark.parametrize("case", ROWS, ids=lambda c: "m{}i{}o{}{}".format(*c[:3], "" if c[3] else "-nobias"))
def test_matmul_t_few_rows(case):
    m, i, o, bias = case
    mm = ops.MatMulT()
    assert mm.rows is not None and (1 < m <= mm.FEW_ROWS) == (m not in (1, 33))
    x, w, b = (rng.standard_normal(s).astype(np.float32) for s in ((m, i), (o, i), (o,)))
    args = [runtime.to_tensor(a) for a in ((x, w, b) if bias else (x, w))]
    want = x.astype(np.float64) @ w.T.astype(np.float64) + (b if bias else 0)
    np.testing.assert_allclose(mm(*args).asnumpy(), want, atol=1e-5 * np.abs(want).max())
    np.testing.assert_allclose(ms.jit(mm)(*args).asnumpy(), want, atol=1e-5 * np.abs(want).max())


def test_matmul_t_few_rows_is_batch_independent():
    """A row's product is the same sum in the same order with 2, 5 or 32 rows."""
    mm = ops.MatMulT()
    x, w = rng.standard_normal((32, 300)).astype(np.float32), rng.standard_normal((70, 300)).astype(np.float32)
    full = mm(runtime.to_tensor(x), runtime.to_tensor(w)).asnumpy()
    for lo, hi in [(3, 5), (10, 15), (0, 32)]:
        part = mm(runtime.to_tensor(x[lo:hi]), runtime.to_tensor(w)).asnumpy()
        assert np.array_equal(part, full[lo:hi])


def test_one_row_with_huge_weights_is_a_row_of_the_few_row_kernel():
    """A single row through weights of MatMulT.HUGE elements (an LM head at batch 1) runs on the few-row
    kernel: the same bytes as that row in a batch."""
    mm = ops.MatMulT()
    mm.HUGE = 1 << 20  # a test-sized "head"
    x, w = rng.standard_normal((5, 1024)).astype(np.float32), rng.standard_normal((1030, 1024)).astype(np.float32)
    assert w.size >= mm.HUGE
    batch = mm(runtime.to_tensor(x), runtime.to_tensor(w)).asnumpy()
    for fn in (mm, ms.jit(mm)):
        one = fn(runtime.to_tensor(x[2:3]), runtime.to_tensor(w)).asnumpy()
        assert np.array_equal(one, batch[2:3])
    np.testing.assert_allclose(batch, x @ w.T, atol=1e-3)


@pytest.mark.parametrize("rows", [4, 40])
def test_linear_gradients_few_rows(rows):
    """Training differentiates Linear at few rows too (timestep embeddings): the bprop's matmuls."""
    x = rng.standard_normal((rows, 24)).astype(np.float32)
    dout = rng.standard_normal((rows, 10)).astype(np.float32)
    w, b = rng.standard_normal((10, 24)).astype(np.float32), rng.standard_normal(10).astype(np.float32)
    lin = ops.Linear(24, 10)
    lin.weight.set_data(runtime.to_tensor(w))
    lin.bias.set_data(runtime.to_tensor(b))
    ref = lambda x, *p: torch.nn.functional.linear(x, *p)  # noqa: E731
    for compiled in (False, True):
        _check(_grads(lin, x, dout, compiled), _torch_grads(ref, x, dout, [w, b]), 1e-5)


@pytest.mark.parametrize("rows", [1, 4, 40, 700])
@pytest.mark.parametrize("compiled", [False, True])
def test_linear_with_residual(rows, compiled):
    """y = x wᵀ + b + residual: few rows, the dense kernel (40 rows: one thread; 700: both), one row."""
    x, res, dout = (rng.standard_normal((rows, n)).astype(np.float32) for n in (48, 10, 10))
    w, b = rng.standard_normal((10, 48)).astype(np.float32), rng.standard_normal(10).astype(np.float32)
    lin = ops.Linear(48, 10)
    lin.weight.set_data(runtime.to_tensor(w))
    lin.bias.set_data(runtime.to_tensor(b))

    def loss(x, r):
        return (lin(x, r) * runtime.to_tensor(dout)).sum()

    fn = ms.value_and_grad(loss, (0, 1), lin.trainable_params())
    _, ((dx, dr), (dw, db)) = (ms.jit(fn) if compiled else fn)(runtime.to_tensor(x), runtime.to_tensor(res))
    ours = [lin(runtime.to_tensor(x), runtime.to_tensor(res)).asnumpy(), dx, dr, dw, db]
    ts = [torch.tensor(a, requires_grad=True) for a in (x, res, w, b)]
    out = torch.nn.functional.linear(ts[0], ts[2], ts[3]) + ts[1]
    (out * torch.tensor(dout)).sum().backward()
    for name, a, want in zip(["output", "dx", "dresidual", "dw", "db"], ours,
                             [out.detach().numpy(), *(t.grad.numpy() for t in ts)]):
        np.testing.assert_allclose(np.asarray(a), want, atol=1e-5 * max(1.0, float(np.abs(want).max())), err_msg=name)


def test_dense_rows_are_batch_independent():
    lin = ops.Linear(64, 96)
    x, res = rng.standard_normal((900, 64)).astype(np.float32), rng.standard_normal((900, 96)).astype(np.float32)
    full = lin(runtime.to_tensor(x), runtime.to_tensor(res)).asnumpy()
    for lo, hi in [(0, 900), (100, 433), (850, 900)]:
        part = lin(runtime.to_tensor(x[lo:hi]), runtime.to_tensor(res[lo:hi])).asnumpy()
        assert np.array_equal(part, full[lo:hi])


def _avx512() -> bool:
    # the kernels are built with -march=native: the panel form exists where the CPU has AVX-512
    return "avx512f" in Path("/proc/cpuinfo").read_text()


@pytest.mark.parametrize("o", [1024, 1030], ids=["o1024", "o1030"])
def test_large_bias_free_linear_matches_torch_and_rows_are_batch_independent(o):
    """Weights of MatMulT.LARGE elements or more run natively: the sgemm split by columns (2,000 rows) or by
    rows (3,000 > 2 O), and with AVX-512 the panel kernel below 192 rows (40, 191): values and gradients
    against torch, and within each form a row's bytes do not depend on M."""
    lin = ops.Linear(1024, o, bias=False)
    assert lin.weight.size >= ops.MatMulT.LARGE and lin.matmul_t.many is not None
    w = (rng.standard_normal((o, 1024)) * 0.05).astype(np.float32)
    lin.weight.set_data(runtime.to_tensor(w))
    x = rng.standard_normal((3000, 1024)).astype(np.float32)
    run = lambda lo, hi: lin(runtime.to_tensor(x[lo:hi])).asnumpy()  # noqa: E731
    full, few = run(0, 3000), run(0, 191)
    for y, n in ((full, 3000), (few, 191)):
        np.testing.assert_allclose(y, x[:n] @ w.T, atol=2e-4)
    for lo, hi in [(500, 2500), (2700, 3000)]:
        assert np.array_equal(run(lo, hi), full[lo:hi]), (lo, hi)
    for lo, hi in [(0, 40), (33, 190), (150, 191)] + ([(0, 17), (100, 132)] if _avx512() else []):
        assert np.array_equal(run(lo, hi), few[lo:hi]), (lo, hi)  # 17 and 32 rows: decode steps
    dout = rng.standard_normal((40, o)).astype(np.float32)
    ref = lambda x, w: torch.nn.functional.linear(x, w)  # noqa: E731
    _check(_grads(lin, x[:40], dout, True), _torch_grads(ref, x[:40], dout, [w]), 1e-5)


@pytest.mark.parametrize("m", [33, 50, 128, 191])
def test_panel_linear_matches_torch_at_odd_shapes(m):
    """The panel kernel's edges: rows not a multiple of its 32-row panels, weight rows not a multiple of
    its 12-row tiles, inputs not a multiple of 16 (nor of its 256-column chunks)."""
    lin = ops.Linear(1000, 1050, bias=False)
    assert lin.weight.size >= ops.MatMulT.LARGE
    w = rng.standard_normal((1050, 1000)).astype(np.float32)
    lin.weight.set_data(runtime.to_tensor(w))
    x = rng.standard_normal((m, 1000)).astype(np.float32)
    want = x.astype(np.float64) @ w.T.astype(np.float64)
    for y in (lin(runtime.to_tensor(x)), ms.jit(lin)(runtime.to_tensor(x))):
        np.testing.assert_allclose(y.asnumpy(), want, atol=2e-4 * np.abs(want).max() / 30)


def _cache_case(b=3, g=2, r=4, s=24, d=16):
    q = rng.standard_normal((b, g, r, d)).astype(np.float32)
    k, v = (rng.standard_normal((s, b, g, d)).astype(np.float32) for _ in range(2))
    mask = np.full((b, s), -1e9, np.float32)
    mask[0, :s] = 0  # every slot open
    mask[1, 5:11] = 0  # left padding and free slots after
    mask[2, [2, 3, 9]] = 0
    return q, k, v, mask


def test_cache_attention_matches_the_classic_form():
    q, k, v, mask = _cache_case()
    native, classic = ops.CacheAttention(), ops.CacheAttention()
    classic.kernel = None
    assert native.available
    args = [runtime.to_tensor(a) for a in (q, k, v, mask)]
    want = classic(*args).asnumpy()
    np.testing.assert_allclose(native(*args).asnumpy(), want, atol=1e-5)
    np.testing.assert_allclose(ms.jit(native)(*args).asnumpy(), want, atol=1e-5)


def test_cache_attention_reads_only_open_slots_and_rows_are_independent():
    q, k, v, mask = _cache_case()
    att = ops.CacheAttention()
    out = att(*(runtime.to_tensor(a) for a in (q, k, v, mask))).asnumpy()
    closed = mask[None, :, :, None].transpose(2, 1, 0, 3) < 0  # (S, B, 1, 1)
    k2, v2 = np.where(closed, 1e6, k), np.where(closed, np.nan, v)  # what sits in closed slots never counts
    assert np.array_equal(att(*(runtime.to_tensor(a) for a in (q, k2, v2, mask))).asnumpy(), out)
    one = att(*(runtime.to_tensor(a) for a in (q[1:2], k[:, 1:2], v[:, 1:2], mask[1:2]))).asnumpy()
    assert np.array_equal(one, out[1:2])


def _masked_case(tq=70, tk=70, b=3, h=4, g=2, d=16, pads=(0, 9, 30)):
    """Token-major q (Tq,B,H,D), k/v (Tk,B,G,D) and the prefill's additive mask (B,Tq,Tk): causal, with
    left padding per row (queries are the last Tq positions); 30 pads leave a block of 32 queries
    with two real rows."""
    q = rng.standard_normal((tq, b, h, d)).astype(np.float32) * 2
    k, v = (rng.standard_normal((tk, b, g, d)).astype(np.float32) * 2 for _ in range(2))
    rows = np.arange(tk - tq, tk)[:, None]
    allowed = (np.arange(tk)[None] <= rows)[None] & (np.arange(tk)[None, None] >= np.array(pads)[:, None, None])
    return q, k, v, np.where(allowed, 0.0, -1e9).astype(np.float32), allowed


def _masked_torch(q, k, v, allowed):
    """torch's SDPA on the real rows' view: (B,H,T,D) with each kv head repeated for its query heads."""
    rep = q.shape[2] // k.shape[2]
    qt, kt, vt = (torch.tensor(a).permute(1, 2, 0, 3) for a in (q, k, v))
    kt, vt = kt.repeat_interleave(rep, 1), vt.repeat_interleave(rep, 1)
    out = torch.nn.functional.scaled_dot_product_attention(qt, kt, vt, attn_mask=torch.tensor(allowed)[:, None])
    return out.permute(2, 0, 1, 3).numpy()


@pytest.mark.parametrize("shape", [(70, 70, 16), (1, 70, 16), (5, 5, 16), (40, 40, 64), (9, 9, 24)],
                         ids=["prompt", "last-query", "short", "d64", "d24-classic"])
@pytest.mark.parametrize("native", [True, False], ids=["native", "classic"])
@pytest.mark.parametrize("compiled", [False, True])
def test_masked_attention_matches_torch(shape, native, compiled):
    tq, tk, d = shape
    q, k, v, mask, allowed = _masked_case(tq, tk, d=d, pads=(0, 2, 3) if tk < 30 else (0, 9, 30))
    att = ops.MaskedAttention()
    if not native:
        att.kernel = None
    assert native == (att.kernel is not None)
    out = (ms.jit(att) if compiled else att)(*(runtime.to_tensor(a) for a in (q, k, v, mask))).asnumpy()
    real = allowed.any(-1).T  # (Tq, B): query rows that see at least one key (padding rows are never read)
    np.testing.assert_allclose(out[real], _masked_torch(q, k, v, allowed)[real], atol=2e-5 * 8)
    assert np.isfinite(out).all()


def test_masked_attention_any_open_keys():
    """Masks that are not causal: open keys scattered with holes, first and last ones at every position
    around the 16-key steps of the bounds' scan (0, 15, 16, 17, 47, Tk - 1)."""
    tq, tk, b = 40, 50, 6
    q, k, v, _, _ = _masked_case(tq, tk, b=b)
    allowed = rng.random((b, tq, tk)) < 0.3
    for row, (lo, hi) in enumerate([(0, 16), (15, 17), (16, 48), (17, 50), (47, 50), (49, 50)]):
        allowed[row, :, :lo] = allowed[row, :, hi:] = False
        allowed[row, :, lo] = allowed[row, :, hi - 1] = True
    allowed[1, 3] = False  # a query row with no open key
    mask = np.where(allowed, 0.0, -1e9).astype(np.float32)
    out = ops.MaskedAttention()(*(runtime.to_tensor(a) for a in (q, k, v, mask))).asnumpy()
    real = allowed.any(-1).T
    np.testing.assert_allclose(out[real], _masked_torch(q, k, v, allowed)[real], atol=2e-5 * 8)


def test_masked_attention_skips_closed_keys_and_rows_are_batch_independent():
    q, k, v, mask, allowed = _masked_case()
    att = ops.MaskedAttention()
    out = att(*(runtime.to_tensor(a) for a in (q, k, v, mask))).asnumpy()
    closed = ~allowed.any(1).T[:, :, None, None]  # (Tk, B, 1, 1): keys no query may see (left padding)
    k2, v2 = np.where(closed, 1e6, k), np.where(closed, np.nan, v)
    again = att(*(runtime.to_tensor(a) for a in (q, k2, v2, mask))).asnumpy()
    assert np.array_equal(again, out)
    one = att(*(runtime.to_tensor(a) for a in (q[:, 1:2], k[:, 1:2], v[:, 1:2], mask[1:2]))).asnumpy()
    assert np.array_equal(one, out[:, 1:2])


class _Cache(ms.nn.Cell):
    """Writes slots of a cache Parameter, then reads the whole cache in the same graph."""

    def __init__(self, native):
        super().__init__()
        self.cache = ms.Parameter(ms.Tensor(np.zeros((10, 2, 3, 16), np.float32)), requires_grad=False)
        self.write = ops.CacheWrite()
        if not native:
            self.write.kernel = None

    def construct(self, slots, x):
        return ms.ops.depend(self.cache, self.write(self.cache, slots, x)) * 1.0


@pytest.mark.parametrize("native", [True, False], ids=["native", "classic"])
@pytest.mark.parametrize("compiled", [False, True])
def test_cache_write_updates_the_parameter_in_place_before_later_reads(native, compiled):
    cell = _Cache(native)
    assert native == (cell.write.kernel is not None)
    run = ms.jit(cell) if compiled else cell
    want = np.zeros((10, 2, 3, 16), np.float32)
    for slots in ([0, 1, 2, 3], [7], [4, 9, 5]):
        x = rng.standard_normal((len(slots), 2, 3, 16)).astype(np.float32)
        want[slots] = x
        seen = run(runtime.to_tensor(np.array(slots, np.int32)), runtime.to_tensor(x)).asnumpy()
        assert np.array_equal(seen, want) and np.array_equal(cell.cache.asnumpy(), want)


def test_kernel_threads_survive_fork(tmp_path):
    """The worker pool belongs to one process: a forked child (Dask, multiprocessing) gets its own."""
    script = tmp_path / "fork.py"
    script.write_text(
        "import os, numpy as np\n"
        "from pmg_models import ops, runtime\n"
        "conv = ops.Conv2d(64, 64, 3, padding=1)\n"
        "x = runtime.to_tensor(np.ones((2, 64, 32, 32), np.float32))\n"
        "want = conv(x).asnumpy()\n"
        "pid = os.fork()\n"
        "if pid == 0:\n"
        "    os._exit(0 if np.array_equal(conv(x).asnumpy(), want) else 3)\n"
        "_, status = os.waitpid(pid, 0)\n"
        "raise SystemExit(os.waitstatus_to_exitcode(status))\n")
    import subprocess
    import sys
    done = subprocess.run([sys.executable, str(script)], timeout=120, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]


def test_few_row_linears_with_and_without_bias_in_one_compiled_gradient():
    """MindSpore keeps one bprop per Custom op name: the two arities need two kernel names."""
    class Two(ms.nn.Cell):
        def __init__(self):
            super().__init__()
            self.a, self.b = ops.Linear(6, 5), ops.Linear(5, 3, bias=False)

        def construct(self, x):
            return self.b(self.a(x)).sum()

    net = Two()
    loss, (dx, grads) = ms.jit(ms.value_and_grad(net, 0, net.trainable_params()))(
        runtime.to_tensor(rng.standard_normal((4, 6)).astype(np.float32)))
    assert dx.shape == (4, 6) and [tuple(g.shape) for g in grads] == [(5, 6), (5,), (3, 5)]


# (batch, queries, keys, heads, head dim): UNet self-attention, cross-attention to 77 text tokens, and a
# single-head VAE-style case whose queries span three blocks of the kernel (the last one short).
ATTENTION = [(2, 50, 50, 3, 8), (2, 37, 77, 2, 16), (1, 600, 300, 1, 24)]


def _mha_torch(q, k, v, heads):
    def split(x):
        b, t, c = x.shape
        return x.reshape(b, t, heads, c // heads).transpose(1, 2)
    out = torch.nn.functional.scaled_dot_product_attention(split(q), split(k), split(v))
    return out.transpose(1, 2).reshape(q.shape)


@pytest.mark.parametrize("case", ATTENTION, ids=lambda c: "b{}q{}k{}h{}d{}".format(*c))
@pytest.mark.parametrize("native", [True, False], ids=["native", "classic"])
@pytest.mark.parametrize("compiled", [False, True])
def test_multi_head_attention(case, native, compiled):
    b, tq, tk, heads, d = case
    q, dout = (rng.standard_normal((b, tq, heads * d)).astype(np.float32) * 2 for _ in range(2))
    k, v = (rng.standard_normal((b, tk, heads * d)).astype(np.float32) * 2 for _ in range(2))
    att = ops.MultiHeadAttention(heads)
    if not native:
        att.kernel = None
    assert native == (att.kernel is not None)

    def loss(q, k, v):
        return (att(q, k, v) * runtime.to_tensor(dout)).sum()

    fn = ms.value_and_grad(loss, (0, 1, 2))
    args = [runtime.to_tensor(a) for a in (q, k, v)]
    _, grads = (ms.jit(fn) if compiled else fn)(*args)
    ours = [(ms.jit(att) if compiled else att)(*args).asnumpy(), *(g.asnumpy() for g in grads)]
    qt, kt, vt = (torch.tensor(a, requires_grad=True) for a in (q, k, v))
    out = _mha_torch(qt, kt, vt, heads)
    (out * torch.tensor(dout)).sum().backward()
    for name, a, want in zip(["output", "dq", "dk", "dv"], ours, [out.detach().numpy(), qt.grad, kt.grad, vt.grad]):
        want = np.asarray(want)
        np.testing.assert_allclose(a, want, atol=2e-5 * max(1.0, float(np.abs(want).max())), err_msg=name)


def test_multi_head_attention_rows_are_batch_independent():
    q, k, v = (rng.standard_normal((3, 300, 64)).astype(np.float32) for _ in range(3))
    att = ops.MultiHeadAttention(2)
    out = att(*(runtime.to_tensor(a) for a in (q, k, v))).asnumpy()
    one = att(*(runtime.to_tensor(a[1:2]) for a in (q, k, v))).asnumpy()
    assert np.array_equal(one, out[1:2])
    assert np.array_equal(att(*(runtime.to_tensor(a) for a in (q, k, v))).asnumpy(), out)


def test_classic_attention_slices_equal_the_whole(monkeypatch):
    q, k, v = (runtime.to_tensor(rng.standard_normal((2, 50, 24)).astype(np.float32)) for _ in range(3))
    att = ops.MultiHeadAttention(3)
    att.kernel = None
    whole = att(q, k, v).asnumpy()
    monkeypatch.setattr(ops, "MAX_SCORES", 2 * 3 * 50 * 50 // 7)   # 7+ slices, the last one short
    sliced = ops.MultiHeadAttention(3)
    sliced.kernel = None
    calls = []
    attend = ops._attend
    monkeypatch.setattr(ops, "_attend", lambda *args: calls.append(1) or attend(*args))
    np.testing.assert_allclose(sliced(q, k, v).asnumpy(), whole, rtol=1e-6, atol=1e-6)
    assert len(calls) >= 7
    monkeypatch.setattr(ops, "_attend", attend)
    np.testing.assert_allclose(ms.jit(sliced)(q, k, v).asnumpy(), whole, rtol=1e-6, atol=1e-6)


def test_kernels_built_without_avx512_match_torch(tmp_path, monkeypatch):
    """The 8-lane forms (AVX2 machines): few-row matmul and masked-attention tiles, attention's softmax and
    GroupNorm's SiLU without the AVX-512 exp."""
    monkeypatch.setenv("PMG_KERNEL_CACHE", str(tmp_path))
    monkeypatch.setattr(kernels, "FLAGS", kernels.FLAGS + ("-mno-avx512f",))
    kernels.library.cache_clear()
    try:
        assert kernels.library() is not None and kernels.library().startswith(str(tmp_path))
        b, t, heads, d = 2, 70, 2, 16
        q, k, v = (rng.standard_normal((b, t, heads * d)).astype(np.float32) * 3 for _ in range(3))
        att = ops.MultiHeadAttention(heads)
        got = att(*(runtime.to_tensor(a) for a in (q, k, v))).asnumpy()
        want = _mha_torch(*(torch.tensor(a) for a in (q, k, v)), heads).numpy()
        np.testing.assert_allclose(got, want, atol=2e-5 * np.abs(want).max())
        x, w = rng.standard_normal((5, 37)).astype(np.float32), rng.standard_normal((9, 37)).astype(np.float32)
        np.testing.assert_allclose(ops.MatMulT()(runtime.to_tensor(x), runtime.to_tensor(w)).asnumpy(), x @ w.T,
                                   rtol=1e-5, atol=1e-5)
        # large weights from 17 to 32 rows: LinearMany runs the few-row tiles (no panel kernel without AVX-512)
        x, w = rng.standard_normal((20, 1024)).astype(np.float32), rng.standard_normal((1030, 1024)).astype(np.float32)
        many, few = ops.MatMulT(), ops.MatMulT()
        few.MANY_FROM = 32
        got = many(runtime.to_tensor(x), runtime.to_tensor(w)).asnumpy()
        assert np.array_equal(got, few(runtime.to_tensor(x), runtime.to_tensor(w)).asnumpy())
        np.testing.assert_allclose(got, x @ w.T, atol=1e-3)
        x = rng.standard_normal((2, 8, 5, 7)).astype(np.float32) * 3
        want = torch.nn.functional.silu(torch.nn.functional.group_norm(torch.tensor(x), 4, eps=1e-6)).numpy()
        np.testing.assert_allclose(ops.GroupNorm(4, 8, 1e-6, silu=True)(runtime.to_tensor(x)).asnumpy(), want,
                                   atol=2e-5)   # the scalar SiLU
        q, k, v, mask, allowed = _masked_case(70, 70)  # 2-register tiles, unpinned
        got = ops.MaskedAttention()(*(runtime.to_tensor(a) for a in (q, k, v, mask))).asnumpy()
        real = allowed.any(-1).T
        np.testing.assert_allclose(got[real], _masked_torch(q, k, v, allowed)[real], atol=2e-5 * 8)
    finally:
        kernels.library.cache_clear()


PLANES = [(2, 6, 5, 7, 9), (1, 16, 24, 12, 30), (3, 8, 4, 1, 1)]   # (B, C, H, W, O); 360 tokens: two blocks


@pytest.mark.parametrize("case", PLANES, ids=lambda c: "b{}c{}h{}w{}o{}".format(*c))
@pytest.mark.parametrize("native", [True, False], ids=["native", "classic"])
@pytest.mark.parametrize("compiled", [False, True])
def test_projections_between_planes_and_tokens(case, native, compiled):
    """(B, C, H, W) -> tokens (B, HW, O) -> planes (B, C, H, W) + residual, vs torch, with every gradient."""
    b, c, h, w, o = case
    x = rng.standard_normal((b, c, h, w)).astype(np.float32)
    w_in, w_out = rng.standard_normal((o, c)).astype(np.float32), rng.standard_normal((c, o)).astype(np.float32)
    b_in, b_out = rng.standard_normal(o).astype(np.float32), rng.standard_normal(c).astype(np.float32)
    res, dout = (rng.standard_normal((b, c, h, w)).astype(np.float32) for _ in range(2))
    to_tokens, to_planes = ops.PlanesToTokens(), ops.TokensToPlanes()
    if not native:
        to_tokens.kernel = to_planes.kernel = None
    assert native == (to_tokens.kernel is not None) == (to_planes.kernel is not None)

    def forward(x, wi, bi, wo, bo, r):
        t = to_tokens(x, wi, bi)
        return t, to_planes(t * t, wo, bo, r)   # a nonlinearity between, so dt and dx differ in form

    def loss(*args):
        return (forward(*args)[1] * runtime.to_tensor(dout)).sum()

    fn = ms.value_and_grad(loss, tuple(range(6)))
    args = [runtime.to_tensor(a) for a in (x, w_in, b_in, w_out, b_out, res)]
    _, grads = (ms.jit(fn) if compiled else fn)(*args)
    tokens, planes = (ms.jit(forward) if compiled else forward)(*args)
    ts = [torch.tensor(a, requires_grad=True) for a in (x, w_in, b_in, w_out, b_out, res)]
    t_ref = torch.nn.functional.linear(ts[0].flatten(2).transpose(1, 2), ts[1], ts[2])
    p_ref = torch.nn.functional.linear(t_ref * t_ref, ts[3], ts[4]).transpose(1, 2).reshape(b, c, h, w) + ts[5]
    (p_ref * torch.tensor(dout)).sum().backward()
    names = ["tokens", "planes", "dx", "dw_in", "db_in", "dw_out", "db_out", "dresidual"]
    ours = [tokens.asnumpy(), planes.asnumpy(), *(g.asnumpy() for g in grads)]
    for name, a, want in zip(names, ours, [t_ref.detach().numpy(), p_ref.detach().numpy(),
                                           *(t.grad.numpy() for t in ts)]):
        np.testing.assert_allclose(a, want, atol=2e-5 * max(1.0, float(np.abs(want).max())), err_msg=name)


def test_projections_between_planes_and_tokens_are_batch_independent():
    x, res = (rng.standard_normal((3, 16, 20, 20)).astype(np.float32) for _ in range(2))
    w, bias = rng.standard_normal((16, 16)).astype(np.float32), rng.standard_normal(16).astype(np.float32)
    to_tokens, to_planes = ops.PlanesToTokens(), ops.TokensToPlanes()

    def run(lo, hi):
        t = to_tokens(runtime.to_tensor(x[lo:hi]), runtime.to_tensor(w), runtime.to_tensor(bias))
        return t.asnumpy(), to_planes(t, runtime.to_tensor(w), runtime.to_tensor(bias),
                                      runtime.to_tensor(res[lo:hi])).asnumpy()

    full = run(0, 3)
    for lo, hi in [(1, 2), (2, 3)]:
        assert all(np.array_equal(a, f[lo:hi]) for a, f in zip(run(lo, hi), full))


@pytest.mark.parametrize("compiled", [False, True])
def test_rope_kernel_gives_the_classic_bytes_and_torch_gradients(compiled):
    """One pass, rounded as the classic form (two products, then their sum): the same bytes; the
    gradient (the rotation's transpose) against torch's autograd of HF's formula."""
    from pmg_models import llama

    cfg = llama.LlamaConfig.from_hf(dict(hidden_size=64, intermediate_size=96, num_hidden_layers=1,
                                         num_attention_heads=4, vocab_size=50, max_position_embeddings=64))
    cos_t, sin_t = llama.rope_tables(cfg, 64)
    pos = rng.integers(0, 64, (3, 5))
    cos, sin = cos_t[pos][:, :, None], sin_t[pos][:, :, None]  # (B,T,1,D)
    x = (rng.standard_normal((3, 5, 4, 16)) * 4).astype(np.float32)
    dout = rng.standard_normal(x.shape).astype(np.float32)
    rope = ops.Rope()
    assert rope.kernel is not None
    args = [runtime.to_tensor(a) for a in (x, cos, sin)]
    native = (ms.jit(rope) if compiled else rope)(*args).asnumpy()
    classic = ops.rotate_half(*args).asnumpy()
    assert np.array_equal(native, classic)

    def loss(x, cos, sin):
        return (rope(x, cos, sin) * runtime.to_tensor(dout)).sum()

    fn = ms.grad(loss, 0)
    dx = (ms.jit(fn) if compiled else fn)(*args).asnumpy()
    xt = torch.tensor(x, requires_grad=True)
    ct, st = torch.tensor(cos), torch.tensor(sin)
    rotated = torch.cat([-xt[..., 8:], xt[..., :8]], -1)
    ((xt * ct + rotated * st) * torch.tensor(dout)).sum().backward()
    np.testing.assert_allclose(dx, xt.grad.numpy(), atol=1e-5)


def test_llama_passes_split_over_threads_give_the_bytes_of_one_thread():
    """RMSNorm, RoPE and SwiGLU go over the kernel pool past ~1 MB (a prompt's sizes): each row is still
    computed whole by one thread, so a big call equals its halves (each small enough for one thread)."""
    x = rng.standard_normal((4, 128, 16, 64)).astype(np.float32) * 3  # 2^19 floats: two threads; halves: one
    cos, sin = (rng.standard_normal((4, 128, 1, 64)).astype(np.float32) for _ in range(2))
    gate, up = (rng.standard_normal((512, 1024)).astype(np.float32) for _ in range(2))
    cases = [(ops.RMSNorm(1024, 1e-5), [x.reshape(512, 1024)]), (ops.Rope(), [x, cos, sin]), (ops.SwiGLU(), [gate, up])]
    for cell, args in cases:
        assert cell.kernel is not None
        whole = cell(*(runtime.to_tensor(a) for a in args)).asnumpy()
        half = len(args[0]) // 2
        halves = [cell(*(runtime.to_tensor(a[i:i + half]) for a in args)).asnumpy() for i in (0, half)]
        assert np.array_equal(whole, np.concatenate(halves)), type(cell).__name__
