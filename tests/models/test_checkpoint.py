"""Strict safetensors loading: named errors, bf16 widening, shards, no pickles, fingerprints."""
import json

import numpy as np
import pytest
from mindspore import nn

from pmg_models import checkpoint
from pmg_models.checkpoint import CheckpointError
from pmg_models.ops import Linear


class Tiny(nn.Cell):
    def __init__(self):
        super().__init__()
        self.proj = Linear(3, 2)


def _weights():
    rng = np.random.default_rng(0)
    return {"proj.weight": rng.standard_normal((2, 3)).astype(np.float32), "proj.bias": np.ones(2, np.float32)}


def test_round_trip_and_values(tmp_path):
    checkpoint.save_safetensors(tmp_path / "model.safetensors", _weights())
    net = Tiny()
    checkpoint.load_into(net, checkpoint.weight_files(tmp_path))
    np.testing.assert_array_equal(net.proj.weight.asnumpy(), _weights()["proj.weight"])


@pytest.mark.parametrize("change, message", [
    (lambda w: w.pop("proj.bias"), "missing tensor.*proj.bias"),
    (lambda w: w.update({"extra.weight": np.zeros(1, np.float32)}), "unexpected tensor.*extra.weight"),
    (lambda w: w.update({"proj.weight": np.zeros((3, 3), np.float32)}), "proj.weight.*shape \\(3, 3\\)"),
])
def test_strict_loading_names_the_tensor(tmp_path, change, message):
    weights = _weights()
    change(weights)
    checkpoint.save_safetensors(tmp_path / "model.safetensors", weights)
    with pytest.raises(CheckpointError, match=message):
        checkpoint.load_into(Tiny(), checkpoint.weight_files(tmp_path))


def test_bf16_is_widened_exactly(tmp_path):
    values = np.array([1.5, -2.25, 3.0e-3], np.float32)
    bf16_bits = (values.view(np.uint32) >> 16).astype(np.uint16)
    header = {"x": {"dtype": "BF16", "shape": [3], "data_offsets": [0, 6]}}
    blob = json.dumps(header).encode()
    (tmp_path / "m.safetensors").write_bytes(len(blob).to_bytes(8, "little") + blob + bf16_bits.tobytes())
    (name, arr), = checkpoint.iter_safetensors(tmp_path / "m.safetensors")
    expected = (bf16_bits.astype(np.uint32) << 16).view(np.float32)
    assert name == "x" and arr.dtype == np.float32 and np.array_equal(arr, expected)


def test_sharded_index_and_missing_shard(tmp_path):
    w = _weights()
    checkpoint.save_safetensors(tmp_path / "model-00001-of-00002.safetensors", {"proj.weight": w["proj.weight"]})
    checkpoint.save_safetensors(tmp_path / "model-00002-of-00002.safetensors", {"proj.bias": w["proj.bias"]})
    index = {"weight_map": {"proj.weight": "model-00001-of-00002.safetensors",
                            "proj.bias": "model-00002-of-00002.safetensors"}}
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps(index))
    net = Tiny()
    checkpoint.load_into(net, checkpoint.weight_files(tmp_path))
    np.testing.assert_array_equal(net.proj.bias.asnumpy(), w["proj.bias"])
    (tmp_path / "model-00002-of-00002.safetensors").unlink()
    with pytest.raises(CheckpointError, match="model-00002-of-00002"):
        checkpoint.weight_files(tmp_path)


def test_pickles_are_refused_with_a_conversion_hint(tmp_path):
    (tmp_path / "pytorch_model.bin").write_bytes(b"\x80\x04not really")
    with pytest.raises(CheckpointError, match="save_pretrained"):
        checkpoint.weight_files(tmp_path)


def test_truncated_file_is_an_error(tmp_path):
    checkpoint.save_safetensors(tmp_path / "model.safetensors", _weights())
    data = (tmp_path / "model.safetensors").read_bytes()
    (tmp_path / "model.safetensors").write_bytes(data[:-8])
    with pytest.raises(CheckpointError, match="truncated"):
        checkpoint.load_into(Tiny(), checkpoint.weight_files(tmp_path))


def test_fingerprint_tracks_config_and_weights(tmp_path):
    (tmp_path / "config.json").write_text('{"hidden_size": 3}')
    checkpoint.save_safetensors(tmp_path / "model.safetensors", _weights())
    first = checkpoint.fingerprint(tmp_path)
    assert first == checkpoint.fingerprint(tmp_path)
    w = _weights()
    w["proj.bias"] = w["proj.bias"] * 2
    checkpoint.save_safetensors(tmp_path / "model.safetensors", w)
    second = checkpoint.fingerprint(tmp_path)
    (tmp_path / "config.json").write_text('{"hidden_size": 4}')
    assert len({first, second, checkpoint.fingerprint(tmp_path)}) == 3


def test_scalar_tensors_keep_their_shape(tmp_path):
    checkpoint.save_safetensors(tmp_path / "m.safetensors", {"logit_scale": np.array(2.5, np.float32)})
    (name, arr), = checkpoint.iter_safetensors(tmp_path / "m.safetensors")
    assert arr.shape == () and float(arr) == 2.5
