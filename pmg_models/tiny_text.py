"""A small seeded MovieLens-/prompt-style English corpus, used to train tiny tokenizers at init time.

The text only has to cover the words our prompts and data use (titles, genres, keyword prompts, the
Llama-2-chat markers), so a tiny sentencepiece model tokenizes pipeline text into sensible pieces.
"""
from __future__ import annotations

import numpy as np

GENRES = ("Action", "Adventure", "Animation", "Children", "Comedy", "Crime", "Documentary", "Drama",
          "Fantasy", "Film-Noir", "Horror", "IMAX", "Musical", "Mystery", "Romance", "Sci-Fi", "Thriller",
          "War", "Western", "(no genres listed)")
TITLE_WORDS = ("The", "Last", "Night", "Star", "Love", "Story", "King", "City", "Dark", "Man", "Woman", "War",
               "House", "Blue", "Red", "Dream", "Summer", "Winter", "Lost", "Return", "Secret", "Journey",
               "Island", "River", "Ghost", "Time", "Girl", "Boy", "Street", "Money", "Heart", "Shadow",
               "Amélie", "Léon", "Café", "Über", "Niño", "Kiss", "Moon", "Sun", "Road", "Home", "Family")
PROMPT_WORDS = ("user", "watched", "liked", "rated", "movies", "highly", "following", "describe", "their",
                "visual", "taste", "keywords", "poster", "style", "colors", "mood", "scene", "preference",
                "list", "comma", "separated", "words", "image", "bright", "dark", "vintage", "minimal",
                "dramatic", "warm", "cold", "cinematic", "painting", "photo", "illustration", "portrait",
                "landscape", "neon", "retro", "soft", "light", "answer", "only", "please", "give", "five",
                "of", "and", "a", "the", "in", "with", "for", "is", "are", "this", "that", "genre", "title")
CHAT_MARKERS = ("[INST]", "[/INST]", "<<SYS>>", "<</SYS>>", "You are a helpful assistant.")


def _title(rng: np.random.Generator) -> str:
    words = rng.choice(TITLE_WORDS, size=int(rng.integers(1, 5)))
    year = int(rng.integers(1920, 2024))
    return f"{' '.join(words)} ({year})"


def corpus(n_lines: int = 2000, seed: int = 0) -> list[str]:
    """`n_lines` lines mixing titles with genres, keyword prompts and chat markers; deterministic in `seed`."""
    rng = np.random.default_rng(seed)
    lines = []
    for i in range(n_lines):
        kind = i % 4
        if kind == 0:
            genres = "|".join(rng.choice(GENRES, size=int(rng.integers(1, 4)), replace=False))
            lines.append(f"{_title(rng)},{genres}")
        elif kind == 1:
            titles = "; ".join(_title(rng) for _ in range(int(rng.integers(2, 5))))
            lines.append(f"The user liked the following movies: {titles}. Give five keywords.")
        elif kind == 2:
            lines.append(", ".join(rng.choice(PROMPT_WORDS, size=int(rng.integers(4, 12)))))
        else:
            marker = CHAT_MARKERS[int(rng.integers(len(CHAT_MARKERS)))]
            lines.append(f"{marker} {' '.join(rng.choice(PROMPT_WORDS, size=6))} 0123456789")
    return lines
