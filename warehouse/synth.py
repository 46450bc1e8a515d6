"""Synthetic MovieLens-format datasets (same files, headers and quirks as ml-latest-small / ml-25m).

Users have coherent tastes: `user_taste(seed, user_id)` (a pure function, also written to
synth_truth.json) names the genres a user likes and dislikes; those genres drive which movies the
user rates, how highly, and what the user tags, so later stages have signal to recover.
Ratings are written in chunks of users, so memory stays bounded at ml-25m scale.
"""
from __future__ import annotations

import json
import shutil
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from warehouse.errors import WarehouseError

# ml-latest-small genre frequencies (DESIGN §5); "(no genres listed)" and IMAX are handled apart.
GENRE_COUNTS = {
    "Drama": 4361, "Comedy": 3756, "Thriller": 1894, "Action": 1828, "Romance": 1596, "Adventure": 1263,
    "Crime": 1199, "Sci-Fi": 980, "Horror": 978, "Fantasy": 779, "Children": 664, "Animation": 611,
    "Mystery": 573, "Documentary": 440, "War": 382, "Musical": 334, "Western": 167, "Film-Noir": 87,
}
NO_GENRES = "(no genres listed)"
GENRES_PER_MOVIE_P = (0.35, 0.33, 0.2, 0.08, 0.04)   # 1..5 genres per movie
IMAX_P = 0.016
IMAX = "IMAX"
GENRES = list(GENRE_COUNTS)  # taste genres (IMAX is a format, not a taste)
GENRE_TAGS = {
    "Drama": ["emotional", "character study", "tearjerker", "based on a true story"],
    "Comedy": ["funny", "hilarious", "witty", "dark comedy"],
    "Thriller": ["suspense", "twist ending", "tense", "plot twist"],
    "Action": ["explosions", "car chase", "fight scenes", "martial arts"],
    "Romance": ["love story", "romantic", "chick flick", "bittersweet"],
    "Adventure": ["epic", "quest", "treasure", "journey"],
    "Crime": ["heist", "mafia", "gangsters", "detective"],
    "Sci-Fi": ["space", "aliens", "dystopia", "time travel"],
    "Horror": ["scary", "gore", "zombies", "haunted house"],
    "Fantasy": ["magic", "dragons", "fairy tale", "wizards"],
    "Children": ["family", "kids", "talking animals", "coming of age"],
    "Animation": ["pixar", "anime", "hand drawn", "stop motion"],
    "Mystery": ["whodunit", "clever", "mindfuck", "noir-ish"],
    "Documentary": ["informative", "history", "nature", "music documentary"],
    "War": ["world war ii", "vietnam", "anti-war", "military"],
    "Musical": ["singing", "dance", "broadway", "soundtrack"],
    "Western": ["cowboys", "gunfight", "frontier", "spaghetti western"],
    "Film-Noir": ["femme fatale", "black and white", "hardboiled", "atmospheric"],
}
WORDS_A = ["Last", "Silent", "Broken", "Golden", "Dark", "Lost", "Wild", "Secret", "Little", "Final", "Red",
           "Blue", "Hidden", "Burning", "Electric", "Frozen", "Midnight", "Crimson", "Quiet", "Savage"]
WORDS_B = ["Road", "Sky", "River", "City", "Heart", "Dream", "Storm", "Garden", "Empire", "Island", "Mirror",
           "Shadow", "Station", "Kingdom", "Summer", "Winter", "Machine", "Promise", "Horizon", "Circus"]
WORDS_INTL = ["Amélie", "Café", "Señor", "Über", "Nôto", "Smörgåsbord", "Ça", "Léon", "Jalapeño", "Fräulein"]
T0, T1 = 828_124_615, 1_537_799_250  # ml-latest-small timestamp range (epoch seconds)
HEADERS = {"movies.csv": "movieId,title,genres", "ratings.csv": "userId,movieId,rating,timestamp",
           "tags.csv": "userId,movieId,tag,timestamp", "links.csv": "movieId,imdbId,tmdbId"}
USERS_PER_CHUNK = 2000
RATING_TEXT = np.array([f"{i / 2:.1f}" for i in range(11)], dtype=object)  # half stars as MovieLens writes them


@dataclass(frozen=True)
class Taste:
    liked: tuple[str, ...]     # genres rated higher and tagged
    disliked: tuple[str, ...]  # genres mostly avoided and rated lower


_SQRT_COUNTS = np.sqrt(np.array([GENRE_COUNTS[g] for g in GENRES], dtype=float))
TASTE_P = _SQRT_COUNTS / _SQRT_COUNTS.sum()  # genres by √frequency: rare tastes are not drowned by Drama


def user_taste(seed: int, user_id: int) -> Taste:
    """The genres a synthetic user likes and dislikes (pure: same seed and id, same taste)."""
    rng = np.random.default_rng([seed, 7, user_id])
    n_liked = 2 if rng.random() < 0.6 else 3
    idx = rng.choice(len(GENRES), n_liked + 1, replace=False, p=TASTE_P)
    return Taste(tuple(GENRES[i] for i in idx[:n_liked]), (GENRES[idx[-1]],))


@dataclass(frozen=True)
class Catalog:
    ids: np.ndarray         # movieId per movie (increasing, with gaps)
    bits: np.ndarray        # genre bitmask per movie (bit i = GENRES[i])
    quality: np.ndarray     # per-movie rating offset
    cum_all: np.ndarray     # cumulative popularity over all movies
    by_genre: list          # per genre: (movie indices, cumulative popularity)


def synthesize(out: Path | str, users: int = 610, movies: int = 9742, ratings: int = 100_836, seed: int = 0,
               crlf: bool = False, zip: bool = False) -> Path:
    """Write a MovieLens-format dataset to directory OUT (or OUT.zip with zip=True); returns its path."""
    out = Path(out)
    if users < 1 or movies < 40:
        raise WarehouseError("synth needs at least 1 user and 40 movies")
    if ratings < 20 * users:
        raise WarehouseError(f"synth needs at least 20 ratings per user: {users} users need --ratings >= {20 * users}")
    if ratings > users * movies // 2:
        raise WarehouseError(f"too many ratings: {users} users can rate at most {users * movies // 2} of {movies} movies")
    target = out.with_name(out.name.removesuffix(".zip")) if zip else out
    directory = target.with_name(target.name + ".tmp") if zip else target
    directory.mkdir(parents=True, exist_ok=True)
    newline = "\r\n" if crlf else "\n"
    rng = np.random.default_rng([seed, 1])
    movie_frame, catalog = make_movies(rng, movies)
    write_frame(directory / "movies.csv", movie_frame, newline)
    write_frame(directory / "links.csv", make_links(rng, catalog.ids), newline)
    counts = rating_counts(rng, users, ratings, movies)
    write_ratings_and_tags(directory, catalog, counts, seed, newline)
    truth = {"seed": seed, "users": {str(u): user_taste(seed, u).__dict__ for u in range(1, users + 1)}}
    (directory / "synth_truth.json").write_text(json.dumps(truth), encoding="utf-8")
    if not zip:
        return directory
    archive = target.with_name(target.name + ".zip")
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as zf:
        for file in sorted(directory.iterdir()):
            zf.write(file, f"{target.name}/{file.name}")
    shutil.rmtree(directory)
    return archive


def write_frame(path: Path, frame: pd.DataFrame, newline: str, mode: str = "w") -> None:
    frame.to_csv(path, index=False, header=(mode == "w"), lineterminator=newline, mode=mode, encoding="utf-8")


def make_movies(rng: np.random.Generator, n: int) -> tuple[pd.DataFrame, Catalog]:
    """Movies with MovieLens title and genre quirks, and the sampling catalog behind them."""
    ids = np.cumsum(1 + rng.poisson(0.6, n) + (rng.random(n) < 0.02) * rng.integers(10, 500, n))
    weights = np.array([GENRE_COUNTS[g] for g in GENRES], dtype=float)
    k = rng.choice([1, 2, 3, 4, 5], n, p=GENRES_PER_MOVIE_P)
    # k genres per movie without replacement, weighted: Gumbel top-k, vectorised over movies
    keys = np.log(weights) + rng.gumbel(size=(n, len(GENRES)))
    order = np.argsort(-keys, axis=1)
    taken = np.arange(len(GENRES))[None, :] < k[:, None]
    bits = np.where(taken, np.left_shift(1, order), 0).sum(axis=1).astype(np.int64)
    imax = rng.random(n) < IMAX_P
    no_genres = rng.random(n) < 0.0035
    no_genres[n // 2] = True
    bits[no_genres] = 0
    genre_text = [NO_GENRES if no_genres[i] else
                  "|".join(sorted([GENRES[j] for j in range(len(GENRES)) if bits[i] >> j & 1] + ([IMAX] if imax[i] else [])))
                  for i in range(n)]
    popularity = rng.lognormal(0.0, 1.3, n)
    by_genre = []
    for j in range(len(GENRES)):
        members = np.flatnonzero(bits & (1 << j))
        by_genre.append((members, np.cumsum(popularity[members])))
    catalog = Catalog(ids, bits, rng.normal(0.0, 0.35, n), np.cumsum(popularity), by_genre)
    return pd.DataFrame({"movieId": ids, "title": make_titles(rng, n), "genres": genre_text}), catalog


def make_titles(rng: np.random.Generator, n: int) -> list[str]:
    """'Name (YYYY)', with the odd cases of the real data at fixed and random positions."""
    years = (2018 - np.minimum(rng.exponential(18.0, n), 115)).astype(int)
    intl = rng.random(n) < 0.02
    first = np.where(intl, rng.integers(0, len(WORDS_INTL), n), rng.integers(0, len(WORDS_A), n))
    second = rng.integers(0, len(WORDS_B), n)
    style, part, quirk = rng.random(n), rng.integers(2, 5, n), rng.random(n)
    odd = {n // 7: "{name}", n // 5: "{name} ({year}) ", n // 3: "{name}: Désu ({year}–{next})"}
    titles = []
    for i in range(n):
        a = WORDS_INTL[first[i]] if intl[i] else WORDS_A[first[i]]
        b, year = WORDS_B[second[i]], int(years[i])
        name = f"{a} {b}"
        if style[i] < 0.15:
            name = f"{b}, The"                        # article-suffix style, CSV-quoted
        elif style[i] < 0.17:
            name = f'{a} "{b}"'                       # embedded quotes
        elif style[i] < 0.20:
            name = f"{name}, Part {part[i]}"
        if i in odd:
            titles.append(odd[i].format(name=name, year=year, next=year + 1))
        elif quirk[i] < 0.0013:
            titles.append(name)                       # no year
        elif quirk[i] > 0.999:
            titles.append(f"{name} ({year}) ")        # trailing space
        else:
            titles.append(f"{name} ({year})")
    return titles


def make_links(rng: np.random.Generator, ids: np.ndarray) -> pd.DataFrame:
    n = len(ids)
    imdb = [f"{v:07d}" for v in rng.choice(3_000_000, n, replace=False) + 10_000]
    tmdb = pd.array(rng.choice(500_000, n, replace=False) + 2, dtype="Int64")
    missing = rng.random(n) < 0.0008
    missing[n // 4] = True
    tmdb[missing] = pd.NA
    return pd.DataFrame({"movieId": ids, "imdbId": imdb, "tmdbId": tmdb})


def rating_counts(rng: np.random.Generator, users: int, total: int, movies: int) -> np.ndarray:
    """Heavy-tailed ratings per user, each >= 20 and <= movies / 2, summing exactly to total."""
    cap = movies // 2
    extra = rng.lognormal(0.0, 1.45, users)
    counts = np.full(users, 20, dtype=np.int64)
    remaining = total - 20 * users
    while remaining > 0:
        open_ = np.flatnonzero(counts < cap)
        share = np.floor(extra[open_] / extra[open_].sum() * remaining).astype(np.int64)
        add = np.minimum(share, cap - counts[open_])
        if add.sum() == 0:  # the last few: one more each for the heaviest users with room
            add = np.zeros_like(add)
            add[np.argsort(-extra[open_])[:remaining]] = 1
        counts[open_] += add
        remaining = total - int(counts.sum())
    return counts


def write_ratings_and_tags(directory: Path, catalog: Catalog, counts: np.ndarray, seed: int, newline: str) -> None:
    """Append ratings and tags chunk by chunk of users (bounded memory)."""
    tag_rate = 0.0365 / 0.1  # about 10% of users tag, 3.65 tags per 100 ratings overall
    for name, mode in (("ratings.csv", "w"), ("tags.csv", "w")):
        (directory / name).write_text(HEADERS[name] + newline, encoding="utf-8")
    for start in range(0, len(counts), USERS_PER_CHUNK):
        parts, tag_parts = [], []
        for user_id in range(start + 1, min(start + USERS_PER_CHUNK, len(counts)) + 1):
            rng = np.random.default_rng([seed, 2, user_id])
            taste = user_taste(seed, user_id)
            rows = user_ratings(rng, catalog, taste, int(counts[user_id - 1]))
            parts.append((user_id, *rows))
            if rng.random() < 0.1:
                tag_parts.append(user_tags(rng, catalog, taste, user_id, *rows, tag_rate))
        frame = pd.DataFrame({
            "userId": np.concatenate([np.full(len(p[1]), p[0]) for p in parts]),
            "movieId": np.concatenate([catalog.ids[p[1]] for p in parts]),
            "rating": RATING_TEXT[(np.concatenate([p[2] for p in parts]) * 2).astype(np.int64)],
            "timestamp": np.concatenate([p[3] for p in parts]),
        })
        frame.to_csv(directory / "ratings.csv", index=False, header=False, lineterminator=newline, mode="a")
        tag_parts = [t for t in tag_parts if len(t)]
        if tag_parts:
            write_frame(directory / "tags.csv", pd.concat(tag_parts), newline, mode="a")


def user_ratings(rng: np.random.Generator, catalog: Catalog, taste: Taste, n: int):
    """n distinct movies (index order) the user rated, their half-star ratings and epoch-second times."""
    liked = [GENRES.index(g) for g in taste.liked]
    liked_bits = sum(1 << j for j in liked)
    disliked_bits = sum(1 << GENRES.index(g) for g in taste.disliked)
    chosen = np.empty(0, dtype=np.int64)
    while len(chosen) < n:
        draws = max(2 * (n - len(chosen)), 16)
        from_liked = rng.random(draws) < 0.55
        picks = np.searchsorted(catalog.cum_all, rng.random(draws) * catalog.cum_all[-1])
        genre = rng.choice(liked, draws)
        for j in liked:
            members, cum = catalog.by_genre[j]
            sel = from_liked & (genre == j)
            if len(members) and sel.any():
                picks[sel] = members[np.searchsorted(cum, rng.random(sel.sum()) * cum[-1])]
        picks = np.minimum(picks, len(catalog.ids) - 1)
        avoid = (catalog.bits[picks] & disliked_bits != 0) & (rng.random(draws) < 0.7)
        chosen = np.union1d(chosen, picks[~avoid])
    movies = np.sort(rng.permutation(chosen)[:n])
    likes = (catalog.bits[movies] & liked_bits) != 0
    dislikes = (catalog.bits[movies] & disliked_bits) != 0
    score = 3.05 + catalog.quality[movies] + 0.8 * likes - 1.0 * dislikes + rng.normal(0.1, 0.3) + rng.normal(0, 0.7, n)
    whole = rng.random(n) < 0.6
    rating = np.where(whole, np.clip(np.round(score), 1, 5), np.clip(np.round(score * 2) / 2, 0.5, 5))
    begin = rng.integers(T0, T1 - 86_400)
    span = min(int(rng.lognormal(16.0, 1.5)), T1 - begin)
    times = begin + rng.integers(0, max(span, 1), n)
    return movies, rating, times


def user_tags(rng, catalog: Catalog, taste: Taste, user_id: int, movies, rating, times, tag_rate: float) -> pd.DataFrame:
    """Tags from the user's liked genres on movies they rated highly (and the odd unrated one)."""
    k = int(min(rng.lognormal(np.log(max(len(movies) * tag_rate, 1.0)), 1.0), 3 * len(movies)))
    candidates = movies[(rating >= 4.0) & ((catalog.bits[movies] & sum(1 << GENRES.index(g) for g in taste.liked)) != 0)]
    if k == 0 or len(candidates) == 0:
        return pd.DataFrame()
    picked = rng.choice(candidates, k)
    if rng.random() < 0.2:
        picked[0] = rng.integers(0, len(catalog.ids))  # a movie tagged but never rated by this user
    genre = rng.integers(0, len(taste.liked), k)
    word = rng.integers(0, 4, k)
    words = [GENRE_TAGS[taste.liked[g]][w] for g, w in zip(genre, word)]
    if rng.random() < 0.02:
        words[0] = 'dark, "gritty"'
    frame = pd.DataFrame({"userId": user_id, "movieId": catalog.ids[picked], "tag": words,
                          "timestamp": times.max() + rng.integers(0, 86_400 * 30, k)})
    frame = frame.drop_duplicates(["movieId", "tag"]).sort_values(["movieId", "tag"], kind="stable")
    return frame
