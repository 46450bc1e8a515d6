"""CLIP image preprocessing, equal to transformers' CLIPImageProcessor (PIL backend).

uint8 RGB → resize the shortest side to `shortest_edge` with PIL bicubic (on uint8, as transformers
does) → center crop (zero-padding an image smaller than the crop) → ×rescale_factor in float64, then
float32 → (x − mean) / std → (N, 3, H, W) float32.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


@dataclass(frozen=True)
class ImageProcessorConfig:
    do_resize: bool = True
    shortest_edge: int = 224
    resample: int = 3                      # PIL.Image.BICUBIC
    do_center_crop: bool = True
    crop_height: int = 224
    crop_width: int = 224
    do_rescale: bool = True
    rescale_factor: float = 1 / 255
    do_normalize: bool = True
    image_mean: tuple = OPENAI_CLIP_MEAN
    image_std: tuple = OPENAI_CLIP_STD
    do_convert_rgb: bool = True

    @classmethod
    def from_hf(cls, cfg: dict) -> "ImageProcessorConfig":
        """Read a `preprocessor_config.json` dict field by field (old int `size`/`crop_size` forms too)."""
        d = cls()
        size = cfg.get("size", d.shortest_edge)
        if isinstance(size, dict):
            if "shortest_edge" not in size:
                raise ValueError(f"preprocessor size {size} is not supported; CLIP uses {{'shortest_edge': n}}")
            size = size["shortest_edge"]
        crop = cfg.get("crop_size", {"height": d.crop_height, "width": d.crop_width})
        crop = crop if isinstance(crop, dict) else {"height": crop, "width": crop}
        return cls(
            do_resize=bool(cfg.get("do_resize", d.do_resize)),
            shortest_edge=int(size),
            resample=int(cfg.get("resample", d.resample)),
            do_center_crop=bool(cfg.get("do_center_crop", d.do_center_crop)),
            crop_height=int(crop["height"]),
            crop_width=int(crop["width"]),
            do_rescale=bool(cfg.get("do_rescale", d.do_rescale)),
            rescale_factor=float(cfg.get("rescale_factor", d.rescale_factor)),
            do_normalize=bool(cfg.get("do_normalize", d.do_normalize)),
            image_mean=tuple(float(v) for v in cfg.get("image_mean", d.image_mean)),
            image_std=tuple(float(v) for v in cfg.get("image_std", d.image_std)),
            do_convert_rgb=bool(cfg.get("do_convert_rgb", d.do_convert_rgb)),
        )

    @classmethod
    def from_dir(cls, directory) -> "ImageProcessorConfig":
        """preprocessor_config.json, else transformers-5 processor_config.json["image_processor"], else defaults."""
        directory = Path(directory)
        if (directory / "preprocessor_config.json").exists():
            return cls.from_hf(json.loads((directory / "preprocessor_config.json").read_text()))
        if (directory / "processor_config.json").exists():
            nested = json.loads((directory / "processor_config.json").read_text()).get("image_processor")
            if nested:
                return cls.from_hf(nested)
        return cls()

    def to_hf(self) -> dict:
        return {"image_processor_type": "CLIPImageProcessor", "do_resize": self.do_resize,
                "size": {"shortest_edge": self.shortest_edge}, "resample": self.resample,
                "do_center_crop": self.do_center_crop,
                "crop_size": {"height": self.crop_height, "width": self.crop_width},
                "do_rescale": self.do_rescale, "rescale_factor": self.rescale_factor,
                "do_normalize": self.do_normalize, "image_mean": list(self.image_mean),
                "image_std": list(self.image_std), "do_convert_rgb": self.do_convert_rgb}


def resize_shape(height: int, width: int, shortest_edge: int) -> tuple[int, int]:
    """(new_h, new_w): shortest side → shortest_edge, the other truncated, as transformers computes it."""
    short, long = (width, height) if width <= height else (height, width)
    new_long = int(shortest_edge * long / short)
    return (new_long, shortest_edge) if width <= height else (shortest_edge, new_long)


def center_crop(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """Center crop an (H, W, C) array; an image smaller than the crop is zero-padded around."""
    h, w = image.shape[:2]
    top, left = (h - height) // 2, (w - width) // 2
    if top >= 0 and left >= 0 and top + height <= h and left + width <= w:
        return image[top: top + height, left: left + width]
    new_h, new_w = max(height, h), max(width, w)
    canvas = np.zeros((new_h, new_w) + image.shape[2:], image.dtype)
    pt, pl = math.ceil((new_h - h) / 2), math.ceil((new_w - w) / 2)
    canvas[pt: pt + h, pl: pl + w] = image
    top, left = (new_h - height) // 2, (new_w - width) // 2
    return canvas[top: top + height, left: left + width]


def _to_rgb_uint8(image, convert_rgb: bool) -> np.ndarray:
    """HxWx3 uint8; transparency is composited onto white, as transformers' convert_to_rgb does."""
    from PIL import Image

    if isinstance(image, Image.Image):
        if not convert_rgb:
            return np.asarray(image)
        if "A" in image.getbands() or image.info.get("transparency") is not None:
            rgba = image.convert("RGBA")
            white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
            return np.asarray(Image.alpha_composite(white, rgba).convert("RGB"))
        return np.asarray(image.convert("RGB"))
    arr = np.asarray(image)
    if arr.ndim == 2:
        arr = arr[..., None]
    if arr.dtype != np.uint8 or arr.ndim != 3 or arr.shape[2] not in (1, 3, 4):
        raise ValueError(f"images must be uint8 HxW[x1|3|4] arrays or PIL images; got {arr.dtype} {arr.shape}")
    if not convert_rgb or arr.shape[2] == 3:
        return arr
    if arr.shape[2] == 1:
        return np.repeat(arr, 3, axis=-1)
    alpha = arr[..., 3:4] / 255
    return np.round(alpha * arr[..., :3] + (1 - alpha) * 255).astype(np.uint8)


def preprocess_one(image, cfg: ImageProcessorConfig) -> np.ndarray:
    """One image → (3, H, W) float32."""
    from PIL import Image

    arr = _to_rgb_uint8(image, cfg.do_convert_rgb)
    if cfg.do_resize:
        h, w = resize_shape(arr.shape[0], arr.shape[1], cfg.shortest_edge)
        arr = np.asarray(Image.fromarray(arr).resize((w, h), resample=cfg.resample))
    if cfg.do_center_crop:
        arr = center_crop(arr, cfg.crop_height, cfg.crop_width)
    x = arr.astype(np.float64) * cfg.rescale_factor if cfg.do_rescale else arr
    x = np.asarray(x, np.float32)
    if cfg.do_normalize:
        x = (x - np.asarray(cfg.image_mean, np.float32)) / np.asarray(cfg.image_std, np.float32)
    return np.ascontiguousarray(x.transpose(2, 0, 1))


def preprocess(images, cfg: ImageProcessorConfig) -> np.ndarray:
    """uint8 HxWx3 arrays or PIL images → (N, 3, H, W) float32 pixel values."""
    if not len(images):
        raise ValueError("no images to preprocess")
    return np.stack([preprocess_one(im, cfg) for im in images])
