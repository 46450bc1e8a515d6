"""`pmg synth`, `pmg ingest`, `pmg sql`: synthetic MovieLens data, ingest, and read-only SQL.

No MindSpore or Prefect here: these commands start in well under a second.
"""
from __future__ import annotations

import csv
import datetime as dt
import decimal
import json
import sys
from pathlib import Path

from flows.commands import positive_int, seed_arg


def register(sub) -> None:
    p = sub.add_parser("synth", help="write a synthetic MovieLens-format dataset (directory, or .zip with --zip)")
    p.add_argument("out", type=Path)
    p.add_argument("--users", type=int, default=610)
    p.add_argument("--movies", type=int, default=9742)
    p.add_argument("--ratings", type=int, default=100_836)
    p.add_argument("--seed", type=seed_arg, default=0)
    p.add_argument("--crlf", action="store_true", help="CRLF line endings (as some public copies)")
    p.add_argument("--zip", action="store_true", help="write OUT.zip instead of a directory")
    p.set_defaults(handler=synth)

    p = sub.add_parser("ingest", help="ingest a MovieLens directory or .zip into the warehouse")
    p.add_argument("source", type=Path)
    p.set_defaults(handler=ingest)

    p = sub.add_parser("sql", help="run one read-only SQL query over the warehouse")
    p.add_argument("query")
    p.add_argument("--format", choices=("table", "csv", "json"), default="table")
    p.add_argument("--max-rows", type=positive_int, default=1000, help="rows shown by --format table (default 1000)")
    p.set_defaults(handler=sql)


def synth(args) -> int:
    from warehouse.synth import synthesize

    path = synthesize(args.out, users=args.users, movies=args.movies, ratings=args.ratings, seed=args.seed,
                      crlf=args.crlf, zip=args.zip)
    print(f"wrote {path} ({args.users} users, {args.movies} movies, {args.ratings} ratings, seed {args.seed})")
    return 0


def ingest(args) -> int:
    from warehouse.ingest import ingest as run_ingest

    report = run_ingest(args.source, args.warehouse)
    if report.skipped_same_source:
        print(f"{args.source} was already ingested (ingest {report.ingest_id}, same content); nothing changed")
        return 0
    print(f"ingest {report.ingest_id}: {report.rows_loaded} rows loaded, {report.rows_rejected} rejected,"
          f" {len(report.changed_users)} users changed, in {report.seconds:.1f} s")
    for name, f in report.files.items():
        print(f"  {name:<12} read {f.rows_read:>10}  loaded {f.rows_loaded:>10}  rejected {f.rows_rejected:>8}")
    if report.rows_rejected:
        print(f"see rejects: pmg sql \"select * from ingest_rejects where ingest_id = {report.ingest_id}\"")
    return 0


def sql(args) -> int:
    from warehouse.db import connect_reader, read_query

    with connect_reader(args.warehouse) as con:
        columns, rows = read_query(con, args.query)
    if args.format == "csv":
        writer = csv.writer(sys.stdout, lineterminator="\n")
        writer.writerow(columns)
        writer.writerows([[cell_text(v) for v in row] for row in rows])
    elif args.format == "json":
        json.dump([dict(zip(columns, row)) for row in rows], sys.stdout, default=json_default, ensure_ascii=False)
        print()
    else:
        print_table(columns, rows, args.max_rows)
    return 0


def cell_text(value) -> str:
    if value is None:
        return ""
    if isinstance(value, (list, dict)):
        return json.dumps(value, default=json_default, ensure_ascii=False)
    return str(value)


def json_default(value):
    if isinstance(value, (dt.datetime, dt.date, dt.time)):
        return value.isoformat()
    if isinstance(value, decimal.Decimal):
        return float(value)
    if isinstance(value, (bytes, bytearray)):
        return value.hex()
    return str(value)


def print_table(columns: list[str], rows: list[tuple], max_rows: int) -> None:
    shown = [[cell_text(v) for v in row] for row in rows[:max_rows]]
    widths = [max([len(c), *(min(len(r[i]), 60) for r in shown)]) for i, c in enumerate(columns)]
    print("  ".join(c.ljust(w) for c, w in zip(columns, widths)))
    print("  ".join("-" * w for w in widths))
    for row in shown:
        print("  ".join((v if len(v) <= 60 else v[:57] + "...").ljust(w) for v, w in zip(row, widths)).rstrip())
    more = len(rows) - len(shown)
    print(f"({len(rows)} row{'s' if len(rows) != 1 else ''}" + (f", {more} not shown; use --format csv" if more else "")
          + ")", file=sys.stderr)
