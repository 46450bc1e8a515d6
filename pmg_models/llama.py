"""Llama / Llama-2 decoder (Touvron et al., 2023) in MindSpore, loadable from Hugging Face checkpoints.

Reference: transformers `modeling_llama.py` and Meta's `llama/model.py`. Cell attributes follow the HF
checkpoint keys (`model.layers.N.self_attn.q_proj.weight`, ...), so HF safetensors load 1:1; mindformers
`.ckpt` names go through `map_mindformers_key`. Everything runs in classic `nn`/`ops` (see DESIGN §5).

Two entry points into the network:
* `LlamaModel.construct(inputs_embeds, attention_mask, position_ids, prefix_kv)`: no cache, PyNative- and
  grad-friendly; returns the final-norm hidden states (HF `last_hidden_state`). Soft prompts train here.
* `KVRunner` (generation.py drives it): static preallocated KV cache updated in place, compiled prefill
  and decode steps.
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import mindspore as ms
from mindspore import nn, ops, Parameter, Tensor
from mindspore.common.initializer import initializer

from pmg_models import checkpoint, runtime
from pmg_models.ops import (CacheAttention, CacheWrite, Linear as Dense, MaskedAttention, MatMulT, RMSNorm, Rope,
                            Softmax, SwiGLU, neg_inf)


@dataclass(frozen=True)
class LlamaConfig:
    vocab_size: int = 32000             # rows of embed_tokens / lm_head
    hidden_size: int = 4096             # model width C
    intermediate_size: int = 11008      # SwiGLU inner width
    num_hidden_layers: int = 32         # decoder blocks L
    num_attention_heads: int = 32       # query heads
    num_key_value_heads: int = 32       # key/value heads (< query heads: grouped-query attention)
    head_dim: int = 128                 # per-head width (HF default hidden/heads)
    rms_norm_eps: float = 1e-5          # RMSNorm epsilon
    rope_theta: float = 10000.0         # RoPE base
    max_position_embeddings: int = 4096  # longest sequence (prompt + generated)
    tie_word_embeddings: bool = False   # lm_head shares embed_tokens' weight
    bos_token_id: int = 1
    eos_token_id: int = 2
    pad_token_id: int | None = None     # Llama-2 has none; left padding is masked anyway

    @classmethod
    def from_hf(cls, d: dict) -> "LlamaConfig":
        """Read an HF `config.json` dict field by field; unsupported variants raise ValueError."""
        _check_supported(d)
        heads = int(d["num_attention_heads"])
        rope = d.get("rope_parameters") or {}
        eos = d.get("eos_token_id", 2)
        return cls(
            vocab_size=int(d["vocab_size"]),
            hidden_size=int(d["hidden_size"]),
            intermediate_size=int(d["intermediate_size"]),
            num_hidden_layers=int(d["num_hidden_layers"]),
            num_attention_heads=heads,
            num_key_value_heads=int(d.get("num_key_value_heads") or heads),
            head_dim=int(d.get("head_dim") or d["hidden_size"] // heads),
            rms_norm_eps=float(d.get("rms_norm_eps", 1e-6)),
            rope_theta=float(d.get("rope_theta") or rope.get("rope_theta") or 10000.0),
            max_position_embeddings=int(d.get("max_position_embeddings", 2048)),
            tie_word_embeddings=bool(d.get("tie_word_embeddings", False)),
            bos_token_id=int(d.get("bos_token_id") if d.get("bos_token_id") is not None else 1),
            eos_token_id=int(eos[0] if isinstance(eos, list) else eos if eos is not None else 2),
            pad_token_id=None if d.get("pad_token_id") is None else int(d["pad_token_id"]),
        )

    def to_hf(self) -> dict:
        """The HF `config.json` dict transformers' LlamaForCausalLM reads."""
        d = dataclasses.asdict(self)
        d.update(architectures=["LlamaForCausalLM"], model_type="llama", hidden_act="silu",
                 attention_bias=False, mlp_bias=False, rope_scaling=None, torch_dtype="float32")
        return d

    @property
    def num_parameters(self) -> int:
        c, i, v, d = self.hidden_size, self.intermediate_size, self.vocab_size, self.head_dim
        attn = c * d * (2 * self.num_attention_heads + 2 * self.num_key_value_heads)
        block = attn + 3 * c * i + 2 * c
        return self.num_hidden_layers * block + v * c * (1 if self.tie_word_embeddings else 2) + c


_REQUIRED = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads")


def _check_supported(d: dict) -> None:
    missing = [k for k in _REQUIRED if d.get(k) is None]
    if missing:
        raise ValueError(f"Llama config.json lacks {missing} (is this a Llama checkpoint?)")
    heads, kv = int(d["num_attention_heads"]), int(d.get("num_key_value_heads") or d["num_attention_heads"])
    if heads % kv:
        raise ValueError(f"num_attention_heads={heads} is not a multiple of num_key_value_heads={kv}")
    scaling = d.get("rope_scaling") or d.get("rope_parameters") or {}
    kind = scaling.get("rope_type", scaling.get("type", "default"))
    if kind not in (None, "default"):
        raise ValueError(f"rope scaling {kind!r} is not supported (only plain RoPE); remove rope_scaling or "
                         "use a checkpoint without it")
    if d.get("attention_bias") or d.get("mlp_bias"):
        raise ValueError("Llama checkpoints with attention_bias/mlp_bias are not supported")
    if d.get("hidden_act", "silu") != "silu":
        raise ValueError(f"hidden_act {d['hidden_act']!r} is not supported (Llama uses silu)")


# ----------------------------------------------------------------------------- modules

def Linear(in_features: int, out_features: int, bias: bool = False) -> Dense:
    """Bias-free dense layer, zero-initialised: weights always come from a checkpoint."""
    return Dense(in_features, out_features, bias, weight_init="zeros")


class Embedding(nn.Cell):
    """Token embedding with the HF parameter name `weight` (nn.Embedding calls it embedding_table)."""

    def __init__(self, vocab: int, dim: int):
        super().__init__()
        self.weight = Parameter(initializer("zeros", (vocab, dim), ms.float32), name="weight")

    def construct(self, ids):
        return ops.gather(self.weight, ids, 0)


def rope_tables(cfg: LlamaConfig, length: int) -> tuple[np.ndarray, np.ndarray]:
    """cos/sin of shape (length, head_dim), computed in float32 the way transformers does."""
    d = cfg.head_dim
    inv_freq = (1.0 / (cfg.rope_theta ** (np.arange(0, d, 2, dtype=np.int64).astype(np.float32) / d)))
    freqs = np.arange(length, dtype=np.float32)[:, None] * inv_freq.astype(np.float32)[None, :]
    emb = np.concatenate([freqs, freqs], -1).astype(np.float32)
    return np.cos(emb), np.sin(emb)


class LlamaAttention(nn.Cell):
    def __init__(self, cfg: LlamaConfig):
        super().__init__()
        self.n_heads, self.n_kv, self.d = cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim
        self.rep = self.n_heads // self.n_kv
        self.scale = self.d ** -0.5
        self.q_proj = Linear(cfg.hidden_size, self.n_heads * self.d, bias=False)
        self.k_proj = Linear(cfg.hidden_size, self.n_kv * self.d, bias=False)
        self.v_proj = Linear(cfg.hidden_size, self.n_kv * self.d, bias=False)
        self.o_proj = Linear(self.n_heads * self.d, cfg.hidden_size, bias=False)
        self.bmm_t = ops.BatchMatMul(transpose_b=True)
        self.bmm = ops.BatchMatMul()
        self.scatter = ops.ScatterUpdate()
        self.softmax = Softmax()
        self.cache_attention = CacheAttention()
        self.masked_attention = MaskedAttention()
        self.rope = Rope()  # HF's rotate-half form

    def _q(self, x, cos, sin):
        a, c = x.shape[0], x.shape[1]  # (B,T) or, in a prefill, token-major (T,B)
        return self.rope(self.q_proj(x).reshape(a, c, self.n_heads, self.d), cos, sin)

    def _keys_values(self, x, cos, sin):
        """Keys (rotated) and values (·,·,Hkv,D) in x's own order of its two leading axes."""
        a, c = x.shape[0], x.shape[1]
        k = self.rope(self.k_proj(x).reshape(a, c, self.n_kv, self.d), cos, sin)
        return k, self.v_proj(x).reshape(a, c, self.n_kv, self.d)

    def _kv(self, x, cos, sin):
        k, v = self._keys_values(x, cos, sin)
        return k.transpose(0, 2, 1, 3), v.transpose(0, 2, 1, 3)  # (B,Hkv,T,D)

    def _qkv(self, x, cos, sin):
        return (self._q(x, cos, sin), *self._kv(x, cos, sin))

    def _attend(self, q, k, v, mask):
        """q (B,T,H,D) against k, v (B,Hkv,S,D); mask additive (B,1,1,T,S). Query heads are grouped per
        kv head so GQA needs no repeated copy of the keys."""
        b, t = q.shape[0], q.shape[1]
        s = k.shape[2]
        q = q.reshape(b, t, self.n_kv, self.rep, self.d).transpose(0, 2, 3, 1, 4)
        q = q.reshape(b, self.n_kv, self.rep * t, self.d)
        scores = self.bmm_t(q, k).astype(ms.float32) * self.scale
        scores = scores.reshape(b, self.n_kv, self.rep, t, s) + mask
        probs = self.softmax(scores).astype(v.dtype).reshape(b, self.n_kv, self.rep * t, s)
        out = self.bmm(probs, v).reshape(b, self.n_kv, self.rep, t, self.d).transpose(0, 3, 1, 2, 4)
        return self.o_proj(out.reshape(b, t, self.n_heads * self.d))

    def construct(self, x, cos, sin, mask, prefix_k=None, prefix_v=None):
        """No-cache attention; optional prefix keys/values (B,Hkv,P,D) are prepended. Returns (out, k, v)."""
        q, k, v = self._qkv(x, cos, sin)
        keys, values = k, v
        if prefix_k is not None:
            keys, values = ops.concat([prefix_k, k], 2), ops.concat([prefix_v, v], 2)
        return self._attend(q, keys, values, mask), k, v

    def prefill(self, x, cos, sin, mask, last: bool = False):
        """A prompt pass in the token-major layout of the cache: x (T,B,C), cos/sin (T,B,1,D), mask (B,T,T).
        Returns (out, k, v) with k, v (T,B,Hkv,D) ready for the cache; with `last`, out is for the last
        position only (1,B,C), as the last layer's queries, attention and MLP are needed nowhere else."""
        t, b = x.shape[0], x.shape[1]
        k, v = self._keys_values(x, cos, sin)
        if last:
            x, cos, sin, mask = x[-1:], cos[-1:], sin[-1:], mask[:, -1:]
        q = self._q(x, cos, sin)
        if last and self.cache_attention.available:
            # one query per row against T slot-major keys: a decode step's attention (nothing to pack)
            out = self.cache_attention(q.reshape(b, self.n_kv, self.rep, self.d), k, v, mask.reshape(b, t))
        else:
            out = self.masked_attention(q, k, v, mask)
        return self.o_proj(out.reshape(x.shape[0], b, self.n_heads * self.d)), k, v

    def step(self, x, cos, sin, mask, k_cache, v_cache, slots):
        """Write this step's keys/values into the slot-major cache Parameters (S,B,Hkv,D) in place at
        `slots` (T,), then attend."""
        q, k, v = self._qkv(x, cos, sin)
        # one slot per step: ScatterUpdate is as fast as CacheWrite here (direct step timings, 128-512 slots)
        k_cache = ops.depend(k_cache, self.scatter(k_cache, slots, k.transpose(2, 0, 1, 3)))
        v_cache = ops.depend(v_cache, self.scatter(v_cache, slots, v.transpose(2, 0, 1, 3)))
        b, t = q.shape[0], q.shape[1]
        if t > 1 or not self.cache_attention.available:
            return self._attend(q, k_cache.transpose(1, 2, 0, 3), v_cache.transpose(1, 2, 0, 3), mask)
        q = q.reshape(b, self.n_kv, self.rep, self.d)  # head h = g * rep + r, as in _attend
        out = self.cache_attention(q, k_cache, v_cache, mask.reshape(b, -1))
        return self.o_proj(out.reshape(b, 1, self.n_heads * self.d))


class LlamaMLP(nn.Cell):
    def __init__(self, cfg: LlamaConfig):
        super().__init__()
        self.gate_proj = Linear(cfg.hidden_size, cfg.intermediate_size, bias=False)
        self.up_proj = Linear(cfg.hidden_size, cfg.intermediate_size, bias=False)
        self.down_proj = Linear(cfg.intermediate_size, cfg.hidden_size, bias=False)
        self.act = SwiGLU()

    def construct(self, x):
        return self.down_proj(self.act(self.gate_proj(x), self.up_proj(x)))


class LlamaDecoderLayer(nn.Cell):
    def __init__(self, cfg: LlamaConfig):
        super().__init__()
        self.self_attn = LlamaAttention(cfg)
        self.mlp = LlamaMLP(cfg)
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)

    def construct(self, h, cos, sin, mask, prefix_k=None, prefix_v=None):
        attn, k, v = self.self_attn(self.input_layernorm(h), cos, sin, mask, prefix_k, prefix_v)
        h = h + attn
        return h + self.mlp(self.post_attention_layernorm(h)), k, v

    def prefill(self, h, cos, sin, mask, last: bool = False):
        """Token-major (T,B,C) prompt pass (see LlamaAttention.prefill); returns (h, k, v)."""
        attn, k, v = self.self_attn.prefill(self.input_layernorm(h), cos, sin, mask, last)
        h = (h[-1:] if last else h) + attn
        return h + self.mlp(self.post_attention_layernorm(h)), k, v

    def step(self, h, cos, sin, mask, k_cache, v_cache, slots):
        h = h + self.self_attn.step(self.input_layernorm(h), cos, sin, mask, k_cache, v_cache, slots)
        return h + self.mlp(self.post_attention_layernorm(h))


class LlamaModel(nn.Cell):
    """Embeddings, decoder blocks and final norm (HF `model.*`)."""

    def __init__(self, cfg: LlamaConfig):
        super().__init__()
        self.cfg = cfg
        self.embed_tokens = Embedding(cfg.vocab_size, cfg.hidden_size)
        self.layers = nn.CellList([LlamaDecoderLayer(cfg) for _ in range(cfg.num_hidden_layers)])
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        cos, sin = rope_tables(cfg, cfg.max_position_embeddings)
        dtype = runtime.np_compute_dtype()  # HF casts cos/sin to the activations' dtype too
        self.cos_table, self.sin_table = Tensor(cos.astype(dtype)), Tensor(sin.astype(dtype))  # constants
        self.neg = neg_inf(runtime.compute_dtype())

    def rope(self, position_ids):
        """cos, sin of shape (B,T,1,D) for integer positions (B,T)."""
        cos = ops.gather(self.cos_table, position_ids, 0)
        sin = ops.gather(self.sin_table, position_ids, 0)
        return cos.expand_dims(2), sin.expand_dims(2)

    def construct(self, inputs_embeds, attention_mask, position_ids, prefix_kv=None):
        """Final-norm hidden states (B,T,C) without a cache; differentiable w.r.t. embeds and prefix_kv.

        Args:
            inputs_embeds: (B,T,C) token embeddings (from `embed_tokens`, possibly with soft tokens spliced in).
            attention_mask: (B,P+T) 1 = attend, 0 = padding; covers the P prefix slots first.
            position_ids: (B,T) int32 RoPE positions.
            prefix_kv: None or (L,2,B,Hkv,P,D) P-Tuning v2 keys/values prepended in every layer.
        """
        hidden, _, _ = self.forward(inputs_embeds, attention_mask, position_ids, prefix_kv)
        return hidden

    def forward(self, inputs_embeds, attention_mask, position_ids, prefix_kv=None):
        """As construct, also returning the per-layer keys/values of the T tokens (L × (B,Hkv,T,D))."""
        t = inputs_embeds.shape[1]
        p = 0 if prefix_kv is None else prefix_kv.shape[4]
        mask = self.causal_mask(attention_mask, t, p)
        cos, sin = self.rope(position_ids)
        h, ks, vs = inputs_embeds, [], []
        for i, layer in enumerate(self.layers):
            pk = None if prefix_kv is None else prefix_kv[i, 0]
            pv = None if prefix_kv is None else prefix_kv[i, 1]
            h, k, v = layer(h, cos, sin, mask, pk, pv)
            ks.append(k)
            vs.append(v)
        return self.norm(h), ks, vs

    def causal_mask(self, attention_mask, t: int, p: int = 0):
        """Additive (B,1,1,T,P+T) mask: query i sees key j iff j <= i + P and the key is not padding."""
        keys = ops.arange(p + t).reshape(1, -1)
        queries = ops.arange(t).reshape(-1, 1) + p
        allowed = ops.logical_and((keys <= queries).expand_dims(0), attention_mask.expand_dims(1) > 0)
        zeros = ops.zeros(allowed.shape, ms.float32)
        return ops.select(allowed, zeros, zeros + self.neg).expand_dims(1).expand_dims(1)


class LlamaForCausalLM(nn.Cell):
    """`model` + `lm_head` (or the embedding matrix when tied)."""

    def __init__(self, cfg: LlamaConfig):
        super().__init__()
        self.cfg = cfg
        self.model = LlamaModel(cfg)
        self.tied = cfg.tie_word_embeddings
        if not self.tied:
            self.lm_head = Linear(cfg.hidden_size, cfg.vocab_size, bias=False)
        self.matmul_t = MatMulT()

    def logits(self, hidden):
        """(..., C) → (..., V)."""
        shape = hidden.shape
        flat = hidden.reshape(-1, shape[-1])
        weight = self.model.embed_tokens.weight if self.tied else self.lm_head.weight
        return self.matmul_t(flat, weight).reshape(shape[:-1] + (self.cfg.vocab_size,))

    def construct(self, input_ids, attention_mask, position_ids):
        """Full-sequence logits (B,T,V), no cache (parity tests, scoring)."""
        hidden = self.model(self.model.embed_tokens(input_ids), attention_mask, position_ids)
        return self.logits(hidden)


class KVRunner(nn.Cell):
    """A static KV cache for one (batch, cache length) bucket plus the prefill/decode steps over it.

    The cache lives in Parameters (L × (S,B,Hkv,D) for keys and values, slot-major) written in place
    along the slot axis (a prompt's slots by `ops.CacheWrite`, a step's by ScatterUpdate), so a compiled
    step neither copies the cache nor recompiles per call. (ScatterNdUpdate on a (B,Hkv,S,D) cache copied
    all of it on every call: 8-10 ms per 67 MB cache, 16 calls per step.)
    """

    def __init__(self, lm: LlamaForCausalLM, batch: int, length: int):
        super().__init__(auto_prefix=False)  # holding `lm` must not rename its parameters
        cfg = lm.cfg
        self.lm, self.batch, self.length = lm, batch, length
        shape = (length, batch, cfg.num_key_value_heads, cfg.head_dim)
        dtype = runtime.np_compute_dtype()
        self.k_cache = ms.ParameterTuple([_cache_param(shape, dtype, f"k_cache.{batch}x{length}.{i}")
                                          for i in range(cfg.num_hidden_layers)])
        self.v_cache = ms.ParameterTuple([_cache_param(shape, dtype, f"v_cache.{batch}x{length}.{i}")
                                          for i in range(cfg.num_hidden_layers)])
        self.cache_write = CacheWrite()

    def prefill(self, input_ids, position_ids, mask, slots):
        """Run the prompt (B,T) and fill cache slots [0,T); returns last-position logits (B,V).

        `mask` is (B,1,1,T,T) additive; `slots` (T,) are the cache slots written. The pass runs token-major
        (T,B,C): the keys/values come out in the slot-major cache's order, so they are written untransposed.
        """
        model = self.lm.model
        t = input_ids.shape[1]
        cos, sin = model.rope(position_ids.transpose(1, 0))
        h = model.embed_tokens(input_ids.transpose(1, 0))
        mask = mask.reshape(mask.shape[0], t, t)
        last = len(model.layers) - 1
        for i, layer in enumerate(model.layers):
            # only the last position's logits are returned: the last layer needs every position's keys
            # and values (for the cache) but queries, attention output and MLP for one position only
            h, k, v = layer.prefill(h, cos, sin, mask, i == last)
            h = ops.depend(h, self.cache_write(self.k_cache[i], slots, k))
            h = ops.depend(h, self.cache_write(self.v_cache[i], slots, v))
        return self.lm.logits(model.norm(h[-1]))

    def decode(self, input_ids, position_ids, mask, slots):
        """One step for tokens (B,1) at cache slot `slots` (1,); mask (B,1,1,1,S). Returns logits (B,V)."""
        model = self.lm.model
        cos, sin = model.rope(position_ids)
        h = model.embed_tokens(input_ids)
        for i, layer in enumerate(model.layers):
            h = layer.step(h, cos, sin, mask, self.k_cache[i], self.v_cache[i], slots)
        return self.lm.logits(model.norm(h[:, -1]))


def _cache_param(shape, dtype, name: str) -> Parameter:
    return Parameter(Tensor(np.zeros(shape, dtype)), name=name, requires_grad=False)


# ----------------------------------------------------------------------------- loading

def map_hf_key(name: str, cfg: LlamaConfig) -> str | None:
    """HF checkpoint name → parameter name (identical), ignoring the tied lm_head copy and rotary buffers."""
    if cfg.tie_word_embeddings and name == "lm_head.weight":
        return None
    if name.endswith("rotary_emb.inv_freq"):
        return None
    return name


_MINDFORMERS = (
    ("tok_embeddings.embedding_weight", "embed_tokens.weight"),
    (".attention.wq.", ".self_attn.q_proj."), (".attention.wk.", ".self_attn.k_proj."),
    (".attention.wv.", ".self_attn.v_proj."), (".attention.wo.", ".self_attn.o_proj."),
    (".feed_forward.w1.", ".mlp.gate_proj."), (".feed_forward.w2.", ".mlp.down_proj."),
    (".feed_forward.w3.", ".mlp.up_proj."),
    (".attention_norm.", ".input_layernorm."), (".ffn_norm.", ".post_attention_layernorm."),
    ("norm_out.", "norm."),
)


def map_mindformers_key(name: str) -> str:
    """mindformers Llama-2 `.ckpt` name → HF name (`model.tok_embeddings.embedding_weight` → `model.embed_tokens.weight`)."""
    for old, new in _MINDFORMERS:
        name = name.replace(old, new)
    if not name.startswith(("model.", "lm_head.")):
        name = "model." + name
    return name


def build(cfg: LlamaConfig) -> LlamaForCausalLM:
    """An uninitialised (zero) model in the compute dtype."""
    runtime.setup()
    net = LlamaForCausalLM(cfg)
    net.set_train(False)
    dtype = runtime.compute_dtype()
    if dtype != ms.float32:
        for p in net.get_parameters():
            p.set_dtype(dtype)
    return net


def read_config(directory: Path) -> LlamaConfig:
    path = Path(directory) / "config.json"
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist (expected an HF Llama checkpoint directory)")
    return LlamaConfig.from_hf(json.loads(path.read_text()))


def load_weights(net: LlamaForCausalLM, directory: Path) -> None:
    """Strictly load HF safetensors (single or sharded) or a mindformers `.ckpt` into `net`."""
    directory = Path(directory)
    ckpts = sorted(directory.glob("*.ckpt"))
    has_st = (directory / "model.safetensors").exists() or (directory / "model.safetensors.index.json").exists()
    if ckpts and not has_st:
        return load_mindformers_ckpt(net, ckpts[0])
    files = checkpoint.weight_files(directory)
    checkpoint.load_into(net, files, lambda k: map_hf_key(k, net.cfg), runtime.np_compute_dtype())


def load_mindformers_ckpt(net: LlamaForCausalLM, path: Path) -> None:
    """Load a mindformers Llama-2 `.ckpt` through `map_mindformers_key` (strict, names in errors)."""
    params = ms.load_checkpoint(str(path))
    dtype = runtime.np_compute_dtype()

    def arrays():
        for name, p in params.items():
            arr = p.asnumpy()
            yield name, arr.astype(dtype) if np.issubdtype(arr.dtype, np.floating) else arr

    def key(name):
        mapped = map_mindformers_key(name)
        return map_hf_key(mapped, net.cfg)

    checkpoint.assign_strict(net, arrays(), key, source=str(path))


def load(path) -> "LlamaLM":
    """Load an HF Llama directory (config.json, safetensors or mindformers .ckpt, tokenizer) as a `LlamaLM`."""
    from pmg_models.generation import LlamaLM

    return LlamaLM.from_pretrained(path)


TINY = LlamaConfig(vocab_size=512, hidden_size=64, intermediate_size=172, num_hidden_layers=2,
                   num_attention_heads=4, num_key_value_heads=2, head_dim=16, rms_norm_eps=1e-5,
                   max_position_embeddings=512)


def init_tiny(directory: Path, seed: int = 0, init_std: float = 0.08, vocab_size: int = 512, **overrides) -> Path:
    """Write a seeded tiny random Llama in the HF layout (transformers loads it); returns `directory`.

    The tokenizer is a sentencepiece BPE trained now on MovieLens-/prompt-style text; `overrides` replace
    LlamaConfig fields. No torch: tensors are written with NumPy + safetensors.
    """
    from pmg_models import tiny_text, tokenizers

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tokenizers.train_llama_sentencepiece(tiny_text.corpus(seed=seed), directory / "tokenizer.model",
                                                   vocab_size)
    vocab = tokenizers.LlamaTokenizer.from_dir(directory).vocab_size
    cfg = dataclasses.replace(TINY, **{"vocab_size": vocab, **overrides})
    rng = runtime.host_rng(seed)
    tensors = {}
    for name, shape in sorted(build_shapes(cfg).items()):
        if name.endswith("layernorm.weight") or name == "model.norm.weight":
            tensors[name] = np.ones(shape, np.float32)
        else:
            tensors[name] = (rng.standard_normal(shape, dtype=np.float32) * init_std).astype(np.float32)
    checkpoint.save_safetensors(directory / "model.safetensors", tensors, metadata={"format": "pt"})
    _write_json(directory / "config.json", cfg.to_hf())
    _write_json(directory / "generation_config.json",
                {"bos_token_id": cfg.bos_token_id, "eos_token_id": cfg.eos_token_id, "do_sample": False})
    _write_json(directory / "special_tokens_map.json",
                {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"})
    _write_json(directory / "tokenizer_config.json",
                {"tokenizer_class": "LlamaTokenizer", "bos_token": "<s>", "eos_token": "</s>",
                 "unk_token": "<unk>", "pad_token": None, "add_bos_token": True, "add_eos_token": False,
                 "legacy": True, "model_max_length": cfg.max_position_embeddings})
    return directory


def build_shapes(cfg: LlamaConfig) -> dict[str, tuple[int, ...]]:
    """HF tensor names and shapes of a checkpoint for `cfg` (no MindSpore needed)."""
    c, i, d = cfg.hidden_size, cfg.intermediate_size, cfg.head_dim
    q, kv = cfg.num_attention_heads * d, cfg.num_key_value_heads * d
    shapes = {"model.embed_tokens.weight": (cfg.vocab_size, c), "model.norm.weight": (c,)}
    if not cfg.tie_word_embeddings:
        shapes["lm_head.weight"] = (cfg.vocab_size, c)
    for n in range(cfg.num_hidden_layers):
        pre = f"model.layers.{n}."
        shapes.update({
            pre + "self_attn.q_proj.weight": (q, c), pre + "self_attn.k_proj.weight": (kv, c),
            pre + "self_attn.v_proj.weight": (kv, c), pre + "self_attn.o_proj.weight": (c, q),
            pre + "mlp.gate_proj.weight": (i, c), pre + "mlp.up_proj.weight": (i, c),
            pre + "mlp.down_proj.weight": (c, i),
            pre + "input_layernorm.weight": (c,), pre + "post_attention_layernorm.weight": (c,)})
    return shapes


def _write_json(path: Path, obj) -> None:
    path.write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n")
