"""CLIP (Radford et al. 2021, "Learning Transferable Visual Models From Natural Language Supervision").

A MindSpore port of Hugging Face transformers' CLIP (`models/clip/modeling_clip.py`): the text transformer
(also Stable Diffusion's text encoder), the ViT image tower, the projections and the logit scale. Cell
attributes follow the HF checkpoint keys, so loading is an identity map apart from the optional
`text_model.` prefix of SD `text_encoder/` directories. The tokenizer, the image preprocessing and the
tiny-checkpoint writers live in `clip_tokenizer.py`, `clip_image.py` and `clip_tiny.py` and are
re-exported here.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import mindspore as ms
from mindspore import nn, ops, Parameter

from pmg_models import checkpoint, info, ops as pops, runtime
from pmg_models.clip_image import ImageProcessorConfig, preprocess
from pmg_models.clip_tokenizer import CLIPTokenizer, write_tiny_tokenizer
from pmg_models.clip_tiny import init_tiny, write_tiny_text_encoder

__all__ = ["CLIPTextConfig", "CLIPVisionConfig", "CLIPTextModel", "CLIPModel", "CLIPTokenizer",
           "ImageProcessorConfig", "preprocess", "write_tiny_tokenizer", "write_tiny_text_encoder", "init_tiny"]

ACTIVATIONS = {"quick_gelu": pops.QuickGELU,
               "gelu": pops.GELU,
               "gelu_new": pops.GELUTanh,
               "gelu_pytorch_tanh": pops.GELUTanh}
OUTPUT_LAYERS = ("last", "penultimate")


def _activation(name: str) -> str:
    if name not in ACTIVATIONS:
        raise ValueError(f"hidden_act={name!r} is not supported; choose one of {sorted(ACTIVATIONS)}")
    return name


@dataclass(frozen=True)
class CLIPTextConfig:
    vocab_size: int = 49408
    hidden_size: int = 512
    intermediate_size: int = 2048
    num_hidden_layers: int = 12
    num_attention_heads: int = 8
    max_position_embeddings: int = 77      # the context length; SD pads every prompt to it
    hidden_act: str = "quick_gelu"         # OpenAI CLIP: quick_gelu; OpenCLIP (SD 2.x): gelu (exact erf form)
    layer_norm_eps: float = 1e-5
    projection_dim: int = 512              # only used by a full CLIPModel (text_projection)
    bos_token_id: int = 49406
    eos_token_id: int = 49407              # 2 marks a legacy config: pool at argmax(input_ids) instead
    pad_token_id: int = 1

    @classmethod
    def from_hf(cls, cfg: dict) -> "CLIPTextConfig":
        """Read a transformers CLIPTextConfig dict (SD `text_encoder/config.json` or a CLIPModel `text_config`)."""
        d = cls()
        return cls(
            vocab_size=int(cfg.get("vocab_size", d.vocab_size)),
            hidden_size=int(cfg.get("hidden_size", d.hidden_size)),
            intermediate_size=int(cfg.get("intermediate_size", d.intermediate_size)),
            num_hidden_layers=int(cfg.get("num_hidden_layers", d.num_hidden_layers)),
            num_attention_heads=int(cfg.get("num_attention_heads", d.num_attention_heads)),
            max_position_embeddings=int(cfg.get("max_position_embeddings", d.max_position_embeddings)),
            hidden_act=_activation(cfg.get("hidden_act", d.hidden_act)),
            layer_norm_eps=float(cfg.get("layer_norm_eps", d.layer_norm_eps)),
            projection_dim=int(cfg.get("projection_dim", d.projection_dim)),
            bos_token_id=int(cfg.get("bos_token_id", d.bos_token_id)),
            eos_token_id=int(cfg.get("eos_token_id", d.eos_token_id)),
            pad_token_id=int(cfg.get("pad_token_id", d.pad_token_id)),
        )


@dataclass(frozen=True)
class CLIPVisionConfig:
    hidden_size: int = 768
    intermediate_size: int = 3072
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    num_channels: int = 3
    image_size: int = 224
    patch_size: int = 32                   # ViT-B/32
    hidden_act: str = "quick_gelu"
    layer_norm_eps: float = 1e-5
    projection_dim: int = 512

    @classmethod
    def from_hf(cls, cfg: dict) -> "CLIPVisionConfig":
        """Read a transformers CLIPVisionConfig dict (a CLIPModel `vision_config`)."""
        d = cls()
        return cls(
            hidden_size=int(cfg.get("hidden_size", d.hidden_size)),
            intermediate_size=int(cfg.get("intermediate_size", d.intermediate_size)),
            num_hidden_layers=int(cfg.get("num_hidden_layers", d.num_hidden_layers)),
            num_attention_heads=int(cfg.get("num_attention_heads", d.num_attention_heads)),
            num_channels=int(cfg.get("num_channels", d.num_channels)),
            image_size=int(cfg.get("image_size", d.image_size)),
            patch_size=int(cfg.get("patch_size", d.patch_size)),
            hidden_act=_activation(cfg.get("hidden_act", d.hidden_act)),
            layer_norm_eps=float(cfg.get("layer_norm_eps", d.layer_norm_eps)),
            projection_dim=int(cfg.get("projection_dim", d.projection_dim)),
        )


# --- building blocks (names follow HF keys) -------------------------------------------------------

class Embedding(nn.Cell):
    """A lookup table whose parameter is `weight` (rows = ids), as torch.nn.Embedding."""

    def __init__(self, num: int, dim: int):
        super().__init__()
        self.weight = Parameter(ms.Tensor(np.zeros((num, dim), np.float32)), name="weight")

    def construct(self, ids):
        return ops.gather(self.weight, ids, 0)


class CLIPAttention(nn.Cell):
    def __init__(self, hidden: int, heads: int):
        super().__init__()
        self.heads = heads
        self.head_dim = hidden // heads
        self.scale = self.head_dim ** -0.5
        self.q_proj = pops.Linear(hidden, hidden)
        self.k_proj = pops.Linear(hidden, hidden)
        self.v_proj = pops.Linear(hidden, hidden)
        self.out_proj = pops.Linear(hidden, hidden)
        self.softmax = pops.Softmax()
        self.attend = pops.MultiHeadAttention(heads)  # no mask (the image tower): heads in place

    def _split(self, x, b, t):
        return x.reshape(b, t, self.heads, self.head_dim).transpose(0, 2, 1, 3)  # (B, H, T, Dh)

    def construct(self, x, mask, residual=None):
        if mask is None:
            return self.out_proj(self.attend(self.q_proj(x), self.k_proj(x), self.v_proj(x)), residual)
        b, t, c = x.shape
        q = self._split(self.q_proj(x), b, t)
        k = self._split(self.k_proj(x), b, t)
        v = self._split(self.v_proj(x), b, t)
        out = pops.attention(q, k, v, mask, self.scale, self.softmax)
        return self.out_proj(out.transpose(0, 2, 1, 3).reshape(b, t, c), residual)


class CLIPMLP(nn.Cell):
    def __init__(self, hidden: int, intermediate: int, act: str):
        super().__init__()
        self.fc1 = pops.Linear(hidden, intermediate)
        self.fc2 = pops.Linear(intermediate, hidden)
        self.act = ACTIVATIONS[act]()

    def construct(self, x, residual=None):
        return self.fc2(self.act(self.fc1(x)), residual)


class CLIPEncoderLayer(nn.Cell):
    """Pre-norm transformer block: x + attn(ln1(x)), then x + mlp(ln2(x))."""

    def __init__(self, cfg):
        super().__init__()
        self.self_attn = CLIPAttention(cfg.hidden_size, cfg.num_attention_heads)
        self.layer_norm1 = pops.LayerNorm(cfg.hidden_size, cfg.layer_norm_eps)
        self.mlp = CLIPMLP(cfg.hidden_size, cfg.intermediate_size, cfg.hidden_act)
        self.layer_norm2 = pops.LayerNorm(cfg.hidden_size, cfg.layer_norm_eps)

    def construct(self, x, mask):
        x = self.self_attn(self.layer_norm1(x), mask, x)  # residuals added inside the output projections
        return self.mlp(self.layer_norm2(x), x)


class CLIPEncoder(nn.Cell):
    def __init__(self, cfg):
        super().__init__()
        self.layers = nn.CellList([CLIPEncoderLayer(cfg) for _ in range(cfg.num_hidden_layers)])

    def construct(self, x, mask):
        """Returns (last, hidden_states): hidden_states[0] is the input, [i] the output of layer i."""
        states = (x,)
        for layer in self.layers:
            x = layer(x, mask)
            states = states + (x,)
        return x, states


class CLIPTextEmbeddings(nn.Cell):
    def __init__(self, cfg: CLIPTextConfig):
        super().__init__()
        self.token_embedding = Embedding(cfg.vocab_size, cfg.hidden_size)
        self.position_embedding = Embedding(cfg.max_position_embeddings, cfg.hidden_size)


class CLIPTextTransformer(nn.Cell):
    """Parameters `embeddings.*`, `encoder.*`, `final_layer_norm.*` (HF CLIPTextModel without prefix)."""

    def __init__(self, cfg: CLIPTextConfig):
        super().__init__()
        self.embeddings = CLIPTextEmbeddings(cfg)
        self.encoder = CLIPEncoder(cfg)
        self.final_layer_norm = pops.LayerNorm(cfg.hidden_size, cfg.layer_norm_eps)

    def construct(self, token_embeds, mask):
        """(B, T, D) token embeddings + additive mask (B|1, 1, T, T) → (final-normed last, hidden states)."""
        t = token_embeds.shape[1]
        x = token_embeds + self.embeddings.position_embedding.weight[:t]
        last, states = self.encoder(x, mask)
        return self.final_layer_norm(last), states


class CLIPVisionEmbeddings(nn.Cell):
    def __init__(self, cfg: CLIPVisionConfig):
        super().__init__()
        n = (cfg.image_size // cfg.patch_size) ** 2 + 1
        self.class_embedding = Parameter(ms.Tensor(np.zeros(cfg.hidden_size, np.float32)), name="class_embedding")
        self.patch_embedding = pops.Conv2d(cfg.num_channels, cfg.hidden_size, cfg.patch_size,
                                           stride=cfg.patch_size, bias=False)
        self.position_embedding = Embedding(n, cfg.hidden_size)

    def construct(self, pixels):
        x = self.patch_embedding(pixels)                       # (B, D, g, g)
        b, d = x.shape[0], x.shape[1]
        x = x.reshape(b, d, -1).transpose(0, 2, 1)             # (B, g*g, D)
        cls = ops.broadcast_to(self.class_embedding.reshape(1, 1, d), (b, 1, d)).astype(x.dtype)
        return ops.cat((cls, x), 1) + self.position_embedding.weight


class CLIPVisionTransformer(nn.Cell):
    """Parameters `embeddings.*`, `pre_layrnorm.*` (sic, as in HF), `encoder.*`, `post_layernorm.*`."""

    def __init__(self, cfg: CLIPVisionConfig):
        super().__init__()
        self.embeddings = CLIPVisionEmbeddings(cfg)
        self.pre_layrnorm = pops.LayerNorm(cfg.hidden_size, cfg.layer_norm_eps)
        self.encoder = CLIPEncoder(cfg)
        self.post_layernorm = pops.LayerNorm(cfg.hidden_size, cfg.layer_norm_eps)

    def construct(self, pixels):
        """(B, C, H, W) normalized pixels → pooled (B, D): post-norm of the class token."""
        x = self.pre_layrnorm(self.embeddings(pixels))
        last, _ = self.encoder(x, None)
        return self.post_layernorm(last[:, 0, :])


class CLIPNet(nn.Cell):
    """The whole HF CLIPModel parameter tree."""

    def __init__(self, text: CLIPTextConfig, vision: CLIPVisionConfig, projection_dim: int):
        super().__init__()
        self.text_model = CLIPTextTransformer(text)
        self.vision_model = CLIPVisionTransformer(vision)
        self.text_projection = pops.Linear(text.hidden_size, projection_dim, bias=False)
        self.visual_projection = pops.Linear(vision.hidden_size, projection_dim, bias=False)
        self.logit_scale = Parameter(ms.Tensor(np.array(math.log(1 / 0.07), np.float32)), name="logit_scale")

    def text_features(self, input_ids, mask, pool):
        """Projected, unnormalized text features; `pool` is a (B, 1, T) one-hot of the pooled position."""
        last, _ = self.text_model(self.text_model.embeddings.token_embedding(input_ids), mask)
        return self.text_projection(ops.matmul(pool, last)[:, 0, :])

    def image_features(self, pixels):
        return self.visual_projection(self.vision_model(pixels))


# --- host-side helpers ----------------------------------------------------------------------------

def causal_mask(batch: int, t: int, attention_mask=None) -> np.ndarray:
    """Additive (B, 1, T, T) mask: causal, plus padding columns where `attention_mask` (B, T) is 0."""
    neg = pops.neg_inf()
    mask = np.triu(np.full((t, t), neg, np.float32), 1)[None, None]
    mask = np.broadcast_to(mask, (batch, 1, t, t)).copy()
    if attention_mask is not None:
        keep = np.asarray(attention_mask).astype(bool)[:, None, None, :]
        mask = np.where(keep, mask, np.float32(neg))
    return mask


def pool(states: np.ndarray, input_ids: np.ndarray, eos_token_id: int) -> np.ndarray:
    """(B, T, D) final-normed states → (B, D) at the position HF pools (`pooler_output`)."""
    ids = np.asarray(input_ids)
    return states[np.arange(len(ids)), pooled_positions(ids, eos_token_id)]


def pooled_positions(input_ids: np.ndarray, eos_token_id: int) -> np.ndarray:
    """The position HF pools per row: argmax(ids) for legacy eos_token_id == 2, else the first eos."""
    ids = np.asarray(input_ids)
    if eos_token_id == 2:
        return ids.astype(np.int32).argmax(-1)
    return (ids == eos_token_id).astype(np.int32).argmax(-1)


def _one_hot(positions: np.ndarray, t: int) -> np.ndarray:
    out = np.zeros((len(positions), 1, t), np.float32)
    out[np.arange(len(positions)), 0, positions] = 1.0
    return out


def _as_tensor(x, dtype):
    if isinstance(x, ms.Tensor):
        return x if x.dtype == dtype else x.astype(dtype)
    return runtime.to_tensor(np.asarray(x), dtype)


def _strip_text_prefix(name: str) -> str | None:
    if name.endswith("position_ids"):  # a non-persistent buffer some older checkpoints still carry
        return None
    return name[len("text_model."):] if name.startswith("text_model.") else name


def _ignore_buffers(name: str) -> str | None:
    return None if name.endswith("position_ids") else name


def _to_compute_dtype(cell) -> None:
    """Parameters in the compute dtype (fp32 on CPU; fp16/bf16 on Ascend), so loading casts into it."""
    dtype = runtime.compute_dtype()
    for p in cell.get_parameters():
        if p.dtype != dtype:
            p.set_data(p.astype(dtype))


def _read_config(directory: Path) -> dict:
    path = Path(directory) / "config.json"
    if not path.exists():
        raise checkpoint.CheckpointError(f"no config.json in {directory}")
    return json.loads(path.read_text())


# --- public models --------------------------------------------------------------------------------

class CLIPTextModel:
    """CLIP text transformer; also the Stable Diffusion text encoder (`text_encoder/` directory).

    `forward(ids, 'last')` equals diffusers' `encode_prompt` default (`text_encoder(ids)[0]`: the last
    layer, final-normed); `'penultimate'` equals diffusers with `clip_skip=1` (hidden_states[-2] through
    final_layer_norm). SD 2.x needs no skip: its text_encoder config already has 23 of OpenCLIP's 24
    layers, so the penultimate OpenCLIP layer is this model's last layer, and diffusers uses that.
    """

    def __init__(self, config: CLIPTextConfig, directory: Path | None = None):
        runtime.setup()
        self.config = config
        self.net = CLIPTextTransformer(config)
        _to_compute_dtype(self.net)
        self.directory = Path(directory) if directory is not None else None
        self.fingerprint = checkpoint.fingerprint(directory) if directory is not None else ""
        self._run = _compile(self.net)

    @classmethod
    def from_pretrained(cls, directory) -> "CLIPTextModel":
        """Load an SD `text_encoder/` dir (keys `text_model.*`) or a bare transformers CLIPTextModel save."""
        directory = Path(directory)
        model = cls(CLIPTextConfig.from_hf(_read_config(directory)), None)
        checkpoint.load_into(model.net, checkpoint.weight_files(directory), _strip_text_prefix,
                             runtime.np_compute_dtype())
        model.directory, model.fingerprint = directory, checkpoint.fingerprint(directory)
        return model

    def embed_tokens(self, input_ids) -> ms.Tensor:
        """(B, T) ids → (B, T, D) token embeddings (positions are added by `encode_embeds`)."""
        ids = input_ids if isinstance(input_ids, ms.Tensor) else runtime.to_tensor(np.asarray(input_ids, np.int32))
        return self.net.embeddings.token_embedding(ids)

    def encode_embeds(self, token_embeds, attention_mask=None) -> tuple[ms.Tensor, tuple]:
        """Token embeddings (B, T, D) → (final-normed last hidden state, hidden states tuple).

        hidden_states[0] is the embedding output and [i] the output of layer i (as transformers'
        `output_hidden_states`). `attention_mask` (B, T) masks padding keys, as diffusers does only
        when the text encoder config sets `use_attention_mask`.
        """
        x = _as_tensor(token_embeds, runtime.compute_dtype())
        b, t = x.shape[0], x.shape[1]
        if t > self.config.max_position_embeddings:
            raise ValueError(f"sequence length {t} exceeds max_position_embeddings "
                             f"{self.config.max_position_embeddings}")
        return self._run(x, runtime.to_tensor(causal_mask(b, t, attention_mask), ms.float32))

    def forward(self, input_ids, output_layer: str = "last", attention_mask=None) -> ms.Tensor:
        """(B, T) ids → (B, T, D) prompt embeddings as diffusers computes them (see class docstring)."""
        if output_layer not in OUTPUT_LAYERS:
            raise ValueError(f"output_layer={output_layer!r}; choose one of {list(OUTPUT_LAYERS)}")
        last, states = self.encode_embeds(self.embed_tokens(input_ids), attention_mask)
        if output_layer == "last":
            return last
        return self.net.final_layer_norm(states[-2])

    __call__ = forward

    def pooled(self, input_ids) -> np.ndarray:
        """(B, D) pooled output (HF `pooler_output`): the final-normed state at the eos position."""
        ids = np.asarray(input_ids)
        return pool(runtime.to_numpy(self.forward(ids)), ids, self.config.eos_token_id)


class CLIPModel:
    """HF CLIPModel: text and image towers, projections, logit scale; numpy in, numpy out.

    Inputs run in fixed chunks of `micro_batch` rows (the last one padded), so the compiled towers see
    one shape and never recompile for a new batch size.
    """

    def __init__(self, text: CLIPTextConfig, vision: CLIPVisionConfig, projection_dim: int,
                 tokenizer: CLIPTokenizer | None = None, image_config: ImageProcessorConfig | None = None,
                 micro_batch: int = 8):
        runtime.setup()
        self.micro_batch = int(micro_batch)
        self.text_config, self.vision_config, self.projection_dim = text, vision, projection_dim
        self.net = CLIPNet(text, vision, projection_dim)
        _to_compute_dtype(self.net)
        self.tokenizer = tokenizer
        self.image_config = image_config or ImageProcessorConfig()
        self.fingerprint = ""
        self._text = _compile_method(self.net, "text_features")
        self._image = _compile_method(self.net, "image_features")

    @classmethod
    def from_pretrained(cls, directory, micro_batch: int = 8) -> "CLIPModel":
        """Load an HF CLIP dir: config.json, model.safetensors, preprocessor_config.json, tokenizer files."""
        directory = Path(directory)
        cfg = _read_config(directory)
        if "text_config" not in cfg or "vision_config" not in cfg:
            raise checkpoint.CheckpointError(f"{directory}/config.json is not a CLIPModel config "
                                             "(needs text_config and vision_config)")
        text = CLIPTextConfig.from_hf(cfg["text_config"])
        vision = CLIPVisionConfig.from_hf(cfg["vision_config"])
        proj = int(cfg.get("projection_dim", 512))
        has_tok = (directory / "vocab.json").exists() or (directory / "tokenizer.json").exists()
        tok = CLIPTokenizer.from_dir(directory) if has_tok else None
        image_cfg = ImageProcessorConfig.from_dir(directory)
        runtime.check_host_memory({f"CLIP {directory.name}": info.parameters(directory)})
        model = cls(text, vision, proj, tok, image_cfg, micro_batch)
        checkpoint.load_into(model.net, checkpoint.weight_files(directory), _ignore_buffers,
                             runtime.np_compute_dtype())
        model.fingerprint = checkpoint.fingerprint(directory)
        return model

    def text_features(self, input_ids) -> np.ndarray:
        """(N, T) ids → (N, P) projected, unnormalized (HF `get_text_features`)."""
        return _in_chunks(np.asarray(input_ids, np.int32), self.micro_batch, self._text_chunk, self.projection_dim)

    def _text_chunk(self, ids: np.ndarray) -> np.ndarray:
        n, t = ids.shape
        pool = _one_hot(pooled_positions(ids, self.text_config.eos_token_id), t)
        mask = runtime.to_tensor(causal_mask(n, t), ms.float32)
        return runtime.to_numpy(self._text(runtime.to_tensor(ids), mask, runtime.to_tensor(pool)))

    def image_features(self, pixel_values) -> np.ndarray:
        """(N, 3, H, W) preprocessed pixels → (N, P) projected, unnormalized (HF `get_image_features`)."""
        px = np.asarray(pixel_values, np.float32)
        size = self.vision_config.image_size
        if px.shape[2:] != (size, size):
            raise ValueError(f"pixel_values are {px.shape[2]}x{px.shape[3]}; the model expects {size}x{size}")
        return _in_chunks(px, self.micro_batch, self._image_chunk, self.projection_dim)

    def _image_chunk(self, px: np.ndarray) -> np.ndarray:
        return runtime.to_numpy(self._image(runtime.to_tensor(px, runtime.compute_dtype())))

    def encode_text(self, texts: list[str]) -> np.ndarray:
        """Texts → (N, P) L2-normalized text embeddings (prompts over 77 tokens are truncated)."""
        if self.tokenizer is None:
            raise ValueError("this CLIP directory has no tokenizer files (vocab.json, merges.txt)")
        ids, _ = self.tokenizer.encode(list(texts), max_length=self.text_config.max_position_embeddings)
        return _l2_normalize(self.text_features(ids))

    def encode_image(self, images) -> np.ndarray:
        """uint8 HxWx3 arrays or PIL images → (N, P) L2-normalized image embeddings."""
        return _l2_normalize(self.image_features(self.preprocess(images)))

    def preprocess(self, images) -> np.ndarray:
        """Images → (N, 3, H, W) float32 pixel values, equal to transformers' CLIPImageProcessor."""
        return preprocess(images, self.image_config)

    @staticmethod
    def similarity(image_emb: np.ndarray, text_emb: np.ndarray) -> np.ndarray:
        """(N_img, N_txt) raw 100·cosine of normalized embeddings (CLIPScore scale, not clipped at 0)."""
        return 100.0 * np.asarray(image_emb, np.float32) @ np.asarray(text_emb, np.float32).T

    def logits_per_image(self, image_emb: np.ndarray, text_emb: np.ndarray) -> np.ndarray:
        """HF `logits_per_image`: exp(logit_scale)·cosine."""
        scale = float(np.exp(runtime.to_numpy(self.net.logit_scale).reshape(-1)[0]))
        return scale * np.asarray(image_emb, np.float32) @ np.asarray(text_emb, np.float32).T


def _in_chunks(rows: np.ndarray, size: int, fn, width: int) -> np.ndarray:
    """fn over fixed-size chunks of rows (the last padded by repeating its final row) → (N, width)."""
    outs = []
    for start in range(0, len(rows), size):
        chunk = rows[start: start + size]
        k = len(chunk)
        if k < size:
            chunk = np.concatenate([chunk, np.repeat(chunk[-1:], size - k, 0)])
        outs.append(fn(chunk)[:k])
    return np.concatenate(outs) if outs else np.zeros((0, width), np.float32)


def _l2_normalize(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def _compile(cell):
    """One compiled entry per tower (PMG_JIT=0 runs it in PyNative)."""
    def run(token_embeds, mask):
        return cell(token_embeds, mask)
    return runtime.jit(run)


def _compile_method(cell, name: str):
    method = getattr(cell, name)
    if name == "text_features":
        def run(input_ids, mask, pool):
            return method(input_ids, mask, pool)
    else:
        def run(pixels):
            return method(pixels)
    return runtime.jit(run)
