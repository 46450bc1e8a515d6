"""`pmg train-miniworld OUT`: train the miniature world's CLIP, SD and Llama (and its evaluation CNN)."""
from __future__ import annotations

import json
import sys
from pathlib import Path

from flows.commands import seed_arg

STAGE_NAMES = ("classifier", "clip", "sd", "llama", "soft_prompt")


def register(sub) -> None:
    p = sub.add_parser("train-miniworld",
                       help="train the miniature world's models from a seed (checkpoints, gates, metrics.json)")
    p.add_argument("out", type=Path, help="output directory (classifier/, clip/, sd/, llama/, metrics.json)")
    p.add_argument("--seed", type=seed_arg, default=0)
    p.add_argument("--smoke", action="store_true", help="a few dozen steps per stage: checks losses fall and shapes")
    p.add_argument("--stages", default=",".join(STAGE_NAMES),
                   help="comma-separated subset of " + ",".join(STAGE_NAMES) + " (others keep their earlier output)")
    p.add_argument("--sd-steps", type=int, help="UNet training steps (default 1800; the LR schedule follows)")
    p.add_argument("--ship", action="store_true",
                   help="then copy llama/, sd/, clip/, the soft prompt and metrics.json into weights/miniworld and pin "
                        "their SHA-256 (what `pmg demo` uses); --stages '' ships without training")
    p.set_defaults(handler=train_miniworld)


def _say(line: str) -> None:
    print(line, flush=True)


def train_miniworld(args) -> int:
    stages = tuple(s.strip() for s in args.stages.split(",") if s.strip())
    unknown = sorted(set(stages) - set(STAGE_NAMES))
    if unknown:
        raise ValueError(f"unknown stage(s) {', '.join(unknown)}; choose from {', '.join(STAGE_NAMES)}")
    if args.ship and not stages:  # ship only: say what is missing before writing anything
        from tasks.miniworld import shipped

        shipped.check_complete(args.out)
    from tasks.miniworld.train import train_miniworld as run

    metrics = run(args.out, seed=args.seed, smoke=args.smoke, stages=stages, emit=_say, sd_steps=args.sd_steps)
    for name, gate in metrics.get("gates", {}).items():
        _say(f"gate {name}: {gate['value']:.3f} (>= {gate['threshold']}) {'PASS' if gate['passed'] else 'FAIL'}")
    failed = [name for name, ok in metrics.get("checks", {}).items() if not ok]
    seconds = metrics["seconds"]
    _say(f"metrics: {args.out / 'metrics.json'} ({seconds['this_run']:.0f} s; its stages' training: {seconds['total']:.0f} s)")
    if failed:
        print(f"pmg: checks failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    if args.ship:
        from tasks.miniworld import shipped

        sums = shipped.install(args.out)
        size = sum((shipped.ROOT / name).stat().st_size for name in sums)
        _say(f"shipped {len(sums)} files ({size / 2**20:.1f} MB) to {shipped.ROOT}, pinned in {shipped.MANIFEST_NAME}")
    return 0
