"""The synthetic generator: MovieLens format and quirks, determinism, scale bookkeeping, tastes with signal."""
from __future__ import annotations

import zipfile

import duckdb

from tests.warehouse.conftest import SMALL, pmg
from warehouse.synth import GENRES, IMAX, NO_GENRES, synthesize, user_taste


def test_deterministic_per_seed(small_source, tmp_path):
    again = synthesize(tmp_path / "again", **SMALL)
    for name in ("movies.csv", "ratings.csv", "tags.csv", "links.csv"):
        assert (again / name).read_bytes() == (small_source / name).read_bytes()
    other = synthesize(tmp_path / "other", **{**SMALL, "seed": 4})
    assert (other / "ratings.csv").read_bytes() != (small_source / "ratings.csv").read_bytes()


def test_movielens_shape(tmp_path):
    src = synthesize(tmp_path / "ml", users=40, movies=300, ratings=4000, seed=1)
    con = duckdb.connect()
    ratings = f"read_csv('{src}/ratings.csv', header=true)"
    assert con.execute(f"select count(*), count(distinct userId) from {ratings}").fetchone() == (4000, 40)
    assert con.execute(f"select min(n) from (select count(*) n from {ratings} group by userId)").fetchone()[0] >= 20
    assert con.execute(f"select bool_and(rating * 2 = round(rating * 2) and rating between 0.5 and 5) from {ratings}").fetchone()[0]
    top = [r[0] for r in con.execute(f"select rating from {ratings} group by 1 order by count(*) desc limit 2").fetchall()]
    assert set(top) <= {3.0, 4.0, 5.0} and 4.0 in top
    keys = con.execute(f"select userId, movieId from {ratings}").fetchall()
    assert keys == sorted(keys) and len(set(keys)) == len(keys)
    movies = con.execute(f"select title, genres from read_csv('{src}/movies.csv', header=true, quote='\"')").fetchall()
    tokens = {g for _, genres in movies for g in genres.split("|")}
    assert tokens <= set(GENRES) | {IMAX, NO_GENRES} and NO_GENRES in tokens
    assert any(not t.rstrip().endswith(")") for t, _ in movies)          # titles without a year
    assert any(t.endswith(" ") for t, _ in movies)                       # trailing spaces
    assert any("," in t for t, _ in movies) and any('"' in t for t, _ in movies)
    assert any("–" in t for t, _ in movies) and any(not t.isascii() for t, _ in movies)
    links = (src / "links.csv").read_text().splitlines()
    assert any(line.endswith(",") for line in links)                     # an empty tmdbId
    assert any(line.split(",")[1].startswith("0") for line in links[1:])  # zero-padded imdbId
    assert (src / "links.csv").read_text().splitlines()[0] == "movieId,imdbId,tmdbId"


def test_tastes_drive_ratings(small_source):
    """Users rate movies of their liked genres higher than others (signal for later stages)."""
    import numpy as np
    src = small_source
    con = duckdb.connect()
    rows = con.execute(f"select r.userId, r.rating, m.genres from read_csv('{src}/ratings.csv', header=true) r"
                   f" join read_csv('{src}/movies.csv', header=true, quote='\"') m using (movieId)").fetchall()
    liked, other = [], []
    for user, rating, genres in rows:
        (liked if set(genres.split("|")) & set(user_taste(SMALL["seed"], user).liked) else other).append(rating)
    assert np.mean(liked) > np.mean(other) + 0.4
    assert user_taste(3, 7) == user_taste(3, 7) and len(user_taste(3, 7).liked) in (2, 3)


def test_cli_zip_and_crlf(tmp_path):
    result = pmg("synth", str(tmp_path / "ml"), "--users", "25", "--movies", "100", "--ratings", "600", "--zip", "--crlf",
                 check=True)
    archive = tmp_path / "ml.zip"
    assert str(archive) in result.stdout
    with zipfile.ZipFile(archive) as zf:
        names = set(zf.namelist())
        assert {"ml/movies.csv", "ml/ratings.csv", "ml/tags.csv", "ml/links.csv", "ml/synth_truth.json"} <= names
        assert zf.read("ml/ratings.csv").startswith(b"userId,movieId,rating,timestamp\r\n")
    bad = pmg("synth", str(tmp_path / "x"), "--users", "10", "--ratings", "50")
    assert bad.returncode == 1 and "at least 20 ratings per user" in bad.stderr
