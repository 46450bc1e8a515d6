"""Text-to-image with Stable Diffusion 1.x/2.x: short named steps over our UNet, VAE, CLIP and schedulers.

    pipe = StableDiffusion.from_pretrained(dir)
    cond, uncond = pipe.encode_prompt(prompts, negative_prompt, extra_tokens=soft_tokens)
    latents = pipe.prepare_latents(seeds, height, width)
    for i, latents in pipe.denoise(cond, uncond, latents, steps, guidance): ...
    # a UNet with class_embed_type="projection" also takes the pooled text:
    cond, uncond, pooled, pooled_uncond = pipe.encode_prompt(prompts, return_pooled=True)
    pipe.denoise(cond, uncond, latents, steps, guidance, pooled=(pooled, pooled_uncond))
    images = pipe.decode(latents)                      # uint8 (B, H, W, 3)

Conventions (each documented where it is implemented):
* Prompt embeddings are the text encoder's final-normed last layer, as diffusers' default. SD 2.x
  folders ship 23 of OpenCLIP-H's 24 layers, so that *is* the penultimate OpenCLIP layer SD 2 was trained on.
* Prompts longer than 75 tokens are truncated with a warning (no chunked long-prompt encoding).
* Weighted segments follow the A1111 convention (scale token states, then restore the prompt's mean).
* PMG soft tokens are appended after the 77 text tokens; the unconditional branch is extended by
  repeating the negative prompt's last token state (its final padding position).
* Pooled text (HF `pooler_output`: the final-normed state at the eos token, of the unweighted prompt)
  conditions UNets built with `class_embed_type="projection"` (diffusers' option; the miniature world
  uses it). Soft tokens come after the eos, so they do not change it.
* Determinism: noise comes from each image's own seed on the host, and with `micro_batch=1` (default)
  every image runs alone through the text encoder, UNet and VAE, always at the same shapes, so its
  bytes do not depend on what else is in the batch. `micro_batch=N` runs N images per UNet call (faster
  on some machines); oneDNN then blocks rows by position, so pixels may move by a level or two.
"""
from __future__ import annotations

import json
import logging
from collections import OrderedDict
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import mindspore as ms
from mindspore import ops

from pmg_models import checkpoint, info, runtime
from pmg_models.sd import codec, weights
from pmg_models.sd.schedulers import Scheduler, make_scheduler

log = logging.getLogger(__name__)
Prompt = str | Sequence[tuple[str, float]]
COMPONENTS = ("unet", "vae", "text_encoder", "tokenizer", "scheduler")
TEXT_MEMO = 64    # encoded prompts kept (77·D·4 bytes each: 20 MB at SD 2's D = 1024)


def _compile_unet(unet):
    """One compiled entry: both CFG halves in one UNet batch, combined in-graph."""
    def guided(latents, timesteps, context, guidance, *pooled):
        x = ops.cat((latents, latents), 0)
        eps = unet(x, timesteps, context, *pooled)
        uncond, cond = ops.chunk(eps, 2, 0)
        return uncond + guidance * (cond - uncond)
    return runtime.jit(guided)


def _compile_unguided(unet):
    def plain(latents, timesteps, context, *pooled):
        return unet(latents, timesteps, context, *pooled)
    return runtime.jit(plain)


def _compile_decode(vae):
    # [-1, 1] -> [0, 1] happens on the host: three MindSpore elementwise ops on the output (profiled at
    # 2-2.5 ms each on a (2, 3, 64, 64) image, less unprofiled) against NumPy's microseconds, same float32 results.
    def decode(latents):
        return vae.decode(latents)
    return runtime.jit(decode)


def _chunks(n: int, size: int) -> Iterator[tuple[int, int]]:
    for start in range(0, n, size):
        yield start, min(start + size, n)


def _pad_to(arr: np.ndarray, size: int) -> np.ndarray:
    """Pad the batch axis to `size` by repeating the last row, so every call has one static shape."""
    if len(arr) == size:
        return arr
    return np.concatenate([arr, np.repeat(arr[-1:], size - len(arr), 0)], 0)


def _read_json(path: Path) -> dict:
    try:
        return json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise checkpoint.CheckpointError(f"cannot read {path}: {exc}") from None


def _file_fingerprint(path: Path, base: str) -> str:
    """Folder fingerprint extended by a weights file's size and first/last MiB (as checkpoint.fingerprint)."""
    import hashlib

    h = hashlib.sha256(base.encode())
    size = path.stat().st_size
    h.update(f"{path.name}:{size}".encode())
    with open(path, "rb") as f:
        h.update(f.read(1 << 20))
        f.seek(max(0, size - (1 << 20)))
        h.update(f.read(1 << 20))
    return h.hexdigest()[:16]


def weighted_states(states: np.ndarray, weights_per_token: np.ndarray) -> np.ndarray:
    """A1111 prompt weighting: states (T, D) times per-token weights, then rescaled to the original mean.

    The rescale keeps the overall magnitude the UNet was trained on, so weights shift emphasis between
    tokens rather than turning the whole prompt up or down.
    """
    scaled = states * weights_per_token[:, None].astype(states.dtype)
    before, after = float(states.mean()), float(scaled.mean())
    return (scaled * (before / after)).astype(np.float32) if after != 0.0 else scaled.astype(np.float32)


class StableDiffusion:
    """A loaded SD folder; see the module docstring for the step-by-step API."""

    def __init__(self, unet, vae, text_encoder, tokenizer, scheduler_config: dict, scheduler: str | None = None,
                 directory: Path | None = None, micro_batch: int = 1):
        runtime.setup()
        self.unet, self.vae, self.text_encoder, self.tokenizer = unet, vae, text_encoder, tokenizer
        self.scheduler_config, self.scheduler_name = dict(scheduler_config), scheduler
        make_scheduler(self.scheduler_config, scheduler)   # fail now on unsupported options
        self.directory = Path(directory) if directory is not None else None
        self.fingerprint = checkpoint.fingerprint(directory) if directory is not None else ""
        if micro_batch < 1:
            raise ValueError("micro_batch must be at least 1")
        self.micro_batch = micro_batch
        self.vae_scale = 2 ** (len(vae.config.block_out_channels) - 1)
        self.text_width = int(unet.config.cross_attention_dim[0])
        if text_encoder.config.hidden_size != self.text_width:
            raise ValueError(f"text encoder width {text_encoder.config.hidden_size} does not match the UNet's "
                             f"cross_attention_dim {self.text_width}")
        self.pooled_conditioned = unet.class_conditioned
        if self.pooled_conditioned and unet.config.projection_class_embeddings_input_dim != self.text_width:
            raise ValueError(f"the UNet's projection_class_embeddings_input_dim "
                             f"{unet.config.projection_class_embeddings_input_dim} is not the pooled text width "
                             f"{self.text_width}")
        self._guided = _compile_unet(unet)
        self._plain = _compile_unguided(unet)
        self._decode = _compile_decode(vae)
        self._text_memo: OrderedDict[bytes, np.ndarray] = OrderedDict()

    @classmethod
    def from_pretrained(cls, directory, scheduler: str | None = None, micro_batch: int = 1,
                        mindone_ckpt: Path | None = None) -> "StableDiffusion":
        """Load a diffusers SD folder (model_index.json + components); strict, fp16 weights accepted.

        `scheduler`: 'ddim', 'euler', 'dpm++2m' or a diffusers class name; None uses the folder's class
        (unsupported ones such as PNDM fall back to DPM-Solver++ 2M). `mindone_ckpt`: take the weights from
        a mindone SD `.ckpt` instead (UNet, VAE, and the text tower if the file has one; configs,
        tokenizer and scheduler from the folder).
        """
        from pmg_models.clip import CLIPTextModel, CLIPTokenizer
        from pmg_models.sd.unet import UNet2DConditionModel, UNetConfig
        from pmg_models.sd.vae import AutoencoderKL, VAEConfig

        directory = Path(directory)
        index = directory / "model_index.json"
        if not index.exists():
            raise checkpoint.CheckpointError(f"{directory} is not a diffusers SD folder (no model_index.json)")
        missing = [c for c in COMPONENTS if not (directory / c).is_dir()]
        if missing:
            raise checkpoint.CheckpointError(f"{directory} lacks component folder(s) {missing}")
        _read_json(index)
        sched_cfg = _read_json(directory / "scheduler" / "scheduler_config.json")
        if mindone_ckpt is None:
            runtime.check_host_memory({f"Stable Diffusion {directory.name}": info.parameters(directory)})
        text = CLIPTextModel.from_pretrained(directory / "text_encoder")
        if mindone_ckpt is None:
            vae_dir = directory / "vae"
            vae = codec.load_codec(vae_dir) if codec.is_codec_dir(vae_dir) else weights.load_vae(vae_dir)
            unet = weights.load_unet(directory / "unet")
        else:
            unet = UNet2DConditionModel(UNetConfig.from_json(directory / "unet" / "config.json"))
            vae = AutoencoderKL(VAEConfig.from_json(directory / "vae" / "config.json"))
            weights.load_mindone(mindone_ckpt, unet, vae, text.net)
        pipe = cls(unet, vae, text, CLIPTokenizer.from_dir(directory / "tokenizer"), sched_cfg, scheduler,
                   directory, micro_batch)
        if mindone_ckpt is not None:
            pipe.fingerprint = _file_fingerprint(Path(mindone_ckpt), pipe.fingerprint)
        return pipe

    @property
    def default_size(self) -> int:
        return int(self.unet.config.sample_size) * self.vae_scale

    def make_scheduler(self) -> Scheduler:
        return make_scheduler(self.scheduler_config, self.scheduler_name)

    # ------------------------------------------------------------------------------ encode_prompt
    def _text_states(self, ids: np.ndarray) -> np.ndarray:
        """(1, 77) ids → (1, 77, D). Memoized: a chunk's candidates share their ids and every image its
        negative prompt, so most prompts repeat; each is still encoded alone, so the bytes do not change."""
        key = ids.tobytes()
        hit = self._text_memo.pop(key, None)
        if hit is None:
            hit = runtime.to_numpy(self.text_encoder(ids))
            if len(self._text_memo) >= TEXT_MEMO:
                self._text_memo.popitem(last=False)
        self._text_memo[key] = hit
        return hit

    def _encode_ids(self, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(N, 77) ids → states (N, 77, D) and pooled (N, D), one prompt per text-encoder call
        (batch-independent bytes)."""
        from pmg_models.clip import pool

        states = np.stack([self._text_states(ids[i:i + 1])[0] for i in range(len(ids))]).astype(np.float32)
        return states, pool(states, ids, self.text_encoder.config.eos_token_id)

    def _encode_one(self, prompt: Prompt) -> tuple[np.ndarray, np.ndarray]:
        limit = self.tokenizer.model_max_length - 2
        if isinstance(prompt, str):
            ids, counts = self.tokenizer.encode([prompt])
            if counts[0] > limit:
                log.warning("prompt has %d tokens; truncated to %d: %.60r…", counts[0], limit, prompt)
            states, pooled = self._encode_ids(ids)
            return states[0], pooled[0]
        texts = [str(text) for text, _ in prompt]
        ids, index = self.tokenizer.encode_segments(texts)
        n_tokens = len(self.tokenizer.tokenize(" ".join(texts)))
        if n_tokens > limit:
            log.warning("weighted prompt has %d tokens; truncated to %d", n_tokens, limit)
        seg_weights = np.asarray([float(w) for _, w in prompt] + [1.0], np.float32)
        per_token = seg_weights[index]          # index -1 (bos/eos/pad) picks the trailing 1.0
        states, pooled = self._encode_ids(ids[None])
        return weighted_states(states[0], per_token), pooled[0]

    def encode_prompt(self, prompts: list[Prompt], negative_prompt: str | list[str] = "",
                      extra_tokens: np.ndarray | None = None, extra_scale: float = 1.0,
                      return_pooled: bool = False) -> tuple[np.ndarray, ...]:
        """Prompts → (cond, uncond) float32 [B, 77 (+M), D]; with `return_pooled` also the pooled text
        (pooled, pooled_uncond) [B, D], as diffusers' SDXL encode_prompt returns four arrays.

        A prompt is a string or a list of (text, weight) segments (see `weighted_states`).
        `extra_tokens` [B, M, D] (PMG soft tokens, in text-encoder output space) are appended to cond
        times `extra_scale`; uncond is extended to the same length by repeating its last token state.
        """
        if isinstance(prompts, str):
            raise TypeError("encode_prompt takes a list of prompts")
        negatives = [negative_prompt] * len(prompts) if isinstance(negative_prompt, str) else list(negative_prompt)
        if len(negatives) != len(prompts):
            raise ValueError(f"{len(negatives)} negative prompts for {len(prompts)} prompts")
        if prompts:
            (cond, pooled), (uncond, pooled_uncond) = ([np.stack(a) for a in zip(*map(self._encode_one, texts))]
                                                       for texts in (prompts, negatives))
        else:
            cond, pooled = np.zeros((0, 77, self.text_width), np.float32), np.zeros((0, self.text_width), np.float32)
            uncond, pooled_uncond = cond.copy(), pooled.copy()
        if extra_tokens is not None:
            extra = np.asarray(extra_tokens, np.float32)
            if extra.ndim != 3 or extra.shape[0] != len(prompts) or extra.shape[2] != self.text_width:
                raise ValueError(f"extra_tokens must be [B={len(prompts)}, M, D={self.text_width}], got {extra.shape}")
            cond = np.concatenate([cond, extra * np.float32(extra_scale)], 1)
            uncond = np.concatenate([uncond, np.repeat(uncond[:, -1:], extra.shape[1], 1)], 1)
        return (cond, uncond, pooled, pooled_uncond) if return_pooled else (cond, uncond)

    # ---------------------------------------------------------------------------- prepare_latents
    def latent_shape(self, height: int | None, width: int | None) -> tuple[int, int, int]:
        height, width = height or self.default_size, width or self.default_size
        multiple = self.vae_scale * 2 ** (len(self.unet.config.block_out_channels) - 1)
        if height % multiple or width % multiple:
            raise ValueError(f"height and width must be multiples of {multiple} for this model, got {height}x{width}")
        return self.unet.config.in_channels, height // self.vae_scale, width // self.vae_scale

    def prepare_latents(self, seeds: list[int], height: int | None = None, width: int | None = None) -> np.ndarray:
        """Unit-variance noise [B, C, h, w], one host-RNG draw per seed (scaled by the scheduler in `denoise`)."""
        shape = self.latent_shape(height, width)
        return np.stack([runtime.noise(shape, int(s)) for s in seeds]) if seeds else np.zeros((0, *shape), np.float32)

    # ------------------------------------------------------------------------------------ denoise
    def _model_output(self, x: np.ndarray, t, cond: np.ndarray, uncond: np.ndarray, guidance: float,
                      pooled: tuple | None) -> np.ndarray:
        """Guided UNet output for the batch, in fixed micro-batches (padding the last one)."""
        out = np.empty_like(x)
        mb, g = self.micro_batch, float(guidance)
        t_arr = np.full((2 * mb if g > 1.0 else mb,), float(t), np.float32)
        dt = runtime.compute_dtype()
        for a, b in _chunks(len(x), mb):
            xs, cs = _pad_to(x[a:b], mb), _pad_to(cond[a:b], mb)
            if g > 1.0:   # diffusers skips the unconditional half when guidance <= 1
                ctx = np.concatenate([_pad_to(uncond[a:b], mb), cs], 0)
                extra = () if pooled is None else \
                    (runtime.to_tensor(np.concatenate([_pad_to(pooled[1][a:b], mb), _pad_to(pooled[0][a:b], mb)]), dt),)
                eps = self._guided(runtime.to_tensor(xs, dt), runtime.to_tensor(t_arr), runtime.to_tensor(ctx, dt),
                                   ms.Tensor(g, dt), *extra)
            else:
                extra = () if pooled is None else (runtime.to_tensor(_pad_to(pooled[0][a:b], mb), dt),)
                eps = self._plain(runtime.to_tensor(xs, dt), runtime.to_tensor(t_arr), runtime.to_tensor(cs, dt),
                                  *extra)
            out[a:b] = runtime.to_numpy(eps)[: b - a]
        return out

    def _check_pooled(self, pooled, n: int) -> tuple | None:
        if not self.pooled_conditioned:
            if pooled is not None:
                raise ValueError("this UNet takes no pooled text (its config has no class_embed_type)")
            return None
        if pooled is None:
            raise ValueError("this UNet is conditioned on the pooled text (class_embed_type='projection'): "
                             "pass pooled=(pooled, pooled_uncond) from encode_prompt(..., return_pooled=True)")
        pc, pu = (np.asarray(p, np.float32) for p in pooled)
        if pc.shape != pu.shape or pc.shape != (n, self.text_width):
            raise ValueError(f"pooled text must be two [B={n}, D={self.text_width}] arrays, got {pc.shape}, {pu.shape}")
        return pc, pu

    def denoise(self, cond, uncond, latents: np.ndarray, steps: int = 30, guidance: float = 7.5,
                scheduler: Scheduler | None = None, pooled: tuple | None = None) -> Iterator[tuple[int, np.ndarray]]:
        """Yield (step_index, latents) after each of `steps` scheduler steps; classifier-free guidance.

        `pooled` = (pooled, pooled_uncond) [B, D], required by (and only by) pooled-conditioned UNets.
        """
        cond, uncond = np.asarray(runtime.to_numpy(cond) if isinstance(cond, ms.Tensor) else cond, np.float32), \
            np.asarray(runtime.to_numpy(uncond) if isinstance(uncond, ms.Tensor) else uncond, np.float32)
        if cond.shape != uncond.shape or len(cond) != len(latents):
            raise ValueError(f"cond {cond.shape}, uncond {uncond.shape} and latents {np.shape(latents)} disagree")
        pooled = self._check_pooled(pooled, len(cond))
        sched = scheduler or self.make_scheduler()
        sched.set_timesteps(steps)
        x = (np.asarray(latents, np.float32) * np.float32(sched.init_noise_sigma)).astype(np.float32)
        for i, t in enumerate(sched.timesteps):
            eps = self._model_output(sched.scale_model_input(x, t), t, cond, uncond, guidance, pooled)
            x = sched.step(eps, t, x)
            yield i, x

    # ------------------------------------------------------------------------------------- decode
    def decode_float(self, latents: np.ndarray) -> np.ndarray:
        """Latents → float images in [0, 1], (B, H, W, 3)."""
        z = np.asarray(latents, np.float32) / np.float32(self.vae.config.scaling_factor)
        out = []
        for a, b in _chunks(len(z), self.micro_batch):
            chunk = runtime.to_tensor(_pad_to(z[a:b], self.micro_batch), runtime.compute_dtype())
            img = runtime.to_numpy(self._decode(chunk))[: b - a]
            out.append(np.clip(img / np.float32(2) + np.float32(0.5), 0, 1))
        return np.concatenate(out).transpose(0, 2, 3, 1) if out else np.zeros((0, 0, 0, 3), np.float32)

    def decode(self, latents: np.ndarray) -> np.ndarray:
        """Latents → uint8 RGB (B, H, W, 3), rounded as diffusers' `numpy_to_pil`."""
        return (self.decode_float(latents) * 255).round().astype(np.uint8)

    def generate(self, prompts: list[Prompt], seeds: list[int], steps: int = 30, guidance: float = 7.5,
                 height: int | None = None, width: int | None = None, negative_prompt: str | list[str] = "",
                 extra_tokens: np.ndarray | None = None, extra_scale: float = 1.0) -> np.ndarray:
        """All steps at once: uint8 images (B, H, W, 3), one seed per prompt."""
        if len(seeds) != len(prompts):
            raise ValueError(f"{len(seeds)} seeds for {len(prompts)} prompts (one seed per image)")
        cond, uncond, *pooled = self.encode_prompt(prompts, negative_prompt, extra_tokens, extra_scale,
                                                   return_pooled=True)
        latents = self.prepare_latents(seeds, height, width)
        for _, latents in self.denoise(cond, uncond, latents, steps, guidance,
                                       pooled=tuple(pooled) if self.pooled_conditioned else None):
            pass
        return self.decode(latents)
