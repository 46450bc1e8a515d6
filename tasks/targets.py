"""Which users and which target movies a run works on.

Users: all rated users, a file of ids (`--users FILE`), and/or the first N (`--limit-users N`).
Targets: given movies for every user (`--movie`), each user's held-out liked movie (`--targets
holdout`, the evaluation protocol: the movie is left out of the user's history), or explicit
(user, movie) pairs from an external recommender (`--targets FILE`, CSV or Parquet).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import duckdb
import pandas as pd

from warehouse.ledger import sql

LIKED = 4.0


@dataclass
class Selection:
    users: list[int]
    pairs: list[tuple[int, int]]                          # (user_id, target_movie_id)
    exclude: dict[int, int] = field(default_factory=dict)  # user -> held-out movie left out of the history
    users_without_target: int = 0


def read_ids(path: Path | str, columns: tuple[str, ...]) -> pd.DataFrame:
    """Integer id columns from a CSV (header row) or Parquet file; one clear error if unusable."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{path} does not exist; pass a CSV or Parquet file with columns {', '.join(columns)}")
    reader = "read_parquet" if path.suffix.lower() in (".parquet", ".pq") else "read_csv"
    con = duckdb.connect()
    try:
        rel = con.sql(f"SELECT * FROM {reader}(?)", params=[str(path)])
        names = [c.lower() for c in rel.columns]
        if len(columns) == 1 and len(names) == 1:
            names = list(columns)
        missing = [c for c in columns if c not in names]
        if missing:
            raise ValueError(f"{path} has columns {rel.columns}; it needs {', '.join(columns)}")
        frame = rel.df()
    except duckdb.Error as e:
        raise ValueError(f"cannot read {path} as {'Parquet' if reader == 'read_parquet' else 'CSV'}: "
                         f"{str(e).splitlines()[0]}") from None
    finally:
        con.close()
    frame.columns = names
    try:
        return frame[list(columns)].astype("int64")
    except (TypeError, ValueError):
        raise ValueError(f"{path}: columns {', '.join(columns)} must hold integer ids") from None


def _check_one_kind(targets: str | None, movies: list[int] | None) -> None:
    if bool(targets) == bool(movies):
        raise ValueError("choose the targets: --movie ID[,ID] or --targets holdout|FILE (exactly one)")


def check_request(targets: str | None, movies: list[int] | None, users_file=None,
                  limit: int | None = None) -> None:
    """Argument checks that need no warehouse, so the CLI can refuse a bad request before starting Prefect."""
    _check_one_kind(targets, movies)
    if limit is not None and limit < 1:
        raise ValueError(f"--limit-users must be at least 1, got {limit}")
    if targets and targets != "holdout":
        read_ids(targets, ("user_id", "movie_id"))
    if users_file:
        read_ids(users_file, ("user_id",))


def select_users(con, users_file=None, limit: int | None = None) -> list[int]:
    """Rated users, optionally only those in `users_file`, then the first `limit` by id."""
    users = [r[0] for r in con.execute(sql("pipeline_users")).fetchall()]
    if users_file:
        wanted = set(read_ids(users_file, ("user_id",))["user_id"].tolist())
        unknown = wanted - set(users)
        if unknown and len(unknown) == len(wanted):
            raise ValueError(f"none of the users in {users_file} has ratings in the warehouse "
                             f"(e.g. {sorted(unknown)[:3]}); ingest first or check the file")
        users = [u for u in users if u in wanted]
    if limit is not None:
        if limit < 1:
            raise ValueError(f"--limit-users must be at least 1, got {limit}")
        users = users[:limit]
    return users


def select_targets(con, users: list[int], targets: str | None = None, movies: list[int] | None = None) -> Selection:
    """Pairs for `users`: holdout, a FILE of (user_id, movie_id), or `movies` for every user."""
    _check_one_kind(targets, movies)  # (not check_request: it would read a targets file a second time)
    if movies:
        _check_movies(con, movies)
        return Selection(users, [(u, m) for u in users for m in movies])
    if targets == "holdout":
        held = _holdout(con, users)
        return Selection([u for u in users if u in held], sorted(held.items()), dict(held),
                         len(users) - len(held))
    frame = read_ids(targets, ("user_id", "movie_id"))
    _check_movies(con, sorted(set(frame["movie_id"].tolist())))
    keep = set(users)
    pairs = sorted({(int(u), int(m)) for u, m in zip(frame["user_id"], frame["movie_id"]) if u in keep})
    chosen = sorted({u for u, _ in pairs})
    return Selection(chosen, pairs, {}, len(users) - len(chosen))


def _holdout(con, users: list[int]) -> dict[int, int]:
    con.register("selected", pd.DataFrame({"user_id": pd.Series(users, dtype="int64")}))
    try:
        rows = con.execute(sql("pipeline_holdout"), {"min_rating": LIKED}).fetchall()
    finally:
        con.unregister("selected")
    return {int(u): int(m) for u, m in rows}


def _check_movies(con, movies: list[int]) -> None:
    con.register("ids", pd.DataFrame({"movie_id": pd.Series(movies, dtype="int64")}))
    try:
        found = {r[0] for r in con.execute(sql("pipeline_movies")).fetchall()}
    finally:
        con.unregister("ids")
    missing = [m for m in movies if m not in found]
    if missing:
        raise ValueError(f"movie id(s) {missing[:5]} are not in the warehouse; check the ids or ingest first")


def histories(con, sel: Selection, n: int) -> dict[int, list[dict]]:
    """Per user: the n liked history items (movie_id, title, genres, rating, rated_at), held-out movie left out."""
    frame = pd.DataFrame({"user_id": pd.Series(sel.users, dtype="int64"),
                          "exclude_movie_id": pd.Series([sel.exclude.get(u) for u in sel.users], dtype="Int64")})
    con.register("selected", frame)
    try:
        cur = con.execute(sql("pipeline_history"), {"min_rating": LIKED, "n": n})
        rows = cur.fetchall()
    finally:
        con.unregister("selected")
    out: dict[int, list[dict]] = {u: [] for u in sel.users}
    for user_id, movie_id, title, genres, rating, rated_at in rows:
        out[user_id].append({"movie_id": movie_id, "title": title or "", "genres": list(genres or []),
                             "rating": float(rating), "rated_at": rated_at.isoformat() if rated_at else None})
    return out
