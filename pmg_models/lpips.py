"""LPIPS (Zhang et al., CVPR 2018, "The Unreasonable Effectiveness of Deep Features as a Perceptual
Metric"; github.com/richzhang/PerceptualSimilarity, package `lpips` v0.1), AlexNet variant, in MindSpore.

d(x, y) = Σ_l mean_hw( w_l · (f̂_l(x) − f̂_l(y))² ), f̂_l = channel-unit-normalized ReLU outputs of
AlexNet's five conv layers, w_l the learned non-negative 1×1 "lin" weights; inputs in [-1, 1] go
through LPIPS' fixed scaling layer first. Lower = more similar.

Weights are never downloaded or unpickled: pass safetensors holding AlexNet's conv layers
(torchvision `features.{0,3,6,8,10}.*` or lpips' `net.slice{1..5}.*`) and the lin layers
(`lin{0..4}.model.1.weight`), e.g. converted once from torchvision's alexnet and lpips' alex.pth.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import mindspore as ms
from mindspore import nn, ops

from pmg_models import checkpoint, runtime
from pmg_models.ops import Conv2d

SHIFT = (-0.030, -0.088, -0.188)   # lpips ScalingLayer constants
SCALE = (0.458, 0.448, 0.450)
EPS = 1e-10
MIN_SIZE = 32                      # AlexNet's strides need at least this many pixels


@dataclass(frozen=True)
class AlexLayer:
    features_index: int            # index in torchvision's alexnet.features
    slice_name: str                # lpips' net.sliceN
    cin: int
    cout: int
    kernel: int
    stride: int
    padding: int
    pool_before: bool              # a 3x3/2 max-pool precedes the conv


LAYERS = (AlexLayer(0, "slice1", 3, 64, 11, 4, 2, False), AlexLayer(3, "slice2", 64, 192, 5, 1, 2, True),
          AlexLayer(6, "slice3", 192, 384, 3, 1, 1, True), AlexLayer(8, "slice4", 384, 256, 3, 1, 1, False),
          AlexLayer(10, "slice5", 256, 256, 3, 1, 1, False))


class LPIPSNet(nn.Cell):
    """AlexNet features + lin heads: (x, y) in [-1, 1], (B, 3, H, W) → distances (B,)."""

    def __init__(self):
        super().__init__()
        self.convs = nn.CellList([Conv2d(l.cin, l.cout, l.kernel, l.stride, l.padding) for l in LAYERS])
        self.lins = nn.CellList([Conv2d(l.cout, 1, 1, bias=False) for l in LAYERS])
        self.pool = nn.MaxPool2d(kernel_size=3, stride=2, pad_mode="valid")
        self.shift = ms.Tensor(np.asarray(SHIFT, np.float32).reshape(1, 3, 1, 1))
        self.scale = ms.Tensor(np.asarray(SCALE, np.float32).reshape(1, 3, 1, 1))

    def features(self, x):
        x = (x - self.shift.astype(x.dtype)) / self.scale.astype(x.dtype)
        out = []
        for layer, conv in zip(LAYERS, self.convs):
            if layer.pool_before:
                x = self.pool(x)
            x = ops.relu(conv(x))
            out.append(x)
        return out

    def construct(self, x, y):
        total = 0.0
        for fx, fy, lin in zip(self.features(x), self.features(y), self.lins):
            nx = fx / (ops.sqrt((fx * fx).sum(axis=1, keepdims=True)) + EPS)
            ny = fy / (ops.sqrt((fy * fy).sum(axis=1, keepdims=True)) + EPS)
            total = total + lin((nx - ny) ** 2).mean(axis=(2, 3))   # (B, 1)
        return total.reshape(-1)


def map_key(name: str) -> str | None:
    """torchvision / lpips names → ours; classifier and scaling-layer buffers are ignored."""
    if name.startswith(("classifier.", "scaling_layer.")):
        return None
    parts = name.split(".")
    if parts[0] == "net" and len(parts) == 4:          # net.sliceN.<features index>.weight
        parts = ["features", parts[2], parts[3]]
    if parts[0] == "features" and len(parts) == 3:
        for i, l in enumerate(LAYERS):
            if parts[1] == str(l.features_index):
                return f"convs.{i}.{parts[2]}"
    if parts[0].startswith("lin") and parts[1:3] == ["model", "1"]:
        return f"lins.{parts[0][3:]}.{parts[3]}"
    return name  # unknown: strict loading names it as unexpected


def weight_files(path: Path) -> list[Path]:
    path = Path(path)
    if path.is_dir():
        files = sorted(path.glob("*.safetensors"))
        if not files:
            raise checkpoint.CheckpointError(f"{path} holds no .safetensors files with LPIPS weights")
        return files
    if not path.is_file():
        raise FileNotFoundError(f"LPIPS weights {path} do not exist")
    if path.suffix != ".safetensors":
        raise checkpoint.CheckpointError(f"LPIPS weights must be safetensors (never unpickled): {path}")
    return [path]


class LPIPS:
    """Loaded LPIPS-alex; `distance(images_a, images_b)` on uint8 (N, H, W, 3) arrays."""

    def __init__(self, net: LPIPSNet, source: str = ""):
        self.net, self.source = net, source
        self.net.set_train(False)

    @classmethod
    def from_weights(cls, path) -> "LPIPS":
        runtime.setup()
        net = LPIPSNet()
        files = weight_files(Path(path))
        checkpoint.load_into(net, files, map_key, runtime.np_compute_dtype())
        return cls(net, str(path))

    def distance(self, images_a: Sequence[np.ndarray], images_b: Sequence[np.ndarray]) -> np.ndarray:
        """LPIPS of each pair of same-size uint8 RGB images → (N,) float32."""
        a, b = _to_input(images_a), _to_input(images_b)
        if a.shape != b.shape:
            raise ValueError(f"LPIPS needs same-size images, got {a.shape} and {b.shape}")
        if min(a.shape[2:]) < MIN_SIZE:
            raise ValueError(f"LPIPS needs images of at least {MIN_SIZE}x{MIN_SIZE} pixels, got {a.shape[2:]}")
        dtype = runtime.compute_dtype()
        out = self.net(runtime.to_tensor(a, dtype), runtime.to_tensor(b, dtype))
        return runtime.to_numpy(out).astype(np.float32)


def _to_input(images) -> np.ndarray:
    arr = np.stack([np.asarray(i)[..., :3] for i in images]).astype(np.float32)
    return (arr / 127.5 - 1.0).transpose(0, 3, 1, 2)   # (N, 3, H, W) in [-1, 1]
