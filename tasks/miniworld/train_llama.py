"""Stage 3 of the miniature world: a tiny Llama that writes preference keywords and item keywords.

Pairs are in the PMG method's own format, the two prompts the pipeline sends: the preference prompt
(`tasks.pmg.prompts.build_preference_prompt`) over a liked history serialized by
`tasks.pmg.history.serialize_items`, answered with " 1. kw1 2. kw2 ... 8. kw8" and EOS; and the item
prompt (`build_item_prompt`: title, genres, N_ITEM_KEYWORDS) answered with the keyword block of the
genre the movie's poster takes its palette from. The loss is on the answer tokens only; batches are
drawn from length buckets so short prompts are not padded to the longest. Users come from the
synthetic MovieLens generator's taste model (`warehouse.synth.user_taste`: 2–3 liked genres); the label
is the keyword blocks of the two most frequent genres of the history (ties: first appearance), a
deterministic function of the prompt, as in the feasibility study (../shared/reference/miniworld.md §2.5).
The checkpoint is an HF Llama folder (sentencepiece tokenizer) that `pmg_models.llama.load` reads.
"""
from __future__ import annotations

import json
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import numpy as np
from mindspore import ops

from pmg_models import checkpoint, llama, runtime, tokenizers
from tasks.miniworld import world
from tasks.miniworld.train_common import Progress, adamw, falling, half, lr_schedule, make_step
from tasks.pmg.history import HistoryItem, serialize_items
from tasks.pmg.keywords import parse_keywords
from tasks.pmg.prompts import build_item_prompt, build_preference_prompt
from warehouse import synth

N_KEYWORDS = 8
N_ITEM_KEYWORDS = 4   # one genre block; the world's pmg.toml sets the pipeline's n_item_keywords to match
HISTORY = 5


@dataclass(frozen=True)
class LlamaStageConfig:
    # 300 steps learned the format but not the counting (accuracy 0.23) at 265 tokens; 1,500 passed the 0.8 gate
    # with the kernels of the shipped run (0.84) but not with today's (0.794, same seed); 2,000: 0.899 / 0.903
    # (seeds 0 / 1), 3.5 minutes more.
    steps: int = 2000
    batch: int = 32
    lr: float = 2e-3
    weight_decay: float = 0.01
    warmup: int = 100
    n_users: int = 20_000          # training users (ids 1..n); held-out users follow them
    n_eval: int = 200
    vocab_size: int = 1000
    hidden: int = 160
    layers: int = 4
    heads: int = 4
    intermediate: int = 416
    keywords_p: float = 1.0        # share of users whose history lists each movie's poster keywords (the pipeline
                                   # always lists them; the study's LM learned from such copyable histories)
    style: str = "vicuna"
    n_items: int = 6000            # item-keyword pairs (movies made up like the synthetic catalogue's)
    n_eval_items: int = 100
    buckets: int = 3               # length buckets of the training pairs

    @classmethod
    def smoke(cls) -> "LlamaStageConfig":
        return cls(steps=30, batch=8, warmup=5, n_users=512, n_eval=8, hidden=64, layers=2, intermediate=172,
                   n_items=128, n_eval_items=8)


@dataclass(frozen=True)
class Pair:
    prompt: str
    answer: str              # " 1. kw ... 8. kw" (EOS added at tokenization)
    keywords: list


def user_history(rng: np.random.Generator, liked: tuple, next_id: int) -> list[HistoryItem]:
    """Five liked movies: first genre liked[0] w.p. .45, liked[1] .35, else any; a second genre w.p. .6,
    the other liked genre w.p. .7 of those, else any.

    The study's mix (.45/.30, random second genres) left the second genre a tie among one-offs for
    54 % of users, so the label hung on the tie-break; a tiny Llama then repeated its first block
    (0.40 after 1200 steps in MindSpore, 0.20 after 150 in transformers on the same pairs). With
    this mix 84 % of users have a clear second genre and the top two are the liked pair for 87 %.
    """
    titles = synth.make_titles(rng, HISTORY)
    items = []
    for k in range(HISTORY):
        r = rng.random()
        first = liked[0] if r < 0.45 else liked[1] if r < 0.80 else world.GENRES[rng.integers(len(world.GENRES))]
        genres = [first]
        if rng.random() < 0.6:
            mate = liked[1] if first == liked[0] else liked[0]
            other = mate if rng.random() < 0.7 else world.GENRES[rng.integers(len(world.GENRES))]
            if other != first:
                genres.append(other)
        items.append(HistoryItem(next_id + k, titles[k], tuple(genres), 5.0 - 0.5 * (k % 3), None))
    return items


def top_genres(items: list[HistoryItem], n: int = 2) -> list[str]:
    """The `n` most frequent genres over the history, ties broken by first appearance."""
    order, counts = [], Counter()
    for it in items:
        for g in it.genres:
            if g not in counts:
                order.append(g)
            counts[g] += 1
    return sorted(order, key=lambda g: (-counts[g], order.index(g)))[:n]


def make_pair(seed: int, user_id: int, keywords_p: float, style: str) -> Pair:
    rng = runtime.host_rng(np.random.SeedSequence([seed, 11, user_id]).generate_state(1)[0])
    liked = tuple(g for g in synth.user_taste(seed, user_id).liked if g in world.STYLES)
    while len(liked) < 2:  # every synth taste genre is a world genre; guard anyway
        liked = liked + (world.GENRES[rng.integers(len(world.GENRES))],)
    items = user_history(rng, liked, 1000 * user_id)
    kw = {it.movie_id: world.target_block(it.movie_id, it.genres) for it in items} if rng.random() < keywords_p else None
    prompt = build_preference_prompt(serialize_items(items, kw), N_KEYWORDS, style)
    keywords = [k for g in top_genres(items) for k in world.block(g)]
    answer = "".join(f" {i + 1}. {k}" for i, k in enumerate(keywords))
    return Pair(prompt, answer, keywords)


def item_genres(rng: np.random.Generator) -> list[str]:
    """Genres of a made-up movie as the synthetic catalogue writes them: 1–5 per movie with its counts,
    alphabetical like MovieLens, IMAX now and then, rarely none the world has a style for.

    Genres are drawn by √frequency (as `user_taste` does) so rare ones are seen first in the list too,
    and a quarter of the lists are shuffled: the answer is the first *listed* known genre, which an
    alphabetical-only training set could not tell from the alphabetically first.
    """
    if rng.random() < 0.02:
        return [str(rng.choice([synth.NO_GENRES, synth.IMAX]))]
    k = 1 + int(rng.choice(len(synth.GENRES_PER_MOVIE_P), p=synth.GENRES_PER_MOVIE_P))
    genres = [synth.GENRES[i] for i in rng.choice(len(synth.GENRES), k, replace=False, p=synth.TASTE_P)]
    if rng.random() < 4 * synth.IMAX_P:
        genres.append(synth.IMAX)
    if rng.random() < 0.75:
        return sorted(genres)
    return [genres[i] for i in rng.permutation(len(genres))]


def make_item_pair(seed: int, index: int, style: str, n_keywords: int = N_ITEM_KEYWORDS) -> Pair:
    """Item prompt of a made-up movie → the block of the genre its poster takes the palette from."""
    rng = runtime.host_rng(np.random.SeedSequence([seed, 13, index]).generate_state(1)[0])
    title = synth.make_titles(rng, 1)[0]
    genres = item_genres(rng)
    keywords = world.block(world.poster_genres(genres)[0])[:n_keywords]
    prompt = build_item_prompt(title, genres, "", n_keywords, style)
    return Pair(prompt, "".join(f" {i + 1}. {k}" for i, k in enumerate(keywords)), keywords)


def encode_pairs(tok, pairs: list[Pair]) -> tuple[list[list[int]], list[int]]:
    """Token ids of prompt + answer + EOS per pair, and each answer's length (EOS included)."""
    rows, answer_lens = [], []
    for p in pairs:
        a = tok.encode(p.answer, bos=False) + [tok.eos_id]
        rows.append(tok.encode(p.prompt, bos=True) + a)
        answer_lens.append(len(a))
    return rows, answer_lens


def length_buckets(lengths: list[int], n: int) -> list[np.ndarray]:
    """Row indices split at length quantiles into at most `n` non-empty buckets (shortest first)."""
    order = np.argsort(np.asarray(lengths), kind="stable")
    return [b for b in np.array_split(order, max(1, min(n, len(order)))) if len(b)]


def tokenize(tok, pairs: list[Pair]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(ids, attention mask, answer mask) (N, T); T is the longest pair; right padding with EOS."""
    return pad(*encode_pairs(tok, pairs), tok.eos_id)


def pad(rows: list[list[int]], answer_lens: list[int], eos_id: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    t = max(map(len, rows))
    ids = np.full((len(rows), t), eos_id, np.int32)
    attn = np.zeros((len(rows), t), np.int32)
    ans = np.zeros((len(rows), t), np.float32)
    for i, (row, n) in enumerate(zip(rows, answer_lens)):
        ids[i, :len(row)] = row
        attn[i, :len(row)] = 1
        ans[i, len(row) - n:len(row)] = 1.0
    return ids, attn, ans


def model_config(cfg: LlamaStageConfig, vocab: int, max_len: int) -> llama.LlamaConfig:
    return llama.LlamaConfig(vocab_size=vocab, hidden_size=cfg.hidden, intermediate_size=cfg.intermediate,
                             num_hidden_layers=cfg.layers, num_attention_heads=cfg.heads,
                             num_key_value_heads=cfg.heads, head_dim=cfg.hidden // cfg.heads, rms_norm_eps=1e-5,
                             max_position_embeddings=max(512, max_len), tie_word_embeddings=True)


def write_folder(directory: Path, mcfg: llama.LlamaConfig, tensors: dict) -> None:
    """HF Llama layout (as llama.init_tiny): config, generation config, safetensors, tokenizer config."""
    def dump(name, obj):
        (directory / name).write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n")

    checkpoint.save_safetensors(directory / "model.safetensors", half(tensors), metadata={"format": "pt"})
    dump("config.json", mcfg.to_hf())
    dump("generation_config.json", {"bos_token_id": mcfg.bos_token_id, "eos_token_id": mcfg.eos_token_id,
                                    "do_sample": False})
    dump("special_tokens_map.json", {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"})
    dump("tokenizer_config.json", {"tokenizer_class": "LlamaTokenizer", "bos_token": "<s>", "eos_token": "</s>",
                                   "unk_token": "<unk>", "pad_token": None, "add_bos_token": True,
                                   "add_eos_token": False, "legacy": True,
                                   "model_max_length": mcfg.max_position_embeddings})


def init_weights(net, seed: int) -> None:
    rng = runtime.host_rng(seed)
    arrays = {}
    for p in net.get_parameters():
        shape = tuple(p.shape)
        arrays[p.name] = (np.ones(shape, np.float32) if len(shape) == 1
                          else (rng.standard_normal(shape, dtype=np.float32) * 0.02).astype(np.float32))
    checkpoint.assign_strict(net, arrays.items(), source="init")


def keyword_accuracy(generated: list[str], pairs: list[Pair]) -> dict:
    """Share of the expected keywords matched by generated keywords of the user's top-2 genre blocks.

    Per user: hits / max(expected, generated), over distinct keywords (two genres may share a colour or
    motif, and the parser drops repeats), so missing and extra keywords both count against it.
    """
    score, exact, parsed_ok = 0.0, 0, 0
    for text, p in zip(generated, pairs):
        parsed = parse_keywords(text, N_KEYWORDS)
        got = [k.lower() for k in parsed.keywords]
        want = list(dict.fromkeys(p.keywords))
        parsed_ok += parsed.ok
        score += sum(k in set(want) for k in got) / max(len(want), len(got))
        exact += got == want
    n = max(1, len(pairs))
    return {"keyword_accuracy": round(score / n, 4), "exact_match": round(exact / n, 4),
            "parsed": round(parsed_ok / n, 4), "n_eval_users": len(pairs)}


def evaluate(directory: Path, pairs: list[Pair], items: list[Pair]) -> tuple[dict, list[str]]:
    """Preference keyword accuracy (the gate) and item keyword accuracy, greedy generation."""
    lm = llama.load(directory)
    out = lm.generate([p.prompt for p in pairs + items], max_new_tokens=48)
    acc = keyword_accuracy(out[:len(pairs)], pairs)
    item = keyword_accuracy(out[len(pairs):], items)
    acc.update(item_keyword_accuracy=item["keyword_accuracy"], item_exact_match=item["exact_match"])
    return acc, out


def train_llama(out_dir, seed: int = 0, cfg: LlamaStageConfig = LlamaStageConfig(),
                emit: Callable[[str], None] | None = None) -> dict:
    """Train the tiny preference-keyword Llama and write it to `out_dir`; returns metrics."""
    runtime.setup()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    train = [make_pair(seed, u, cfg.keywords_p, cfg.style) for u in range(1, cfg.n_users + 1)]
    held_out = [make_pair(seed, u, cfg.keywords_p, cfg.style)
                for u in range(cfg.n_users + 1, cfg.n_users + 1 + cfg.n_eval)]
    items = [make_item_pair(seed, i, cfg.style) for i in range(cfg.n_items)]
    held_items = [make_item_pair(seed, i, cfg.style) for i in range(cfg.n_items, cfg.n_items + cfg.n_eval_items)]
    corpus = [p.prompt + p.answer for p in train[:4000] + items[:1000]]
    tokenizers.train_llama_sentencepiece(corpus, out / "tokenizer.model", cfg.vocab_size)
    tok = tokenizers.LlamaTokenizer.from_dir(out)
    rows, answer_lens = encode_pairs(tok, train + items)
    buckets = [pad([rows[i] for i in b], [answer_lens[i] for i in b], tok.eos_id)
               for b in length_buckets([len(r) for r in rows], cfg.buckets)]
    share = np.array([len(b[0]) for b in buckets], np.float64)
    t = max(b[0].shape[1] for b in buckets)
    mcfg = model_config(cfg, tok.vocab_size, t + 64)
    net = llama.build(mcfg)
    init_weights(net, seed * 10 + 8)
    net.set_train(True)
    optimizer = adamw(net.trainable_params(), lr_schedule(cfg.steps, cfg.lr, cfg.warmup), cfg.weight_decay)

    def forward(input_ids, attention_mask, position_ids, targets, weights):
        logits = net(input_ids, attention_mask, position_ids)
        logp = ops.log_softmax(logits, -1)
        nll = -ops.gather_elements(logp, 2, targets.expand_dims(-1)).squeeze(-1)
        return (nll * weights).sum() / weights.sum()

    step = make_step(forward, optimizer)
    rng = runtime.host_rng(seed * 10 + 9)
    progress = Progress("llama", cfg.steps, emit)
    for s in range(cfg.steps):
        ids, attn, ans = buckets[rng.choice(len(buckets), p=share / share.sum())]
        idx = rng.choice(len(ids), cfg.batch, replace=len(ids) < cfg.batch)
        x = ids[idx]
        positions = np.broadcast_to(np.arange(x.shape[1], dtype=np.int32), x.shape).copy()
        targets = np.concatenate([x[:, 1:], x[:, -1:]], 1)           # next token at each position
        weights = np.concatenate([ans[idx][:, 1:], np.zeros((cfg.batch, 1), np.float32)], 1)
        loss = step(runtime.to_tensor(x), runtime.to_tensor(attn[idx]), runtime.to_tensor(positions),
                    runtime.to_tensor(targets), runtime.to_tensor(weights))
        progress(s, loss)
    net.set_train(False)
    tensors = {p.name: p.asnumpy() for p in net.get_parameters()}
    write_folder(out, mcfg, tensors)
    acc, samples = evaluate(out, held_out, held_items)
    metrics = {"stage": "llama", "steps": cfg.steps, "batch": cfg.batch, "seconds_train": round(progress.seconds, 1),
               "sequence_tokens": int(t), "parameters": mcfg.num_parameters, **falling(progress.losses), **acc,
               "sample": {"prompt_tail": held_out[0].prompt[-160:], "generated": samples[0] if samples else "",
                          "expected": held_out[0].answer,
                          "item_prompt_tail": held_items[0].prompt[-200:],
                          "item_generated": samples[len(held_out)] if len(samples) > len(held_out) else "",
                          "item_expected": held_items[0].answer},
               "config": asdict(cfg)}
    (out / "train_metrics.json").write_text(json.dumps(metrics, indent=1))
    return metrics

