"""MovieLens parsing rules on a hand-written dataset, in LF, CRLF, BOM and zip variants."""
from __future__ import annotations

import zipfile
from pathlib import Path

import pytest

from warehouse.db import connect_writer
from warehouse.ingest import ingest

MOVIES = [
    "movieId,title,genres",
    '1,"American President, The (1995)",Comedy|Drama|Romance',
    '2,"Sister ""Act"" (1992)",Comedy',
    "3,Babylon 5,Sci-Fi",
    "4,Moonlight (2016) ,Drama",
    "5,Death Note: Desu nôto (2006–2007),(no genres listed)",
    "6,Amélie (Fabuleux destin d'Amélie Poulain  Le) (2001),Comedy|Romance",
    "7,Cosmos,Documentary|IMAX",
    "8,Ready Player One (2018),Action|Children|Film-Noir",
]
LINKS = ["movieId,imdbId,tmdbId", "1,0112346,9087", "2,0105417,", "3,0105946,", "4,4975722,376867",
         "5,0877057,13916", "6,0211915,194", "7,0081846,", "8,1677720,333339"]
RATINGS = ["userId,movieId,rating,timestamp", "1,1,4.0,964982703", "1,5,0.5,964982224", "2,8,5.0,1537799250"]
TAGS = ["userId,movieId,tag,timestamp", '1,1,"politics, satire",1445714994', '2,8,"""quoted""",1445714995',
        "2,6,Paris,1445715000"]
FILES = {"movies.csv": MOVIES, "links.csv": LINKS, "ratings.csv": RATINGS, "tags.csv": TAGS}


def write(directory: Path, newline: str = "\n", bom: bool = False) -> Path:
    directory.mkdir(parents=True)
    for name, lines in FILES.items():
        data = newline.join(lines) + newline
        (directory / name).write_bytes((b"\xef\xbb\xbf" if bom else b"") + data.encode("utf-8"))
    return directory


def rows(root: Path, sql: str) -> list[tuple]:
    with connect_writer(root) as con:
        return con.execute(sql).fetchall()


@pytest.fixture(scope="module", params=["lf", "crlf", "bom-crlf", "zip"])
def loaded(request, tmp_path_factory) -> Path:
    base = tmp_path_factory.mktemp(request.param)
    if request.param == "zip":
        src = write(base / "dir")
        source = base / "ml.zip"
        with zipfile.ZipFile(source, "w") as zf:
            for name in FILES:
                zf.write(src / name, f"ml-latest-small/{name}")
    else:
        source = write(base / "src", "\r\n" if "crlf" in request.param else "\n", bom="bom" in request.param)
    report = ingest(source, base / "wh")
    assert report.rows_rejected == 0 and report.rows_loaded == 8 + 8 + 3 + 3
    return base / "wh"


def test_titles_years_and_genres(loaded):
    got = rows(loaded, "select movie_id, title, year, genres from movies order by movie_id")
    assert got == [
        (1, "American President, The (1995)", 1995, ["Comedy", "Drama", "Romance"]),
        (2, 'Sister "Act" (1992)', 1992, ["Comedy"]),
        (3, "Babylon 5", None, ["Sci-Fi"]),
        (4, "Moonlight (2016)", 2016, ["Drama"]),
        (5, "Death Note: Desu nôto (2006–2007)", 2006, []),
        (6, "Amélie (Fabuleux destin d'Amélie Poulain  Le) (2001)", 2001, ["Comedy", "Romance"]),
        (7, "Cosmos", None, ["Documentary", "IMAX"]),
        (8, "Ready Player One (2018)", 2018, ["Action", "Children", "Film-Noir"]),
    ]


def test_links_keep_padding_and_null_tmdb(loaded):
    got = rows(loaded, "select movie_id, imdb_id, tmdb_id from links order by movie_id")
    assert got[0] == (1, "0112346", 9087)
    assert got[1] == (2, "0105417", None)
    assert [r[2] is None for r in got].count(True) == 3


def test_ratings_and_tags(loaded):
    got = rows(loaded, "select user_id, movie_id, rating, strftime(rated_at, '%Y-%m-%d %H:%M:%S') from ratings order by all")
    assert got == [(1, 1, 4.0, "2000-07-30 18:45:03"), (1, 5, 0.5, "2000-07-30 18:37:04"), (2, 8, 5.0, "2018-09-24 14:27:30")]
    tags = rows(loaded, "select tag from tags order by user_id, movie_id")
    assert tags == [("politics, satire",), ("Paris",), ('"quoted"',)]


def test_types_are_the_contract(loaded):
    types = dict(rows(loaded, "select table_name || '.' || column_name, data_type from information_schema.columns"
                              " where table_name in ('movies', 'ratings', 'tags', 'links')"))
    assert types["movies.genres"] == "VARCHAR[]"
    assert types["ratings.rated_at"] == "TIMESTAMP"
    assert types["tags.tagged_at"] == "TIMESTAMP"
    assert types["links.imdb_id"] == "VARCHAR"
