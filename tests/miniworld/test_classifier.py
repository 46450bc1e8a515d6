"""The miniworld evaluation classifier: smoke training, strict save/load, compiled-mode step."""
import json

import mindspore as ms
import numpy as np
import pytest

from pmg_models.checkpoint import CheckpointError, save_safetensors
from tasks.miniworld import classifier, posters, world


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    out = tmp_path_factory.mktemp("classifier")
    metrics = classifier.train_classifier(out, seed=0, steps=30, batch=32, smoke=True, n_train=384, n_val=192)
    return out, metrics


def test_smoke_training_loss_falls_and_beats_chance(trained):
    out, metrics = trained
    assert metrics["loss_last"] < 0.8 * metrics["loss_first"]
    acc = metrics["val_accuracy"]
    assert acc["bg"] > 3 / 18 and acc["motif"] > 2 / 6 and acc["accent"] > 2 / 6
    assert json.loads((out / "metrics.json").read_text())["val_accuracy"] == acc
    assert {p.name for p in out.iterdir()} >= {"config.json", "model.safetensors", "metrics.json"}


def test_save_load_round_trip_is_exact_and_strict(trained, tmp_path):
    out, metrics = trained
    net = classifier.load_classifier(out)
    val = posters.sample_dataset(64, seed=2, size=64)          # 64 px posters are BOX-downsampled
    pred = classifier.classify(net, val.images)
    assert set(pred) == set(world.HEADS) and pred["bg"].shape == (64,)
    again = classifier.classify(classifier.load_classifier(out), val.images)
    assert all(np.array_equal(pred[h], again[h]) for h in pred)
    acc = classifier.accuracy(net, val.images, val.labels)
    assert set(acc) == {"bg", "motif", "accent", "band", "all"}

    tensors = {p.name: p.asnumpy() for p in net.get_parameters()}
    assert any("moving_mean" in k for k in tensors)             # BatchNorm statistics are saved too
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_text((out / "config.json").read_text())
    tensors.pop(sorted(tensors)[0])
    save_safetensors(broken / "model.safetensors", tensors)
    with pytest.raises(CheckpointError, match="missing"):
        classifier.load_classifier(broken)


def test_classify_rejects_bad_shapes(trained):
    net = classifier.load_classifier(trained[0])
    with pytest.raises(ValueError, match="multiple of 32"):
        classifier.classify(net, np.zeros((2, 48, 48, 3), np.uint8))


@pytest.mark.parametrize("mode", ["grad", "step"])
def test_compiled_train_step_and_forward(mode):
    """PMG_JIT=1 paths: value_and_grad (and, for "step", the AdamW update too) and the eval forward compile."""
    net = classifier.build(seed=1)
    net.set_train(True)
    step = classifier.make_train_step(net, classifier.make_optimizer(net, 1e-3), mode=mode)
    data = posters.sample_dataset(16, seed=5)
    x = ms.Tensor(classifier.to_input(data.images, 32))
    ys = [ms.Tensor(data.labels[h]) for h in classifier.HEAD_NAMES]
    losses = [float(step(x, *ys).asnumpy()) for _ in range(4)]
    assert losses[-1] < losses[0]
    net.set_train(False)
    logits = ms.jit(classifier._eval_forward)(net, x)
    assert [tuple(t.shape) for t in logits] == [(16, n) for n in world.HEADS.values()]
    with pytest.raises(ValueError, match="choose one of"):
        classifier.make_train_step(net, classifier.make_optimizer(net, 1e-3), mode="graph")
