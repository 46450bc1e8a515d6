"""A user's liked history as the PMG prompts see it: selection, serialization, fingerprint.

Follows the original code: liked movies (rating >= 4) ordered by rating, then recency (both
descending); each item serialized as ``"<i>. <title>(<genres>): <kw1>, ..., <kw5>."`` with i counted
from 0, genres pipe-joined as in movies.csv, the year stripped from the title, items separated by one
space. Every data field is sanitized and capped (see prompts.sanitize_field).
"""
from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from datetime import date, datetime, timezone
from typing import Any, Callable, Iterable, Mapping, Sequence

from tasks.pmg.prompts import MAX_TITLE_CHARS, genres_text, prompt_version, sanitize_field

ROW_FIELDS = ("movie_id", "title", "genres", "rating", "rated_at")
LIKED_RATING = 4.0
MAX_KEYWORD_CHARS = 40
FINGERPRINT_VERSION = 1  # bump when the fingerprint's recipe changes

_YEAR = re.compile(r"^(.*?)\s*\(\s*\d{4}(?:\s*[-\u2013]\s*\d{0,4})?\s*\)\s*$")
_LIST_SEPARATORS = re.compile(r"[,;]")


@dataclass(frozen=True)
class HistoryItem:
    """One liked movie of a user's history."""
    movie_id: int
    title: str
    genres: tuple[str, ...]
    rating: float
    rated_at: Any  # datetime (naive = UTC), epoch seconds, ISO string, or None if unknown


def _as_item(row) -> HistoryItem:
    if isinstance(row, HistoryItem):
        return row
    values = [row.get(f) for f in ROW_FIELDS] if isinstance(row, Mapping) else list(row)[:5]
    if len(values) < 5:
        raise ValueError(f"a history row needs {', '.join(ROW_FIELDS)}; got {row!r}")
    movie_id, title, genres, rating, rated_at = values
    if isinstance(genres, str):
        genres = genres.split("|")
    return HistoryItem(int(movie_id), str(title or ""), tuple(genres or ()), float(rating), rated_at)


def epoch_seconds(value) -> float | None:
    """A timestamp as seconds since the epoch; naive datetimes are read as UTC, None stays None."""
    if value is None:
        return None
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    if isinstance(value, datetime):
        if value.tzinfo is None:
            value = value.replace(tzinfo=timezone.utc)
        return value.timestamp()
    if isinstance(value, date):
        return datetime(value.year, value.month, value.day, tzinfo=timezone.utc).timestamp()
    raise ValueError(f"cannot read {value!r} as a timestamp")


def select_history(rows: Iterable, n: int = 5, min_rating: float | None = LIKED_RATING) -> list[HistoryItem]:
    """The user's `n` liked movies, by rating then recency (descending), ties by movie id.

    Args:
        rows: dicts or tuples with movie_id, title, genres (list or "A|B"), rating, rated_at.
        n: history length; min_rating: liked threshold (None keeps every rating).
    Returns:
        At most `n` items; a movie rated twice counts once (its best, newest rating).
    """
    items = [_as_item(r) for r in rows]
    if min_rating is not None:
        items = [it for it in items if it.rating >= min_rating]

    def order(it: HistoryItem):
        ts = epoch_seconds(it.rated_at)
        return (-it.rating, -(ts if ts is not None else float("-inf")), it.movie_id)

    chosen, seen = [], set()
    for it in sorted(items, key=order):
        if it.movie_id not in seen:
            seen.add(it.movie_id)
            chosen.append(it)
    return chosen[:n]


def strip_year(title: str) -> str:
    """'Toy Story (1995) ' -> 'Toy Story', as the original's regex; titles without a year are kept."""
    title = (title or "").strip()
    m = _YEAR.match(title)
    return m.group(1).strip() if m and m.group(1).strip() else title


def clean_title(title) -> str:
    """Title without its year, sanitized and capped (the year is stripped after newlines are folded)."""
    return sanitize_field(strip_year(sanitize_field(title, 10 * MAX_TITLE_CHARS)), MAX_TITLE_CHARS)


def clean_keywords(keywords: Iterable[str] | None, n: int) -> list[str]:
    """The first `n` non-empty keywords, sanitized, capped, list separators removed."""
    out = []
    for kw in keywords or ():
        kw = sanitize_field(_LIST_SEPARATORS.sub(" ", str(kw)), MAX_KEYWORD_CHARS)
        if kw:
            out.append(kw)
        if len(out) == n:
            break
    return out


def serialize_item(item, keywords: Iterable[str] | None = None, n_keywords: int = 5) -> str:
    """'<title>(<genres>): kw1, kw2.'; without keywords just '<title>(<genres>).'."""
    item = _as_item(item)
    head = f"{clean_title(item.title)}({genres_text(item.genres)})"
    kws = clean_keywords(keywords, n_keywords)
    return f"{head}: {', '.join(kws)}." if kws else f"{head}."


def serialize_items(items: Iterable, item_keywords: Mapping[int, list[str]] | None = None,
                    n_keywords: int = 5) -> str:
    """The history block of the preference and soft prompts: '0. A(..): ... 1. B(..): ...'."""
    item_keywords = item_keywords or {}
    parts = []
    for i, item in enumerate(items):
        item = _as_item(item)
        parts.append(f"{i}. {serialize_item(item, item_keywords.get(item.movie_id), n_keywords)}")
    return " ".join(parts)


def fit_items(items: Sequence, item_keywords: Mapping[int, list[str]] | None, prompt_of: Callable[[str], str],
              n_tokens: Callable[[str], int], budget: int) -> tuple[list, str]:
    """The longest prefix of a best-first history whose prompt fits in `budget` tokens, and its text.

    Histories are ordered best first, so the items dropped are the user's least-liked; at least one item
    is always kept (a prompt that still does not fit then fails with the model's own error).
    """
    items = list(items)
    for k in range(len(items), 1, -1):
        text = serialize_items(items[:k], item_keywords)
        if n_tokens(prompt_of(text)) <= budget:
            return items[:k], text
    return items[:1], serialize_items(items[:1], item_keywords)


def fit_to_model(lm, items: Sequence, item_keywords: Mapping[int, list[str]] | None,
                 prompt_of: Callable[[str], str], max_new_tokens: int) -> tuple[list, str]:
    """fit_items with the budget of a loaded LLM: its context minus the tokens it will generate."""
    return fit_items(items, item_keywords, prompt_of, lambda text: len(lm.tokenizer.encode(text, bos=True)),
                     lm.config.max_position_embeddings - max_new_tokens)


def history_fingerprint(items: Iterable, n: int = 5, version: str | None = None) -> str:
    """sha256 over the ordered (movie_id, rating, rated_at) list, the history length and the prompt version.

    `version` defaults to the vicuna style's prompt version; timestamps are normalised to epoch
    seconds, so a datetime and the equivalent epoch number give the same fingerprint.
    """
    entries = []
    for it in map(_as_item, items):
        ts = epoch_seconds(it.rated_at)
        entries.append([it.movie_id, repr(float(it.rating)), None if ts is None else repr(float(ts))])
    payload = {"fingerprint": FINGERPRINT_VERSION, "n": int(n), "prompt": version or prompt_version("vicuna"),
               "items": entries}
    blob = json.dumps(payload, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()
