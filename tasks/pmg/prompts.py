"""Prompt templates of the PMG method (Shen et al., WWW'24), versioned and written in our own words.

Two styles: ``vicuna`` keeps the original code's plain-text dialogue (an optional system sentence,
``### Human:`` turns, an ``### Assistant:`` turn pre-filled with the start of the answer) and
``llama2-chat`` wraps the same request in Llama-2-chat markers (``[INST]``, ``<<SYS>>``). Any change to a
template's text must bump that style's entry in ``PROMPT_VERSIONS``: the version goes into lineage and
into history fingerprints, so cached keywords are recomputed when the wording changes.

Text from the data (titles, genres, intros, tags, keywords) is passed through ``sanitize_field`` and
placed inside double quotes; the sanitizer turns double quotes into single ones and neutralises the
templates' turn markers, so data can neither close the quoted block nor open a new turn.
"""
from __future__ import annotations

import re
import unicodedata
from typing import Iterable

STYLES = ("vicuna", "llama2-chat")
PROMPT_VERSIONS = {"vicuna": "pmg-vicuna-1", "llama2-chat": "pmg-llama2-chat-1"}

# Llama-2-chat markers, as in meta-llama/llama generation.py (BOS is added by the tokenizer, not here).
B_INST, E_INST = "[INST]", "[/INST]"
B_SYS, E_SYS = "<<SYS>>\n", "\n<</SYS>>\n\n"
HUMAN, ASSISTANT = "### Human:", "### Assistant:"

# No trailing space: SentencePiece attaches the space to the next word, so the model continues " 1. ...".
KEYWORDS_PREFIX = "The keywords are:"

MAX_ITEMS_CHARS = 4000  # whole serialized history; 5 items at the per-field caps stay far below this
MAX_TITLE_CHARS = 80
MAX_GENRES_CHARS = 80
MAX_INTRO_CHARS = 600

PREFERENCE_SYSTEM = (
    "The assistant helps a movie recommender by naming, in a few keywords, what a movie fan enjoys.")
PREFERENCE_ASK = (
    "Someone watched and liked the movies listed below. Give {n} keywords that sum up the kind of movies "
    "this person enjoys. Reply with a numbered list only, in this form: "
    "The keywords are: 1. first keyword 2. second keyword 3. third keyword")
PREFERENCE_DATA = 'The movies, each with its genres and keywords, are: "{items}"'

ITEM_SYSTEM = "The assistant helps a designer plan movie posters."
ITEM_ASK = (
    'Movie title: "{title}"\nMovie introduction: "{intro}"\nMovie genre: "{genres}"\n'
    "Describe a poster for this movie in {n} keywords. Do not explain them and do not use names of "
    "characters. Reply with a numbered list only, in this form: "
    "The keywords are: 1. first keyword 2. second keyword 3. third keyword")

SOFT_ASK = 'Someone watched and liked these movies: "{items}". Describe the kind of movies this person enjoys.'

NEGATIVE_PROMPTS = {
    "movie": "garbled text, illegible letters, blurry, distorted, deformed, low quality",
    "costume": "person, model, woman, man, body, face, skin, mannequin",
    "emoticon": ("low quality, worst quality, blurry, watermark, text, signature, bad anatomy, bad hands, "
                 "extra limbs, cropped"),
}

_ROLE_COLON = re.compile(r"\b(human|assistant|system|user)\s*:", re.IGNORECASE)
_CHAT_MARKERS = re.compile(r"\[\s*/?\s*inst\s*\]|<<\s*/?\s*sys\s*>>|</?s>", re.IGNORECASE)
_HASHES = re.compile(r"#{2,}")
_SPACES = re.compile(r"\s+")
_DOUBLE_QUOTES = dict.fromkeys(map(ord, '"\u201c\u201d\u201e\u201f\u00ab\u00bb`'), "'")


def check_style(style: str) -> str:
    """Return `style` if known, else raise ValueError naming the choices."""
    if style not in STYLES:
        raise ValueError(f"unknown prompt style {style!r}; choose one of {', '.join(STYLES)}")
    return style


def prompt_version(style: str = "vicuna") -> str:
    """The version string of a style's templates, recorded in lineage and fingerprints."""
    return PROMPT_VERSIONS[check_style(style)]


def sanitize_field(text, max_chars: int) -> str:
    """Make one data field safe to quote in a prompt.

    Drops control/format characters, folds whitespace (incl. newlines) to single spaces, turns double
    quotes into single ones, neutralises turn markers ("###", "[INST]", "<<SYS>>", "</s>", "Human:")
    and caps the result at `max_chars` characters. Non-ASCII letters are kept.
    """
    if text is None:
        return ""
    text = str(text)
    text = "".join(" " if ch in "\t\n\r\x0b\x0c\x85\u2028\u2029" else ch for ch in text)
    text = "".join(ch for ch in text if unicodedata.category(ch)[0] != "C")
    text = text.translate(_DOUBLE_QUOTES)
    # Markers become a space, so removing one cannot join the halves of another ("[IN[INST]ST]").
    text = _CHAT_MARKERS.sub(" ", text)
    text = _HASHES.sub("#", text).replace("<", "(").replace(">", ")")
    text = _ROLE_COLON.sub(lambda m: m.group(1) + " -", text)
    text = _SPACES.sub(" ", text).strip()
    return text[:max_chars].rstrip()


def genres_text(genres) -> str:
    """Genres (list or MovieLens 'A|B' string) as the original's pipe-joined text, sanitized."""
    if genres is None:
        return ""
    if isinstance(genres, str):
        genres = genres.split("|")
    kept = [g.strip() for g in genres if g and g.strip() and g.strip() != "(no genres listed)"]
    return sanitize_field("|".join(kept), MAX_GENRES_CHARS)


def format_llama2_chat(system: str, user: str, assistant_prefix: str = "") -> str:
    """One Llama-2-chat turn: `[INST] <<SYS>>\\nsystem\\n<</SYS>>\\n\\nuser [/INST] prefix` (BOS excluded)."""
    body = f"{B_SYS}{system.strip()}{E_SYS}{user.strip()}" if system else user.strip()
    text = f"{B_INST} {body} {E_INST}"
    return f"{text} {assistant_prefix}" if assistant_prefix else text


def format_vicuna(system: str, turns: Iterable[str], assistant_prefix: str = "") -> str:
    """The original's dialogue: system sentence, `### Human:` turns, an `### Assistant:` turn to continue."""
    lines = [system.strip()] if system else []
    lines += [f"{HUMAN} {t.strip()}" for t in turns]
    lines.append(f"{ASSISTANT} {assistant_prefix}" if assistant_prefix else ASSISTANT)
    return "\n".join(lines)


def _dialogue(system: str, turns: list[str], prefix: str, style: str) -> str:
    if check_style(style) == "vicuna":
        return format_vicuna(system, turns, prefix)
    # Llama-2-chat has one user message per turn; the original's two Human turns become two paragraphs.
    return format_llama2_chat(system, "\n\n".join(turns), prefix)


def assistant_prefix(kind: str = "preference") -> str:
    """The pre-filled start of the answer: the keyword prompts end with it, the soft prompt has none."""
    if kind in ("preference", "item"):
        return KEYWORDS_PREFIX
    if kind == "soft":
        return ""
    raise ValueError(f"unknown prompt kind {kind!r}; choose one of preference, item, soft")


def _items_block(items_text: str) -> str:
    return sanitize_field(items_text, MAX_ITEMS_CHARS)


def build_preference_prompt(items_text: str, n_keywords: int = 8, style: str = "vicuna") -> str:
    """Prompt asking for `n_keywords` preference keywords from a serialized history (history.serialize_items)."""
    if n_keywords < 1:
        raise ValueError(f"n_keywords must be at least 1, got {n_keywords}")
    turns = [PREFERENCE_ASK.format(n=n_keywords), PREFERENCE_DATA.format(items=_items_block(items_text))]
    return _dialogue(PREFERENCE_SYSTEM, turns, KEYWORDS_PREFIX, style)


def build_item_prompt(title: str, genres, intro: str = "", n_keywords: int = 10, style: str = "vicuna") -> str:
    """Prompt asking for `n_keywords` poster keywords of one movie (title without year, genres, optional intro)."""
    if n_keywords < 1:
        raise ValueError(f"n_keywords must be at least 1, got {n_keywords}")
    ask = ITEM_ASK.format(title=sanitize_field(title, MAX_TITLE_CHARS), intro=sanitize_field(intro, MAX_INTRO_CHARS),
                          genres=genres_text(genres), n=n_keywords)
    return _dialogue(ITEM_SYSTEM, [ask], KEYWORDS_PREFIX, style)


def build_soft_prompt(items_text: str, style: str = "vicuna") -> str:
    """Input text of the soft-prompt model; its M multimodal tokens are appended right after this text."""
    return _dialogue("", [SOFT_ASK.format(items=_items_block(items_text))], "", style)
