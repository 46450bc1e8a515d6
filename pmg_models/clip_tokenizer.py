"""The CLIP byte-level BPE tokenizer over `vocab.json` + `merges.txt`, through the `tokenizers` library.

Built exactly as transformers' CLIPTokenizer (v5) builds its backend: NFC, whitespace runs → one space,
lowercase; split on CLIP's regex; byte-level alphabet; BPE with the `</w>` end-of-word suffix. Rows are
`<|startoftext|> text <|endoftext|> pad…` with the pad token the checkpoint configures (SD 1.x pads
with `<|endoftext|>`, SD 2.x with `!`).
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

BOS, EOS = "<|startoftext|>", "<|endoftext|>"
SPLIT_PATTERN = r"""<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+"""


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2/CLIP's reversible byte → printable-character table (256 entries, this exact order)."""
    keep = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    chars, extra = {}, 0
    for b in range(256):
        if b in keep:
            chars[b] = chr(b)
        else:
            chars[b] = chr(256 + extra)
            extra += 1
    return chars


def _token_content(value, default: str) -> str:
    if value is None:
        return default
    return value["content"] if isinstance(value, dict) else str(value)


def read_merges(path: Path) -> list[tuple[str, str]]:
    merges = []
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        if not line or line.startswith("#version"):
            continue
        a, b = line.split(" ")
        merges.append((a, b))
    return merges


def _read_vocab_merges(directory: Path):
    """(vocab, merges, special added tokens) from vocab.json + merges.txt, else from tokenizer.json."""
    if (directory / "vocab.json").exists() and (directory / "merges.txt").exists():
        vocab = json.loads((directory / "vocab.json").read_text(encoding="utf-8"))
        return vocab, read_merges(directory / "merges.txt"), []
    if (directory / "tokenizer.json").exists():
        spec = json.loads((directory / "tokenizer.json").read_text(encoding="utf-8"))
        model = spec.get("model", {})
        if model.get("type") != "BPE" or model.get("end_of_word_suffix") != "</w>":
            raise ValueError(f"{directory}/tokenizer.json is not a CLIP BPE tokenizer")
        merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in model["merges"]]
        extra = [t["content"] for t in spec.get("added_tokens", []) if t.get("special")]
        return model["vocab"], merges, extra
    raise FileNotFoundError(f"no vocab.json + merges.txt or tokenizer.json in {directory} (CLIP tokenizer files)")


def _backend(vocab: dict[str, int], merges: list[tuple[str, str]], unk: str, specials: list[str]):
    from tokenizers import Regex, Tokenizer, normalizers, pre_tokenizers
    from tokenizers.models import BPE

    tok = Tokenizer(BPE(vocab=vocab, merges=merges, dropout=None, continuing_subword_prefix="",
                        end_of_word_suffix="</w>", fuse_unk=False, unk_token=unk))
    tok.normalizer = normalizers.Sequence([normalizers.NFC(), normalizers.Replace(Regex(r"\s+"), " "),
                                           normalizers.Lowercase()])
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(SPLIT_PATTERN), behavior="removed", invert=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False)])
    tok.add_special_tokens(sorted(set(specials)))
    return tok


class CLIPTokenizer:
    """CLIP BPE tokenizer; ids equal transformers' CLIPTokenizer with padding='max_length', truncation."""

    def __init__(self, vocab: dict[str, int], merges: list[tuple[str, str]], bos: str = BOS, eos: str = EOS,
                 pad: str = EOS, unk: str = EOS, model_max_length: int = 77, extra_specials: tuple = ()):
        for name, token in (("bos", bos), ("eos", eos), ("pad", pad), ("unk", unk)):
            if token not in vocab:
                raise ValueError(f"{name} token {token!r} is not in the vocabulary")
        self.vocab = vocab
        self.bos_id, self.eos_id, self.pad_id = vocab[bos], vocab[eos], vocab[pad]
        self.model_max_length = model_max_length
        self._tok = _backend(vocab, merges, unk, [bos, eos, pad, unk, *extra_specials])

    @classmethod
    def from_dir(cls, directory) -> "CLIPTokenizer":
        """Read vocab.json + merges.txt (or a transformers-5 tokenizer.json) and the special-token config."""
        directory = Path(directory)
        vocab, merges, extra = _read_vocab_merges(directory)
        config = {}
        for name in ("tokenizer_config.json", "special_tokens_map.json"):  # the map wins, as in transformers
            if (directory / name).exists():
                config.update({k: v for k, v in json.loads((directory / name).read_text()).items() if v is not None})
        max_len = config.get("model_max_length", 77)
        max_len = 77 if not isinstance(max_len, int) or max_len > 10**6 else max_len
        return cls(vocab, merges, bos=_token_content(config.get("bos_token"), BOS),
                   eos=_token_content(config.get("eos_token"), EOS), pad=_token_content(config.get("pad_token"), EOS),
                   unk=_token_content(config.get("unk_token"), EOS), model_max_length=max_len, extra_specials=extra)

    def tokenize(self, text: str) -> list[int]:
        """Text → BPE ids without bos/eos."""
        return self._tok.encode(text, add_special_tokens=False).ids

    def _row(self, ids: list[int], max_length: int) -> np.ndarray:
        row = np.full(max_length, self.pad_id, np.int32)
        body = [self.bos_id] + ids[: max_length - 2] + [self.eos_id]
        row[: len(body)] = body
        return row

    def encode(self, texts: list[str], max_length: int | None = None, truncate: bool = True):
        """Texts → (ids int32 [N, max_length], n_tokens): n_tokens[i] counts text tokens before truncation.

        A text with more than max_length - 2 tokens is truncated (or raises ValueError if truncate=False).
        """
        if isinstance(texts, str):
            raise TypeError("encode takes a list of strings")
        max_length = max_length or self.model_max_length
        rows, counts = [], []
        for text in texts:
            ids = self.tokenize(text)
            if len(ids) > max_length - 2 and not truncate:
                raise ValueError(f"text has {len(ids)} tokens, more than the {max_length - 2} that fit: {text[:60]!r}…")
            rows.append(self._row(ids, max_length))
            counts.append(len(ids))
        return np.stack(rows) if rows else np.zeros((0, max_length), np.int32), counts

    def encode_segments(self, segments: list[str], max_length: int | None = None):
        """Segments joined by spaces → (ids [max_length], segment index per position, -1 for bos/eos/pad).

        ids equal `encode([" ".join(segments)])[0][0]`; a token is attributed to the segment holding its
        first character. Tokens past the truncation point are dropped with their segments.
        """
        max_length = max_length or self.model_max_length
        text, starts = "", []
        for i, seg in enumerate(segments):
            if i:
                text += " "
            starts.append(len(text))
            text += seg
        enc = self._tok.encode(text, add_special_tokens=False)
        bounds = np.asarray(starts + [len(text) + 1])
        seg_of = [int(np.searchsorted(bounds, start, side="right") - 1) for start, _ in enc.offsets]
        ids = self._row(list(enc.ids), max_length)
        index = np.full(max_length, -1, np.int32)
        n = min(len(seg_of), max_length - 2)
        index[1: 1 + n] = seg_of[:n]
        return ids, index


# --- a tiny tokenizer trained offline ---------------------------------------------------------------

GENRES = ["Action", "Adventure", "Animation", "Children", "Comedy", "Crime", "Documentary", "Drama", "Fantasy",
          "Film-Noir", "Horror", "IMAX", "Musical", "Mystery", "Romance", "Sci-Fi", "Thriller", "War", "Western",
          "(no genres listed)"]
POSTER_WORDS = ["movie poster", "film poster", "cinematic", "illustration", "painting", "photograph", "portrait",
                "title text", "dramatic lighting", "close-up", "wide shot", "silhouette", "skyline", "city",
                "forest", "desert", "ocean", "space", "spaceship", "robot", "detective", "hero", "villain",
                "family", "friends", "love story", "explosion", "car chase", "castle", "dragon", "ghost",
                "monster", "cowboy", "soldier", "battle", "dance", "music", "highly detailed", "4k", "art"]
COLOURS = ["red", "blue", "green", "yellow", "orange", "purple", "black", "white", "golden", "silver", "pink",
           "teal", "neon", "pastel", "dark", "bright", "sepia", "monochrome"]
MOODS = ["dark", "gritty", "happy", "joyful", "mysterious", "romantic", "tense", "scary", "epic", "whimsical",
         "nostalgic", "melancholic", "hopeful", "funny", "suspenseful", "heroic", "dreamy", "vintage"]


def tiny_corpus() -> list[str]:
    """Deterministic MovieLens/poster-style English sentences for training the tiny BPE."""
    lines = []
    for i, genre in enumerate(GENRES):
        for j, word in enumerate(POSTER_WORDS):
            colour, mood = COLOURS[(i + j) % len(COLOURS)], MOODS[(i * 3 + j) % len(MOODS)]
            lines.append(f"a {mood} {genre.lower()} {word}, {colour} tones, {MOODS[j % len(MOODS)]} atmosphere")
            other = COLOURS[j % len(COLOURS)]
            lines.append(f"{genre} | {word} with {colour} and {other} colours, a photo of the {word}")
    lines += [f"Toy Story ({1995 + k}) Léon café naïve Amélie — {k} stars!" for k in range(10)]
    return lines


def write_tiny_tokenizer(directory, corpus: list[str] | None = None, vocab_size: int = 1000,
                         pad_token: str = EOS) -> Path:
    """Train a small CLIP-style BPE offline and write it in the HF CLIP tokenizer layout.

    Layout as OpenAI's: 256 byte symbols, the same with `</w>`, the learned merges, then the specials.
    `pad_token="!"` gives the SD 2.x convention. Loadable by transformers' CLIPTokenizer.
    """
    from tokenizers import trainers

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    alphabet = list(bytes_to_unicode().values())
    trainer_tok = _backend({EOS: 0}, [], EOS, [])
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, show_progress=False, end_of_word_suffix="</w>",
                                  initial_alphabet=alphabet, special_tokens=[])
    trainer_tok.train_from_iterator(corpus if corpus is not None else tiny_corpus(), trainer)
    raw = json.loads(trainer_tok.to_str())["model"]["merges"]
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in raw]
    tokens = alphabet + [c + "</w>" for c in alphabet]
    seen = set(tokens)
    for a, b in merges:
        if a + b not in seen:
            seen.add(a + b)
            tokens.append(a + b)
    tokens += [BOS, EOS]
    vocab = {t: i for i, t in enumerate(tokens)}
    (directory / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    (directory / "merges.txt").write_text("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges),
                                          encoding="utf-8")
    specials = {"bos_token": BOS, "eos_token": EOS, "unk_token": EOS, "pad_token": pad_token}
    (directory / "special_tokens_map.json").write_text(json.dumps(specials, indent=2))
    config = {"tokenizer_class": "CLIPTokenizer", "model_max_length": 77, "do_lower_case": True,
              "errors": "replace", "clean_up_tokenization_spaces": False, **specials}
    (directory / "tokenizer_config.json").write_text(json.dumps(config, indent=2))
    return directory
