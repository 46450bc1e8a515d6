"""MovieLens ingest: ours (`pmg ingest`: validation, rejects, upsert, Parquet publish) against bare DuckDB
`CREATE TABLE AS SELECT * FROM read_csv(...)` of the same ratings.csv, in the same run.

Each side runs in its own fresh subprocess (so peak RSS is its own) on its own fresh warehouse. The
synthetic dataset is generated once per scale and cached. Prints Markdown rows on stdout.

Run: .venv/bin/python -m bench.bench_ingest [--scale small|25m|32m|N] [--data DIR] [--repeats 1]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SCALES = {  # name -> (users, movies, ratings): ml-latest-small, ml-25m and ml-32m shapes
    "small": (610, 9742, 100_836),
    "25m": (162_541, 62_423, 25_000_095),
    "32m": (200_948, 87_585, 32_000_204),
}
BARE = """
import duckdb, json, resource, sys, time
con = duckdb.connect(sys.argv[2])
t = time.perf_counter()
con.execute("create table ratings as select * from read_csv(?, header = true, columns = {'userId': 'INTEGER',"
            " 'movieId': 'INTEGER', 'rating': 'DOUBLE', 'timestamp': 'BIGINT'})", [sys.argv[1]])
con.execute("checkpoint")
seconds = time.perf_counter() - t
rows = con.execute("select count(*) from ratings").fetchone()[0]
print(json.dumps({"seconds": seconds, "rows": rows, "rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""
OURS = """
import json, resource, sys, time
from warehouse.ingest import ingest
t = time.perf_counter()
report = ingest(sys.argv[1], sys.argv[2])
seconds = time.perf_counter() - t
print(json.dumps({"seconds": seconds, "rows": report.files["ratings.csv"].rows_loaded,
                  "rejected": report.rows_rejected, "rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def run(code: str, *args: str) -> dict:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    out = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, env=env, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def dataset(scale: str, data: Path) -> tuple[Path, tuple[int, int, int]]:
    users, movies, ratings = SCALES.get(scale) or (max(int(scale) // 150, 1), 62_423, int(scale))
    path = data / f"synth-{users}-{movies}-{ratings}"
    if not (path / "ratings.csv").exists():
        from warehouse.synth import synthesize
        t = time.perf_counter()
        synthesize(path, users=users, movies=movies, ratings=ratings, seed=0)
        print(f"<!-- synthesized {path} in {time.perf_counter() - t:.0f} s -->", file=sys.stderr)
    return path, (users, movies, ratings)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale", default="small", help="small, 25m, 32m, or a number of ratings")
    parser.add_argument("--data", type=Path, default=Path(tempfile.gettempdir()) / "pmg-bench-data")
    parser.add_argument("--repeats", type=int, default=1)
    args = parser.parse_args()
    source, (users, movies, ratings) = dataset(args.scale, args.data)
    size_mb = (source / "ratings.csv").stat().st_size / 1e6
    for _ in range(args.repeats):
        work = Path(tempfile.mkdtemp(prefix="pmg-bench-"))
        try:
            bare = run(BARE, str(source / "ratings.csv"), str(work / "bare.duckdb"))
            ours = run(OURS, str(source), str(work / "wh"))
        finally:
            shutil.rmtree(work, ignore_errors=True)
        assert bare["rows"] == ours["rows"] == ratings, (bare, ours)
        print(f"| ingest {args.scale} ({ratings:,} ratings, {users:,} users, {movies:,} movies; ratings.csv {size_mb:.0f} MB)"
              f" | bare DuckDB CTAS read_csv {bare['seconds']:.2f} s, peak RSS {bare['rss_mb']:.0f} MB"
              f" | ours {ours['seconds']:.2f} s ({ratings / ours['seconds'] / 1e6:.2f} M ratings/s), peak RSS {ours['rss_mb']:.0f} MB"
              f" | {ours['seconds'] / bare['seconds']:.2f}x | {platform.node()}, {os.cpu_count()} cores,"
              f" {time.strftime('%Y-%m-%d')} |")


if __name__ == "__main__":
    main()
