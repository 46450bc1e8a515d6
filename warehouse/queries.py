"""Named SQL: `warehouse/queries/<name>.sql`, executed with DuckDB parameters (never pasted values)."""
from __future__ import annotations

import functools
import re
from pathlib import Path

import duckdb

from warehouse.errors import WarehouseError

QUERY_DIR = Path(__file__).with_name("queries")
_NAME = re.compile(r"^[a-z0-9_]+$")
_PARAM = re.compile(r"\$([A-Za-z_][A-Za-z0-9_]*)")


@functools.cache
def load(name: str) -> str:
    """The text of warehouse/queries/<name>.sql."""
    if not _NAME.match(name):
        raise WarehouseError(f"bad query name {name!r}: use lowercase letters, digits and underscores")
    path = QUERY_DIR / f"{name}.sql"
    if not path.exists():
        raise WarehouseError(f"no query named {name!r} in {QUERY_DIR}")
    return path.read_text(encoding="utf-8")


def run(con: duckdb.DuckDBPyConnection, name: str, params: dict | list | None = None) -> duckdb.DuckDBPyConnection:
    """Execute a named query with parameters ($name for a dict, ? for a list); returns the cursor.

    A file may hold several statements when params is a dict or None: each statement gets the
    $names it mentions (DuckDB binds parameters one statement at a time).
    """
    statements = [s.query for s in con.extract_statements(load(name))]
    if len(statements) == 1 or not isinstance(params, dict):
        return con.execute(load(name), params) if params is not None else con.execute(load(name))
    result = con
    for text in statements:
        used = {key: params[key] for key in _PARAM.findall(text) if key in params}
        result = con.execute(text, used) if used else con.execute(text)
    return result
