"""Which checkpoints the pipeline uses: a small TOML file, defaulting to the demo's tiny models.

    # <warehouse>/pmg.toml (or --config FILE, env PMG_CONFIG)
    [models]
    llm = "/models/Llama-2-7b-chat-hf"          # HF Llama directory
    sd = "/models/stable-diffusion-v1-5"       # diffusers Stable Diffusion directory
    clip = "/models/clip-vit-base-patch32"     # HF CLIP directory
    soft_prompt = ""                           # optional trained soft prompt (.safetensors file)
    [runtime]
    device = "cpu"                             # passed to PMG_DEVICE (see pmg_models/runtime.py)
    [method]                                   # optional defaults that suit these checkpoints (CLI flags win)
    steps = 20                                 # any of METHOD_KEYS below

Relative paths are read relative to the file's directory.
"""
from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

CONFIG_NAME = "pmg.toml"
TINY_DIR = Path("models") / "tiny"


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _is_str(v) -> bool:
    return isinstance(v, str)


def _is_bool(v) -> bool:
    return isinstance(v, bool)


def _is_weights(v) -> bool:
    return isinstance(v, list) and bool(v) and all(map(_is_number, v))


# Method settings a config may default (e.g. small models trained without titles in their captions), each
# with what its value must be: the type of the flag it defaults, in TOML's own types.
_METHOD_TYPES = {
    "candidates": ("an integer", _is_int), "alpha": ("a number", _is_number), "steps": ("an integer", _is_int),
    "guidance": ("a number", _is_number), "height": ("an integer", _is_int), "width": ("an integer", _is_int),
    "n_history": ("an integer", _is_int), "n_pref_keywords": ("an integer", _is_int),
    "n_item_keywords": ("an integer", _is_int), "prompt_style": ("a string", _is_str),
    "weights": ("a non-empty list of numbers", _is_weights), "soft_scale": ("a number", _is_number),
    "title_in_prompt": ("true or false", _is_bool),
}
METHOD_KEYS = tuple(_METHOD_TYPES)


@dataclass(frozen=True)
class ModelConfig:
    llm: Path      # HF Llama directory
    sd: Path       # diffusers Stable Diffusion directory
    clip: Path     # HF CLIP directory
    soft_prompt: Path | None = None  # trained soft-prompt file (pmg_models.soft_prompt); None = keywords only
    device: str = "cpu"
    source: str = "default (tiny random-weight models)"
    method: dict = field(default_factory=dict)  # [method] defaults, keys from METHOD_KEYS

    def as_dict(self) -> dict:
        return {"llm": str(self.llm), "sd": str(self.sd), "clip": str(self.clip),
                "soft_prompt": str(self.soft_prompt) if self.soft_prompt else None, "device": self.device}


def tiny_defaults(warehouse: Path) -> ModelConfig:
    base = Path(warehouse) / TINY_DIR
    return ModelConfig(llm=base / "llm", sd=base / "sd", clip=base / "clip")


def load_config(warehouse: Path, path: Path | str | None = None) -> ModelConfig:
    """The model config: `path`, else env PMG_CONFIG, else <warehouse>/pmg.toml, else the tiny defaults."""
    path = path or os.environ.get("PMG_CONFIG") or None
    if path is None and (Path(warehouse) / CONFIG_NAME).is_file():
        path = Path(warehouse) / CONFIG_NAME
    if path is None:
        return tiny_defaults(warehouse)
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ValueError(f"model config {path} does not exist; create it or drop --config") from None
    except tomllib.TOMLDecodeError as e:
        raise ValueError(f"model config {path} is not valid TOML ({e}); fix the file") from None
    return _from_dict(data, path)


def _from_dict(data: dict, path: Path) -> ModelConfig:
    models = data.get("models", {})
    unknown = set(models) - {"llm", "sd", "clip", "soft_prompt"}
    if unknown:
        raise ValueError(f"model config {path}: unknown key(s) {sorted(unknown)} in [models]; "
                         "use llm, sd, clip, soft_prompt")
    missing = [k for k in ("llm", "sd", "clip") if not models.get(k)]
    if missing:
        raise ValueError(f"model config {path}: [models] needs {', '.join(missing)} (checkpoint directories)")

    def resolve(value):
        p = Path(os.path.expanduser(value))
        return p if p.is_absolute() else (path.parent / p)

    soft = models.get("soft_prompt") or None
    device = str(data.get("runtime", {}).get("device", "cpu")).lower()
    method = data.get("method", {})
    if not isinstance(method, dict):
        raise ValueError(f"model config {path}: [method] must be a table of settings")
    unknown = sorted(set(method) - set(METHOD_KEYS))
    if unknown:
        raise ValueError(f"model config {path}: unknown key(s) {unknown} in [method]; use {', '.join(METHOD_KEYS)}")
    for key, value in method.items():
        kind, ok = _METHOD_TYPES[key]
        if not ok(value):
            raise ValueError(f"model config {path}: [method] {key} must be {kind}, got {value!r}")
    return ModelConfig(llm=resolve(models["llm"]), sd=resolve(models["sd"]), clip=resolve(models["clip"]),
                       soft_prompt=resolve(soft) if soft else None, device=device, source=str(path),
                       method=dict(method))


def check_dirs(cfg: ModelConfig) -> None:
    """Fail with one sentence if a configured checkpoint directory is missing."""
    for name in ("llm", "sd", "clip"):
        d = getattr(cfg, name)
        if not Path(d).is_dir():
            raise ValueError(f"{name} checkpoint directory {d} does not exist (from {cfg.source}); "
                             "run `pmg demo` to create tiny models or point pmg.toml at real checkpoints")
    if cfg.soft_prompt is not None and not Path(cfg.soft_prompt).is_file():
        raise ValueError(f"soft prompt file {cfg.soft_prompt} does not exist (from {cfg.source}); "
                         "train one with `pmg train-soft-prompt` or remove soft_prompt from the config")
