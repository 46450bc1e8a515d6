"""Batched generation for Llama: left padding, bucketed static shapes, compiled prefill/decode, host sampling.

Shapes are static so each step compiles once: batch is padded to a power of two (≤ `max_batch`),
prompts to a length bucket, and the KV cache (a `KVRunner`) to a power of two ≥ prompt + new tokens.
Sampling runs on the host in NumPy with one generator per row seeded from `seed` alone, so a row's
output depends on its prompt and seed, not on what else is in the batch.
"""
from __future__ import annotations

import logging
from collections import OrderedDict
from pathlib import Path
from typing import Sequence

import numpy as np
import mindspore as ms

from pmg_models import checkpoint, info, llama, runtime
from pmg_models.tokenizers import LlamaTokenizer

LENGTH_BUCKETS = (16, 32, 64, 128, 192, 256, 384, 512, 768, 1024, 1536, 2048, 3072, 4096)
# Cached (batch, cache length) buckets, each with its own KV cache and compiled steps. Evicting one does
# not give its memory back: MindSpore keeps a compiled graph's memory after the Cell is gone, so a run
# that cycled through more buckets than this grew by ~300 MB per recompile (tiny Llama, 2.10). Few,
# coarse buckets (powers of two) and no eviction in practice keep memory flat.
MAX_RUNNERS = 8
MIN_CACHE = 64
log = logging.getLogger(__name__)


def length_bucket(n: int) -> int:
    """Smallest prompt-length bucket ≥ n (multiples of 1024 beyond the table)."""
    for b in LENGTH_BUCKETS:
        if n <= b:
            return b
    return -(-n // 1024) * 1024


def cache_bucket(need: int, max_positions: int) -> int:
    """KV-cache slots for `need` slots (bucketed prompt + new tokens): the next power of two ≥ need (at
    least MIN_CACHE), capped at the model's positions, but never fewer than `need` (multiples of 32)."""
    b = MIN_CACHE
    while b < need:
        b *= 2
    return max(-(-need // 32) * 32, min(b, -(-max_positions // 32) * 32))


def batch_bucket(n: int, max_batch: int) -> int:
    """Next power of two ≥ n, capped at max_batch."""
    b = 1
    while b < n:
        b *= 2
    return min(b, max_batch)


class _Prefill(ms.nn.Cell):
    # Jitting a Cell that holds the runner compiles once; passing the runner as an argument recompiles per call.
    def __init__(self, runner: llama.KVRunner):
        super().__init__(auto_prefix=False)
        self.runner = runner

    def construct(self, input_ids, position_ids, mask, slots):
        return self.runner.prefill(input_ids, position_ids, mask, slots)


class _Decode(_Prefill):
    def construct(self, input_ids, position_ids, mask, slots):
        return self.runner.decode(input_ids, position_ids, mask, slots)


class LlamaLM:
    """A loaded Llama: `generate`, `hidden_states`, `logits`, plus `config`, `tokenizer`, `fingerprint`, `net`."""

    def __init__(self, net: llama.LlamaForCausalLM, tokenizer: LlamaTokenizer, fingerprint: str = "",
                 path: Path | None = None, max_batch: int = 32):
        self.net, self.tokenizer, self.fingerprint, self.path = net, tokenizer, fingerprint, path
        self.config: llama.LlamaConfig = net.cfg
        self.max_batch = max_batch
        self._runners: OrderedDict[tuple[int, int], tuple] = OrderedDict()

    @classmethod
    def from_pretrained(cls, path, max_batch: int = 32) -> "LlamaLM":
        """Load config, weights (strict) and tokenizer from an HF Llama directory."""
        path = Path(path)
        if not path.is_dir():
            raise FileNotFoundError(f"{path} is not a directory (expected an HF Llama checkpoint directory)")
        cfg = llama.read_config(path)
        runtime.check_host_memory({f"Llama {path.name}": info.parameters(path)})
        net = llama.build(cfg)
        llama.load_weights(net, path)
        tokenizer = LlamaTokenizer.from_dir(path, pad_id=cfg.pad_token_id)
        return cls(net, tokenizer, checkpoint.fingerprint(path), path, max_batch)

    # ------------------------------------------------------------------ hooks for the PMG method

    def embed(self, input_ids) -> ms.Tensor:
        """Token embeddings (B,T,C) as a Tensor (start of the differentiable path)."""
        return self.net.model.embed_tokens(runtime.to_tensor(np.asarray(input_ids, np.int32)))

    def model_inputs(self, input_ids: np.ndarray, attention_mask=None, prefix_len: int = 0):
        """(attention_mask (B,P+T) Tensor, position_ids (B,T) Tensor) for `LlamaModel.construct`.

        Positions count real tokens (left or right padding both work) and start at P, as HF does
        when P prefix keys/values are passed as past_key_values.
        """
        ids = np.asarray(input_ids)
        mask = np.ones(ids.shape, np.int32) if attention_mask is None else np.asarray(attention_mask, np.int32)
        pos = np.clip(np.cumsum(mask, -1) - 1, 0, None) + prefix_len
        full = np.concatenate([np.ones((ids.shape[0], prefix_len), np.int32), mask], 1)
        return runtime.to_tensor(full), runtime.to_tensor(pos.astype(np.int32))

    def hidden_states(self, input_ids, attention_mask=None, *, inputs_embeds_override=None, prefix_kv=None,
                      positions=None) -> np.ndarray:
        """Final-layer hidden states after the final norm (HF `last_hidden_state`).

        Args:
            input_ids: (B,T) ints; attention_mask: (B,T) 1/0 (None = all ones).
            inputs_embeds_override: None or (positions (B,M) ints, vectors (B,M,C)): soft tokens that
                replace the embeddings at those positions.
            prefix_kv: None or (L,2,B,Hkv,P,D) P-Tuning v2 keys/values (array or Tensor), seen by every layer.
            positions: None (all, (B,T,C)) or (B,K) ints → (B,K,C).
        For gradients use `self.net.model` (a LlamaModel Cell) with `embed`, `splice_embeddings` and
        `model_inputs` inside `mindspore.value_and_grad`; this method is the no-grad convenience.
        """
        ids = np.asarray(input_ids, np.int32)
        p = 0 if prefix_kv is None else int(prefix_kv.shape[4])
        mask, pos = self.model_inputs(ids, attention_mask, p)
        embeds = self.embed(ids)
        if inputs_embeds_override is not None:
            where, vectors = inputs_embeds_override
            onehot = runtime.to_tensor(soft_token_onehot(np.asarray(where), ids.shape[1]))
            embeds = splice_embeddings(embeds, onehot, _as_tensor(vectors))
        kv = None if prefix_kv is None else _as_tensor(prefix_kv)
        hidden = runtime.to_numpy(self.net.model(embeds, mask, pos, kv))
        if positions is None:
            return hidden
        return np.take_along_axis(hidden, np.asarray(positions)[..., None], 1)

    def logits(self, input_ids, attention_mask=None) -> np.ndarray:
        """Full-sequence logits (B,T,V) without a cache."""
        ids = np.asarray(input_ids, np.int32)
        mask, pos = self.model_inputs(ids, attention_mask)
        return runtime.to_numpy(self.net(runtime.to_tensor(ids), mask, pos))

    # ------------------------------------------------------------------ generation

    def generate(self, prompts: Sequence[str], max_new_tokens: int = 100, temperature: float = 0.0,
                 top_k: int = 0, top_p: float = 1.0, repetition_penalty: float = 1.0,
                 stop: Sequence[str] = ("</s>",), seed: int | Sequence[int] = 0) -> list[str]:
        """Continuations of `prompts` (text only). Greedy when temperature == 0.

        `seed` is one int (every row uses it) or one per prompt. Rows stop at EOS, at a stop string
        (the text is cut before it) or after max_new_tokens.
        """
        ids = [self.tokenizer.encode(p, bos=True) for p in prompts]
        seeds = [int(seed)] * len(ids) if np.isscalar(seed) else [int(s) for s in seed]
        if len(seeds) != len(ids):
            raise ValueError(f"got {len(seeds)} seeds for {len(ids)} prompts")
        sampling = Sampling(temperature, top_k, top_p, repetition_penalty)
        out = []
        for i in range(0, len(ids), self.max_batch):
            tokens = self.generate_ids(ids[i:i + self.max_batch], max_new_tokens, sampling,
                                       seeds[i:i + self.max_batch], stop)
            out += [self._finish_text(t, stop) for t in tokens]
        return out

    def generate_ids(self, prompts: list[list[int]], max_new_tokens: int, sampling: "Sampling",
                     seeds: list[int], stop: Sequence[str] = ()) -> list[list[int]]:
        """Generated token ids per prompt (EOS excluded), one batch of ≤ max_batch prompts."""
        n = len(prompts)
        if n == 0 or max_new_tokens <= 0:
            return [[] for _ in prompts]
        longest = max(len(p) for p in prompts)
        if longest + max_new_tokens > self.config.max_position_embeddings:
            raise ValueError(f"prompt of {longest} tokens + {max_new_tokens} new tokens exceeds the model's "
                             f"max_position_embeddings={self.config.max_position_embeddings}")
        b, t = batch_bucket(n, self.max_batch), length_bucket(longest)
        cache, prefill, decode = self.runner(b, cache_bucket(t + max_new_tokens, self.config.max_position_embeddings))
        rows = prompts + [[self.tokenizer.bos_id]] * (b - n)
        tokens, real = _left_pad(rows, t, self.tokenizer.pad_id, cache.length)
        rngs = [runtime.host_rng(s) for s in seeds]
        history = [list(p) for p in prompts]
        generated: list[list[int]] = [[] for _ in range(n)]
        done = np.zeros(n, bool)
        logits = self._run_prefill(prefill, tokens, real)
        pos = real[:, :t].sum(1).astype(np.int32) - 1
        for step in range(max_new_tokens):
            nxt = sampling.choose(logits[:n], history, rngs)
            for r in np.flatnonzero(~done):
                tok = int(nxt[r])
                if tok == self.tokenizer.eos_id:
                    done[r] = True
                    continue
                generated[r].append(tok)
                history[r].append(tok)
                done[r] = self._hit_stop(generated[r], stop)
            if done.all() or step == max_new_tokens - 1:
                break
            feed = np.full(b, self.tokenizer.pad_id, np.int32)
            feed[:n] = nxt
            slot = t + step
            real[:, slot] = 1
            pos = pos + 1
            logits = self._run_decode(decode, feed, pos, real, slot)
        return generated

    def runner(self, batch: int, length: int) -> tuple[llama.KVRunner, object, object]:
        """(KV cache, prefill step, decode step) for one (batch, cache length) bucket; LRU-evicted past MAX_RUNNERS.

        The steps are compiled (once per bucket) when runtime.jit_enabled().
        """
        key = (batch, length)
        if key in self._runners:
            self._runners.move_to_end(key)
        else:
            log.info("llama: new shape bucket batch=%d cache=%d (its first prefill/decode compile)", batch, length)
            cache = llama.KVRunner(self.net, batch, length)
            self._runners[key] = (cache, runtime.jit(_Prefill(cache)), runtime.jit(_Decode(cache)))
            while len(self._runners) > MAX_RUNNERS:
                evicted, _ = self._runners.popitem(last=False)
                log.warning("llama: more than %d shape buckets; dropping batch=%d cache=%d (its compiled memory "
                            "is not returned, and it recompiles if needed again)", MAX_RUNNERS, *evicted)
        return self._runners[key]

    def _run_prefill(self, step, tokens: np.ndarray, real: np.ndarray) -> np.ndarray:
        b, t = tokens.shape
        pos = np.clip(np.cumsum(real[:, :t], 1) - 1, 0, None).astype(np.int32)
        allowed = np.tril(np.ones((t, t), bool))[None] & (real[:, None, :t] > 0)
        mask = np.where(allowed, 0.0, llama.neg_inf(runtime.compute_dtype())).astype(np.float32)
        out = step(runtime.to_tensor(tokens), runtime.to_tensor(pos), runtime.to_tensor(mask[:, None, None]),
                   runtime.to_tensor(np.arange(t, dtype=np.int32)))
        return runtime.to_numpy(out)

    def _run_decode(self, step, feed: np.ndarray, pos: np.ndarray, real: np.ndarray, slot: int) -> np.ndarray:
        mask = np.where(real > 0, 0.0, llama.neg_inf(runtime.compute_dtype())).astype(np.float32)
        out = step(runtime.to_tensor(feed[:, None]), runtime.to_tensor(pos[:, None]),
                   runtime.to_tensor(mask[:, None, None, None]), runtime.to_tensor(np.array([slot], np.int32)))
        return runtime.to_numpy(out)

    def _hit_stop(self, generated: list[int], stop: Sequence[str]) -> bool:
        texts = [s for s in stop if s and s != "</s>"]
        if not texts:
            return False
        text = self.tokenizer.decode(generated)
        return any(s in text for s in texts)

    def _finish_text(self, ids: list[int], stop: Sequence[str]) -> str:
        text = self.tokenizer.decode(ids)
        cuts = [text.find(s) for s in stop if s and s in text]
        return text[:min(cuts)] if cuts else text


class Sampling:
    """Logit processing in HF's order (repetition penalty → temperature → top-k → top-p), then a draw."""

    def __init__(self, temperature: float = 0.0, top_k: int = 0, top_p: float = 1.0, repetition_penalty: float = 1.0):
        if temperature < 0 or not 0 < top_p <= 1 or top_k < 0 or repetition_penalty <= 0:
            raise ValueError(f"invalid sampling parameters: temperature={temperature}, top_k={top_k}, "
                             f"top_p={top_p}, repetition_penalty={repetition_penalty}")
        self.temperature, self.top_k, self.top_p, self.penalty = temperature, top_k, top_p, repetition_penalty

    def choose(self, logits: np.ndarray, history: list[list[int]], rngs) -> np.ndarray:
        """Next token per row from logits (n,V); `history` holds each row's prompt + generated ids."""
        logits = logits.astype(np.float32, copy=True)
        if self.penalty != 1.0:
            for r, seen in enumerate(history):
                idx = np.unique(np.asarray(seen, np.int64))
                vals = logits[r, idx]
                logits[r, idx] = np.where(vals < 0, vals * self.penalty, vals / self.penalty)
        if self.temperature == 0:
            return logits.argmax(-1)
        return np.array([self._draw(row / self.temperature, rng) for row, rng in zip(logits, rngs)])

    def _draw(self, row: np.ndarray, rng: np.random.Generator) -> int:
        u = rng.random()  # drawn every step so a row's random stream does not depend on the filters' output
        if 0 < self.top_k < row.size:
            top = np.argpartition(-row, self.top_k - 1)[:self.top_k]  # O(V), then sort only k candidates
            order = top[np.argsort(-row[top], kind="stable")]
        else:
            order = np.argsort(-row, kind="stable")
        vals = row[order]
        probs = np.exp(vals - vals[0])
        probs /= probs.sum()
        if self.top_p < 1.0:
            keep = (np.cumsum(probs) - probs) < self.top_p
            order, probs = order[keep], probs[keep] / probs[keep].sum()
        return int(order[min(np.searchsorted(np.cumsum(probs), u * probs.sum()), len(order) - 1)])


def _left_pad(rows: list[list[int]], t: int, pad: int, length: int) -> tuple[np.ndarray, np.ndarray]:
    """Tokens (B,t) padded on the left and the real-slot mask (B,length) of the cache."""
    tokens = np.full((len(rows), t), pad, np.int32)
    real = np.zeros((len(rows), length), np.int32)
    for r, ids in enumerate(rows):
        tokens[r, t - len(ids):] = ids
        real[r, t - len(ids):t] = 1
    return tokens, real


def soft_token_onehot(positions: np.ndarray, length: int) -> np.ndarray:
    """(B,T,M) float one-hot: [b, positions[b,m], m] = 1."""
    b, m = positions.shape
    onehot = np.zeros((b, length, m), np.float32)
    onehot[np.arange(b)[:, None], positions, np.arange(m)[None, :]] = 1.0
    return onehot


def splice_embeddings(embeds, onehot, vectors):
    """Replace embeddings at soft-token positions by `vectors` (B,M,C); differentiable in both inputs.

    `onehot` comes from `soft_token_onehot`; a matmul keeps shapes static and the graph grad-friendly.
    """
    keep = 1.0 - onehot.sum(-1, keepdims=True)
    return embeds * keep.astype(embeds.dtype) + ms.ops.bmm(onehot.astype(vectors.dtype), vectors)


def _as_tensor(x) -> ms.Tensor:
    return x if isinstance(x, ms.Tensor) else runtime.to_tensor(np.asarray(x, np.float32), runtime.compute_dtype())
