"""`make bench`: every benchmark in turn, each comparing against its peer in the same run.

Run on a quiet machine; each script prints Markdown rows for BENCHMARKS.md.
"""
import subprocess
import sys

SCRIPTS = (
    ["bench.machine"],
    ["bench.bench_ingest", "--scale", "small"],
    ["bench.bench_llama", "--sizes", "tiny,170m", "--batches", "1,8,32"],
    ["bench.bench_linear"],
    ["bench.bench_sd"],
    ["bench.bench_clip"],
    ["bench.bench_train"],
    ["bench.bench_release"],
    ["bench.bench_pipeline"],
)


def main() -> int:
    failed = 0
    for script in SCRIPTS:
        print(f"\n## python -m {' '.join(script)}\n", flush=True)
        failed += subprocess.call([sys.executable, "-m", *script]) != 0
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
