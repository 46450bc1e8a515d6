"""PMG soft preference embeddings: P-Tuning v2 prefix + M multimodal tokens + a linear map to SD's text width.

Design of the original `soft_prompt.py` (Shen et al., WWW'24; never run there), made to work:
* prefix: an embedding table [P, L·2·Hkv·D] (P-Tuning v2 without projection, Liu et al. 2022) reshaped
  into P learned keys and values for every layer, prepended in attention (`LlamaModel(prefix_kv=...)`);
* tokens: M learned input embeddings [M, C] placed right after the soft-prompt text (right padding
  follows), so causal attention lets them read the whole history description;
* read-out: the LLM's final-norm hidden states at those M positions → mapping Linear(C → D), D = the SD
  text encoder's width (768 for SD 1.x, 1024 for SD 2.x; the original hard-coded 768).
The LLM stays frozen: only this Cell's parameters are trained. They are kept in float32 (master
weights) and cast to the compute dtype on the way into the LLM. Saved as a small safetensors file whose
metadata holds the config and the fingerprints of the LLM and SD it was trained for.
"""
from __future__ import annotations

import dataclasses
import functools
import json
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple, Sequence

import numpy as np
import mindspore as ms
from mindspore import nn, ops, Parameter, Tensor

from pmg_models import checkpoint, runtime
from pmg_models.generation import batch_bucket, length_bucket, soft_token_onehot, splice_embeddings
from pmg_models.llama import LlamaConfig
from pmg_models.ops import Linear

FORMAT = "pmg-soft-prompt"
FORMAT_VERSION = "1"


@dataclass(frozen=True)
class SoftPromptConfig:
    n_prefix: int = 4            # P: P-Tuning v2 prefix length (learned keys/values per layer)
    n_tokens: int = 4            # M: multimodal tokens = soft embeddings per user
    num_layers: int = 32         # L of the LLM
    num_kv_heads: int = 32       # key/value heads of the LLM
    head_dim: int = 128          # per-head width of the LLM
    hidden_size: int = 4096      # LLM width C (multimodal tokens live here)
    sd_width: int = 1024         # D: SD text-encoder width (768 SD 1.x, 1024 SD 2.x)
    llm_fingerprint: str = ""    # checkpoint.fingerprint of the LLM trained against
    sd_fingerprint: str = ""     # checkpoint.fingerprint of the SD checkpoint trained against
    prompt_version: str = ""     # version of the soft-prompt text template used in training

    def __post_init__(self):
        if self.n_prefix < 1 or self.n_tokens < 1:
            raise ValueError(f"soft prompt: the prefix length P (--n-prefix) and the multimodal tokens M (--n-tokens)"
                             f" must be at least 1, got P={self.n_prefix}, M={self.n_tokens}")

    @classmethod
    def for_models(cls, llm: LlamaConfig, sd_width: int, llm_fingerprint: str = "", sd_fingerprint: str = "",
                   n_prefix: int = 4, n_tokens: int = 4, prompt_version: str = "") -> "SoftPromptConfig":
        """The config fitting a loaded LLM and an SD text encoder of width `sd_width`."""
        return cls(n_prefix, n_tokens, llm.num_hidden_layers, llm.num_key_value_heads, llm.head_dim,
                   llm.hidden_size, int(sd_width), llm_fingerprint, sd_fingerprint, prompt_version)

    @classmethod
    def from_dict(cls, d: dict) -> "SoftPromptConfig":
        """Field by field; unknown or missing fields are an error naming them."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown, missing = sorted(set(d) - names), sorted(names - set(d))
        if unknown or missing:
            raise checkpoint.CheckpointError(f"soft-prompt config has unknown fields {unknown} / lacks {missing}")
        ints = {f.name for f in dataclasses.fields(cls) if f.type in ("int", int)}
        return cls(**{k: int(v) if k in ints else str(v) for k, v in d.items()})

    @property
    def prefix_width(self) -> int:
        """Row width of the prefix table: keys and values of every layer, L·2·Hkv·D."""
        return self.num_layers * 2 * self.num_kv_heads * self.head_dim

    @property
    def num_parameters(self) -> int:
        return (self.n_prefix * self.prefix_width + self.n_tokens * self.hidden_size
                + self.hidden_size * self.sd_width + self.sd_width)


class SoftInputs(NamedTuple):
    """Host arrays for one batch: ids (B,T) int32, mask (B,T) int32, positions (B,M) of the soft tokens."""
    input_ids: np.ndarray
    attention_mask: np.ndarray
    positions: np.ndarray


def _normal(rng: np.random.Generator, shape: tuple, std: float) -> Tensor:
    return Tensor(rng.standard_normal(shape, dtype=np.float32) * np.float32(std))


class SoftPrompt(nn.Cell):
    """Trainable part: `prefix` [P, L·2·Hkv·D], `tokens` [M, C], `mapping` Linear(C → D)."""

    def __init__(self, cfg: SoftPromptConfig, seed: int = 0, init_std: float = 0.02):
        super().__init__()
        self.cfg = cfg
        rng = runtime.host_rng(seed)
        self.prefix = Parameter(_normal(rng, (cfg.n_prefix, cfg.prefix_width), init_std), name="prefix")
        self.tokens = Parameter(_normal(rng, (cfg.n_tokens, cfg.hidden_size), init_std), name="tokens")
        self.mapping = Linear(cfg.hidden_size, cfg.sd_width)
        # torch's Linear init, drawn on the host so one seed gives the same start everywhere.
        bound = cfg.hidden_size ** -0.5
        self.mapping.weight.set_data(Tensor(rng.uniform(-bound, bound, (cfg.sd_width, cfg.hidden_size)).astype(np.float32)))
        self.mapping.bias.set_data(Tensor(np.zeros(cfg.sd_width, np.float32)))
        self.compute_dtype = runtime.compute_dtype()

    def prefix_kv(self, batch: int):
        """(L,2,B,Hkv,P,D) keys/values for `LlamaModel(prefix_kv=...)`."""
        c = self.cfg
        p = self.prefix.astype(self.compute_dtype).reshape(c.n_prefix, c.num_layers, 2, c.num_kv_heads, c.head_dim)
        p = p.transpose(1, 2, 3, 0, 4)  # (L,2,Hkv,P,D)
        return ops.broadcast_to(p.expand_dims(2), (c.num_layers, 2, batch, c.num_kv_heads, c.n_prefix, c.head_dim))

    def token_vectors(self, batch: int):
        """(B,M,C) multimodal token embeddings."""
        t = self.tokens.astype(self.compute_dtype).expand_dims(0)
        return ops.broadcast_to(t, (batch, self.cfg.n_tokens, self.cfg.hidden_size))

    def read_out(self, hidden, onehot):
        """Hidden states (B,T,C) at the soft positions (onehot (B,T,M)) → (B,M,D) in float32."""
        picked = ops.bmm(onehot.astype(hidden.dtype).transpose(0, 2, 1), hidden).astype(ms.float32)  # (B,M,C)
        b = picked.shape[0]
        out = self.mapping(picked.reshape(b * self.cfg.n_tokens, self.cfg.hidden_size))
        return out.reshape(b, self.cfg.n_tokens, self.cfg.sd_width)


class SoftPromptEncoder(nn.Cell):
    """Frozen LlamaModel + SoftPrompt: (ids, mask, positions, onehot) → soft embeddings (B,M,D).

    Differentiable w.r.t. `soft` (train with `soft.trainable_params()`; the LLM's parameters are in
    this Cell too, so never hand `encoder.trainable_params()` to an optimizer).
    """

    def __init__(self, soft: SoftPrompt, model):
        # auto_prefix=False: wrapping must not rename the children's parameters ("prefix" would become
        # "soft.prefix"), or saving and strict loading would no longer agree on names.
        super().__init__(auto_prefix=False)
        self.soft, self.model = soft, model

    def construct(self, input_ids, attention_mask, position_ids, onehot):
        b = input_ids.shape[0]
        embeds = ops.stop_gradient(self.model.embed_tokens(input_ids))
        embeds = splice_embeddings(embeds, onehot, self.soft.token_vectors(b))
        hidden = self.model(embeds, attention_mask, position_ids, self.soft.prefix_kv(b))
        return self.soft.read_out(hidden, onehot)


def prepare_inputs(tokenizer, texts: Sequence[str], n_tokens: int, max_length: int | None = None) -> SoftInputs:
    """Tokenize soft-prompt texts (BOS + text), append M placeholder ids, right-pad to a length bucket."""
    rows = [tokenizer.encode(t, bos=True) for t in texts]
    longest = max(len(r) for r in rows) + n_tokens
    if max_length is not None and longest > max_length:
        raise ValueError(f"a soft-prompt text has {longest - n_tokens} tokens; with {n_tokens} soft tokens it "
                         f"exceeds the LLM's {max_length} positions (shorten the history)")
    t = length_bucket(longest) if max_length is None else min(length_bucket(longest), max_length)
    ids = np.full((len(rows), t), tokenizer.pad_id, np.int32)
    mask = np.zeros((len(rows), t), np.int32)
    positions = np.zeros((len(rows), n_tokens), np.int64)
    for i, r in enumerate(rows):
        ids[i, :len(r)] = r
        mask[i, :len(r) + n_tokens] = 1
        positions[i] = np.arange(len(r), len(r) + n_tokens)
    return SoftInputs(ids, mask, positions)


def model_inputs(inputs: SoftInputs, n_prefix: int) -> tuple:
    """Tensors (ids, mask (B,P+T), position ids starting at P, onehot (B,T,M)) for SoftPromptEncoder."""
    ids, mask = inputs.input_ids, inputs.attention_mask
    pos = np.clip(np.cumsum(mask, -1) - 1, 0, None) + n_prefix
    full = np.concatenate([np.ones((ids.shape[0], n_prefix), np.int32), mask], 1)
    onehot = soft_token_onehot(inputs.positions, ids.shape[1])
    return (runtime.to_tensor(ids), runtime.to_tensor(full), runtime.to_tensor(pos.astype(np.int32)),
            runtime.to_tensor(onehot, runtime.compute_dtype()))


def _encode(self, input_ids, attention_mask, position_ids, onehot):
    return self(input_ids, attention_mask, position_ids, onehot)


@functools.cache
def _compiled_encode():
    return runtime.jit(_encode)  # one compiled function per process: shapes are bucketed, so it is reused


def check_compatible(cfg: SoftPromptConfig, llm: LlamaConfig) -> None:
    """Raise CheckpointError if the soft prompt's LLM dimensions differ from `llm`'s."""
    want = (cfg.num_layers, cfg.num_kv_heads, cfg.head_dim, cfg.hidden_size)
    have = (llm.num_hidden_layers, llm.num_key_value_heads, llm.head_dim, llm.hidden_size)
    if want != have:
        raise checkpoint.CheckpointError(f"soft prompt was built for an LLM with (layers, kv heads, head dim, width) "
                                         f"{want}, the loaded LLM has {have}")


def embed(soft: SoftPrompt, lm, texts: Sequence[str], batch_size: int = 8) -> np.ndarray:
    """Soft embeddings [B, M, D] of soft-prompt texts (tasks.pmg.prompts.build_soft_prompt) with a loaded LlamaLM."""
    check_compatible(soft.cfg, lm.config)
    encoder = SoftPromptEncoder(soft, lm.net.model)
    encoder.set_train(False)
    run = _compiled_encode()
    out = []
    for start in range(0, len(texts), batch_size):
        chunk = list(texts[start:start + batch_size])
        # Pad the batch to a power of two (repeating the last text) so compiled shapes are reused.
        padded = chunk + chunk[-1:] * (batch_bucket(len(chunk), batch_size) - len(chunk))
        inputs = prepare_inputs(lm.tokenizer, padded, soft.cfg.n_tokens,
                                lm.config.max_position_embeddings - soft.cfg.n_prefix)
        result = run(encoder, *model_inputs(inputs, soft.cfg.n_prefix))
        out.append(runtime.to_numpy(result)[:len(chunk)])
    if not out:
        return np.zeros((0, soft.cfg.n_tokens, soft.cfg.sd_width), np.float32)
    return np.concatenate(out, 0).astype(np.float32)


def save(soft: SoftPrompt, path: Path) -> Path:
    """Write the soft prompt (float32 tensors, config + fingerprints in the metadata) atomically."""
    tensors = {p.name: p.asnumpy().astype(np.float32) for p in soft.get_parameters()}
    meta = {"format": FORMAT, "format_version": FORMAT_VERSION,
            "config": json.dumps(dataclasses.asdict(soft.cfg), sort_keys=True)}
    checkpoint.save_safetensors(Path(path), tensors, meta)
    return Path(path)


def read_config(path: Path) -> SoftPromptConfig:
    """The config stored in a soft-prompt file; CheckpointError if it is not one."""
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"soft prompt {path} does not exist")
    try:
        with safe_open(str(path), framework="numpy") as f:
            meta = f.metadata() or {}
    except Exception as e:  # safetensors raises its own error types for corrupt files
        raise checkpoint.CheckpointError(f"{path} is not a readable safetensors file: {e}") from None
    if meta.get("format") != FORMAT or "config" not in meta:
        raise checkpoint.CheckpointError(f"{path} is not a PMG soft-prompt file (metadata format {meta.get('format')!r})")
    if meta.get("format_version") != FORMAT_VERSION:
        raise checkpoint.CheckpointError(f"{path} has soft-prompt format version {meta.get('format_version')!r}; "
                                         f"this code reads version {FORMAT_VERSION}")
    try:
        return SoftPromptConfig.from_dict(json.loads(meta["config"]))
    except (json.JSONDecodeError, TypeError, ValueError) as e:
        raise checkpoint.CheckpointError(f"{path} has an unreadable soft-prompt config: {e}") from None


def check_trained_for(path: Path, llm_fingerprint: str | None = None,
                      sd_fingerprint: str | None = None) -> SoftPromptConfig:
    """The file's config, if it was trained for these checkpoints (None: not checked)."""
    cfg = read_config(path)
    for what, want, have in (("LLM", llm_fingerprint, cfg.llm_fingerprint), ("SD", sd_fingerprint, cfg.sd_fingerprint)):
        if want is not None and want != have:
            raise checkpoint.CheckpointError(
                f"soft prompt {path} was trained for the {what} checkpoint with fingerprint {have or '(none)'}, "
                f"not for the loaded one ({want}); train a soft prompt for these models")
    return cfg


def load(path: Path, llm_fingerprint: str | None = None, sd_fingerprint: str | None = None,
         llm: LlamaConfig | None = None, sd_width: int | None = None) -> SoftPrompt:
    """Load a soft prompt, strictly; every given expectation (fingerprints, LLM dims, SD width) must match."""
    cfg = check_trained_for(path, llm_fingerprint, sd_fingerprint)
    if llm is not None:
        check_compatible(cfg, llm)
    if sd_width is not None and sd_width != cfg.sd_width:
        raise checkpoint.CheckpointError(f"soft prompt {path} maps to width {cfg.sd_width}, the SD text encoder "
                                         f"has width {sd_width}")
    soft = SoftPrompt(cfg)
    checkpoint.load_into(soft, [Path(path)], dtype=np.float32)
    return soft
