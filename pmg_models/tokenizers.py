"""Llama tokenizer (sentencepiece `tokenizer.model` or HF `tokenizer.json`) and the Llama-2-chat template.

No hand-written tokenization: `sentencepiece` or `tokenizers` do the work. The chat functions are pure
string builders following Meta's reference (`llama/generation.py`: B_INST/E_INST, B_SYS/E_SYS).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

B_INST, E_INST = "[INST]", "[/INST]"
B_SYS, E_SYS = "<<SYS>>\n", "\n<</SYS>>\n\n"


# ----------------------------------------------------------------------------- chat template (pure)

def format_llama2_chat(system: str | None, user: str) -> str:
    """One Llama-2-chat user turn: `[INST] <<SYS>>\\n{system}\\n<</SYS>>\\n\\n{user} [/INST]` (BOS is the tokenizer's)."""
    content = user.strip()
    if system:
        content = f"{B_SYS}{system.strip()}{E_SYS}{content}"
    return f"{B_INST} {content} {E_INST}"


def llama2_dialog_segments(system: str | None, turns: Sequence[tuple[str, str]], user: str) -> list[str]:
    """A multi-turn dialog as Meta encodes it: each segment gets BOS; all but the last also get EOS.

    `turns` are earlier (user, assistant) pairs; the system prompt joins the first user message.
    """
    users = [u for u, _ in turns] + [user]
    if system:
        users[0] = f"{B_SYS}{system.strip()}{E_SYS}{users[0].strip()}"
    segments = [f"{B_INST} {u.strip()} {E_INST} {a.strip()} " for u, (_, a) in zip(users, turns)]
    segments.append(f"{B_INST} {users[-1].strip()} {E_INST}")
    return segments


def encode_llama2_dialog(tokenizer, system: str | None, turns: Sequence[tuple[str, str]], user: str) -> list[int]:
    """Token ids of a dialog (BOS per segment, EOS after each completed answer)."""
    segments = llama2_dialog_segments(system, turns, user)
    ids: list[int] = []
    for i, seg in enumerate(segments):
        ids += tokenizer.encode(seg, bos=True, eos=i < len(segments) - 1)
    return ids


# ----------------------------------------------------------------------------- tokenizer

class LlamaTokenizer:
    """`encode(text, bos=True) -> ids`, `decode(ids) -> text`, plus `bos_id`, `eos_id`, `pad_id`, `vocab_size`."""

    def __init__(self, sp=None, hf=None, bos_id: int = 1, eos_id: int = 2, pad_id: int = 0):
        if (sp is None) == (hf is None):
            raise ValueError("LlamaTokenizer needs exactly one of a sentencepiece or a tokenizers backend")
        self._sp, self._hf = sp, hf
        self.bos_id, self.eos_id, self.pad_id = bos_id, eos_id, pad_id

    @classmethod
    def from_dir(cls, directory: Path, pad_id: int | None = None) -> "LlamaTokenizer":
        """Load `tokenizer.model` (preferred: it is Llama's own) or else `tokenizer.json` from a model dir."""
        directory = Path(directory)
        model, js = directory / "tokenizer.model", directory / "tokenizer.json"
        if model.exists():
            import sentencepiece as spm

            sp = spm.SentencePieceProcessor(model_file=str(model))
            pad = sp.pad_id() if sp.pad_id() >= 0 else sp.unk_id()
            return cls(sp=sp, bos_id=sp.bos_id(), eos_id=sp.eos_id(), pad_id=pad if pad_id is None else pad_id)
        if js.exists():
            from tokenizers import Tokenizer

            hf = Tokenizer.from_file(str(js))
            bos, eos = _special_ids(directory, hf)
            return cls(hf=hf, bos_id=bos, eos_id=eos, pad_id=0 if pad_id is None else pad_id)
        raise FileNotFoundError(f"no tokenizer.model or tokenizer.json in {directory}")

    @property
    def vocab_size(self) -> int:
        return self._sp.get_piece_size() if self._sp is not None else self._hf.get_vocab_size()

    def encode(self, text: str, bos: bool = True, eos: bool = False) -> list[int]:
        """Token ids of plain text (special-token strings in `text` are not interpreted)."""
        if self._sp is not None:
            ids = list(self._sp.encode(text))
        else:
            ids = list(self._hf.encode(text, add_special_tokens=False).ids)
        return ([self.bos_id] if bos else []) + ids + ([self.eos_id] if eos else [])

    def decode(self, ids: Sequence[int]) -> str:
        """Text of `ids`, special tokens (BOS/EOS/pad) dropped."""
        special = {self.bos_id, self.eos_id}
        ids = [int(i) for i in ids if int(i) not in special]
        if self._sp is not None:
            return self._sp.decode(ids)
        return self._hf.decode(ids, skip_special_tokens=True)

    def id_to_piece(self, i: int) -> str:
        return self._sp.id_to_piece(int(i)) if self._sp is not None else self._hf.id_to_token(int(i))


def _special_ids(directory: Path, hf) -> tuple[int, int]:
    """BOS/EOS ids of a tokenizer.json checkpoint, from special_tokens_map.json or Llama's defaults."""
    names = {"bos_token": "<s>", "eos_token": "</s>"}
    smap = directory / "special_tokens_map.json"
    if smap.exists():
        for key, value in json.loads(smap.read_text()).items():
            if key in names:
                names[key] = value["content"] if isinstance(value, dict) else value
    bos, eos = hf.token_to_id(names["bos_token"]), hf.token_to_id(names["eos_token"])
    if bos is None or eos is None:
        raise ValueError(f"{directory}: tokenizer.json has no {names['bos_token']!r}/{names['eos_token']!r} token")
    return bos, eos


def train_llama_sentencepiece(lines: Sequence[str], out_file: Path, vocab_size: int = 512) -> Path:
    """Train a small Llama-style sentencepiece BPE (byte fallback, split digits, <unk>=0 <s>=1 </s>=2)."""
    import io

    import sentencepiece as spm

    buf = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(lines), model_writer=buf, model_type="bpe", vocab_size=vocab_size,
        byte_fallback=True, split_digits=True, add_dummy_prefix=True, remove_extra_whitespaces=False,
        allow_whitespace_only_pieces=True, normalization_rule_name="identity", character_coverage=1.0,
        unk_id=0, bos_id=1, eos_id=2, pad_id=-1, hard_vocab_limit=False, num_threads=1,
        minloglevel=2)
    out_file = Path(out_file)
    out_file.write_bytes(buf.getvalue())
    return out_file
