"""Defensive parser for the LLM's keyword answers.

The original parsed with ``re.findall(r'\\d\\. ([a-zA-Z\\' ]*)', text)``, which truncated "Stop-motion" to
"Stop", dropped "1980s" and every non-ASCII letter, and never capped the count. This parser reads
numbered lists (one line or many, "1." or "1)"), bullet lists, and comma/semicolon lists; strips the
echoed assistant prefix, quotes, markdown emphasis and trailing explanations; keeps hyphens, digits and
non-ASCII letters; deduplicates case-insensitively; caps at n. It never raises: output it cannot read
gives an empty list, ok=False and a reason.
"""
from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass, field

from tasks.pmg.prompts import KEYWORDS_PREFIX

MAX_KEYWORD_CHARS = 48
MAX_KEYWORD_WORDS = 6
MAX_INPUT_CHARS = 20_000

_STOPS = re.compile(r"</s>|###|\[\s*/?\s*INST\s*\]|<<\s*/?\s*SYS\s*>>", re.IGNORECASE)
_PREFIXES = re.compile(r"^\s*(?:the\s+(?:english\s+)?keywords\s+are|keywords)\s*[:\-]?\s*", re.IGNORECASE)
# An item number: at the start or after whitespace, 1-2 digits, "." or ")", then not a digit (so "2.5" and
# "1980s" are not markers).
_MARKER = re.compile(r"(?:^|(?<=[\s*(]))(\d{1,2})[.)](?!\d)")
_BULLET = re.compile(r"^\s*[-*\u2022\u25cf\u2013]\s+(.*)$")
_EXPLANATION = re.compile(r"\s+[-\u2013\u2014]\s|:\s|\s\(|\s+because\b|\s+which\b|\s+as\s+(?:the|they|he|she)\b|"
                          r"[.!?](?:\s|$)", re.IGNORECASE)
_EDGE_JUNK = " \t\"'`*_\u201c\u201d\u2018\u2019\u00ab\u00bb.,;:!?[]{}"
_LEADING_CONJ = re.compile(r"^(?:and|or|&)\s+", re.IGNORECASE)
_REFUSAL = re.compile(r"\b(?:sorry|cannot|can't|unable to|as an ai|i apologi[sz]e)\b", re.IGNORECASE)
_HAS_WORD = re.compile(r"[^\W_]")


@dataclass(frozen=True)
class ParsedKeywords:
    """Parser result: keywords (at most n), whether any were found, and why not / what was odd."""
    keywords: list[str] = field(default_factory=list)
    ok: bool = False
    reason: str = ""


def _cut(text: str, prefix: str) -> str:
    text = text[:MAX_INPUT_CHARS]
    stop = _STOPS.search(text)
    if stop:
        text = text[:stop.start()]
    text = text.strip()
    if prefix and text.lower().startswith(prefix.lower()):
        text = text[len(prefix):]
    return _PREFIXES.sub("", text, count=1)


def _numbered(text: str) -> list[str] | None:
    """Segments of a numbered list whose numbers count up by one from 0 or 1; None if there is none."""
    starts, expected = [], None
    for m in _MARKER.finditer(text):
        value = int(m.group(1))
        if (expected is None and value in (0, 1)) or value == expected:
            starts.append((m.start(), m.end()))
            expected = value + 1
    if len(starts) < 1:
        return None
    bounds = [s for s, _ in starts[1:]] + [len(text)]
    # Only the first line of a segment counts: text after a line break is commentary.
    return [text[e:b].strip().split("\n", 1)[0] for (_, e), b in zip(starts, bounds)]


def _bullets(text: str) -> list[str] | None:
    found = [m.group(1) for m in map(_BULLET.match, text.splitlines()) if m]
    return found or None


def _first_clauses(items: list[str]) -> list[str]:
    """In a list of several items, text after a comma is commentary; a single item may be a comma list."""
    if len(items) == 1:
        return re.split(r"[,;]", items[0])
    return [re.split(r"[,;]", item, maxsplit=1)[0] for item in items]


def _separated(text: str) -> list[str]:
    """A comma/semicolon list: the first non-empty line (later lines are commentary)."""
    line = next((ln for ln in text.splitlines() if ln.strip()), "")
    return re.split(r"[,;]", line)


def clean_keyword(raw: str) -> str:
    """One candidate without quotes, emphasis, a trailing explanation or a leading 'and'; '' if junk."""
    text = "".join(ch for ch in raw if ch in "\t\n" or unicodedata.category(ch)[0] != "C")
    text = text.strip().strip(_EDGE_JUNK)
    m = _EXPLANATION.search(text)
    if m:
        text = text[:m.start()]
    text = _LEADING_CONJ.sub("", text.strip(_EDGE_JUNK))
    text = re.sub(r"\s+", " ", text).strip(_EDGE_JUNK).strip()
    if not _HAS_WORD.search(text) or len(text) > MAX_KEYWORD_CHARS or len(text.split()) > MAX_KEYWORD_WORDS:
        return ""
    return text


def parse_keywords(text, n: int = 8, prefix: str = KEYWORDS_PREFIX) -> ParsedKeywords:
    """Keywords from an LLM answer; never raises.

    Args:
        text: the generated continuation (with or without the echoed assistant prefix).
        n: maximum number of keywords kept (the number asked for).
        prefix: the assistant prefix the prompt ended with.
    Returns:
        ParsedKeywords; ok is False when nothing usable was found, reason says why or what was odd.
    """
    if not isinstance(text, str) or not text.strip():
        return ParsedKeywords([], False, "empty output")
    body = _cut(text, prefix)
    candidates, form = _numbered(body), "numbered list"
    if candidates is None:
        candidates, form = _bullets(body), "bullet list"
    if candidates is not None:
        candidates = _first_clauses(candidates)
    else:
        if _REFUSAL.search(body):
            return ParsedKeywords([], False, "refusal or apology instead of keywords")
        candidates, form = _separated(body), "comma list"
        if len(candidates) == 1 and n > 1:
            return ParsedKeywords([], False, "no keyword list found")
    keywords, seen, dropped = [], set(), 0
    for raw in candidates:
        kw = clean_keyword(raw)
        if not kw:
            dropped += 1
        elif kw.casefold() not in seen:
            seen.add(kw.casefold())
            keywords.append(kw)
    found = len(keywords)
    keywords = keywords[:max(int(n), 0)]
    if not keywords:
        return ParsedKeywords([], False, f"no usable keywords in the {form}")
    notes = [form]
    if found > len(keywords):
        notes.append(f"{found} keywords found, kept the first {len(keywords)}")
    if len(keywords) < n:
        notes.append(f"{len(keywords)} of {n} keywords")
    if dropped:
        notes.append(f"{dropped} unusable item(s) dropped")
    return ParsedKeywords(keywords, True, "; ".join(notes))
