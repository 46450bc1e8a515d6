"""Memory returned when the pipeline releases a model (tasks.resources.release_models).

Loads the ~170M Llama of bench_llama through tasks.resources, runs a batch-8 generation (which compiles
its graphs), releases it, and repeats: resident memory after each step. Shows what dropping the Python
objects alone returns and what MindSpore's graph recycling adds, and whether memory kept by its pool is
reused by the next load rather than growing; `--objects-only` skips release_models() (the comparison:
what a reload costs when only the Python objects are dropped). Usage:
python -m bench.bench_release [--cycles 3] [--objects-only]
"""
from __future__ import annotations

import argparse
import gc
import tempfile
from pathlib import Path

import numpy as np


def rss_mb() -> int:
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) // 1024
    return -1


def run_cycles(path: Path, cycles: int, objects_only: bool) -> None:
    from bench.machine import describe
    from pmg_models.generation import Sampling
    from tasks import resources

    gc.collect()
    print(f"Model release, {describe()}: resident MB, 170M Llama (673 MB of weights), batch 8 × 100 tokens\n")
    print(f"| cycle | before load | loaded + generated | objects dropped | release_models() |\n|---|---|---|---|---|")
    prompts = np.random.default_rng(0).integers(3, 500, (8, 100)).tolist()
    for cycle in range(1, cycles + 1):
        before = rss_mb()
        lm = resources.llm(path)
        lm.generate_ids(prompts, 16, Sampling(), [0] * 8)
        loaded = rss_mb()
        del lm
        resources.clear_cache()
        gc.collect()
        dropped = rss_mb()
        if not objects_only:
            resources.release_models()
        print(f"| {cycle} | {before:,} | {loaded:,} | {dropped:,} | {rss_mb():,} |", flush=True)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cycles", type=int, default=3)
    parser.add_argument("--objects-only", action="store_true", help="drop the model objects only")
    args = parser.parse_args(argv)

    from bench.bench_llama import make_checkpoint

    # The 673 MB checkpoint lives only as long as the run (mkdtemp left one behind per run).
    with tempfile.TemporaryDirectory(prefix="pmg-bench-release-") as tmp:
        run_cycles(make_checkpoint("170m", Path(tmp)), args.cycles, args.objects_only)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
