"""Versioned schema: `NNN_name.sql` files applied once each, in numeric order, recorded in schema_version.

The warehouse owns 001-099; later stages add 100+ to the same directory (or register their own
directory with `register_schema_dir`). Every file must be idempotent (`create ... if not exists`).
"""
from __future__ import annotations

import re
from pathlib import Path

from warehouse.errors import WarehouseError

SCHEMA_DIRS: list[Path] = [Path(__file__).with_name("schema")]
_NAME = re.compile(r"^(\d{3})_[A-Za-z0-9_]+\.sql$")


def register_schema_dir(path: Path | str) -> None:
    """Add a directory of NNN_name.sql migrations (applied together with the built-in ones)."""
    path = Path(path).resolve()
    if path not in SCHEMA_DIRS:
        SCHEMA_DIRS.append(path)


def migration_files() -> list[tuple[int, Path]]:
    """All migrations in version order; two files with one number is an error."""
    found: dict[int, Path] = {}
    for directory in SCHEMA_DIRS:
        for file in sorted(directory.glob("*.sql")):
            match = _NAME.match(file.name)
            if not match:
                continue
            version = int(match.group(1))
            if version in found and found[version] != file:
                raise WarehouseError(f"two migrations share number {version:03d}: {found[version]} and {file}")
            found[version] = file
    return sorted(found.items())


def apply_migrations(con) -> list[int]:
    """Apply pending migrations, each in its own transaction. Returns the versions applied."""
    con.execute("create table if not exists schema_version"
                " (version integer primary key, name varchar not null, applied_at timestamp not null)")
    done = {row[0] for row in con.execute("select version from schema_version").fetchall()}
    applied = []
    for version, file in migration_files():
        if version in done:
            continue
        con.execute("begin transaction")
        try:
            con.execute(file.read_text(encoding="utf-8"))
            con.execute("insert into schema_version values (?, ?, current_localtimestamp())", [version, file.name])
            con.execute("commit")
        except BaseException:
            con.execute("rollback")
            raise
        applied.append(version)
    return applied
