"""`pmg train-soft-prompt` and `pmg evaluate`: the PMG method's training and evaluation."""
from __future__ import annotations

import argparse
import sys

from flows.commands import seed_arg

DEFAULT_ALPHAS = "0,0.25,0.5,0.667,0.75,1"


def register(sub) -> None:
    p = sub.add_parser("train-soft-prompt", help="train the soft prompt (P-Tuning v2 prefix, multimodal tokens, map) "
                                                 "on held-out target posters")
    p.add_argument("--posters", required=True, help="directory of target posters named <movieId>.png")
    p.add_argument("--out", required=True, help="output directory (checkpoints, soft_prompt.safetensors, loss.csv/png)")
    _model_args(p)
    p.add_argument("--steps", type=int, default=1000, help="optimizer steps (default 1000)")
    p.add_argument("--lr", type=float, default=1e-3, help="learning rate (default 1e-3)")
    p.add_argument("--warmup-steps", type=int, default=0, help="linear warmup steps (default 0)")
    p.add_argument("--weight-decay", type=float, default=0.01, help="AdamW weight decay (default 0.01)")
    p.add_argument("--batch", type=int, default=4, help="examples per micro-batch (default 4)")
    p.add_argument("--grad-accum", type=int, default=1, help="micro-batches per optimizer step (default 1)")
    p.add_argument("--n-prefix", type=int, default=4, help="P-Tuning v2 prefix length P (default 4)")
    p.add_argument("--n-tokens", type=int, default=4, help="multimodal tokens M (default 4)")
    p.add_argument("--w-soft", type=float, default=1.0, help="scale of the soft tokens in the UNet context (default 1)")
    p.add_argument("--size", type=int, help="poster size for the VAE (default: the SD model's sample size)")
    p.add_argument("--checkpoint-every", type=int, default=100, help="save state every N steps (default 100)")
    p.add_argument("--eval-every", type=int, default=10, help="fixed-set loss every N steps (default 10)")
    p.add_argument("--seed", type=seed_arg, default=0)
    p.add_argument("--resume", action="store_true", help="continue from the newest checkpoint in --out")
    p.add_argument("--limit-users", type=int, help="only the first N users (by id)")
    p.set_defaults(handler=cmd_train)

    p = sub.add_parser("evaluate", help="PMG vs. the non-personalized baseline and the ablations on held-out pairs")
    p.add_argument("--posters", help="directory of posters named <movieId>.png (image scores and SSIM)")
    p.add_argument("--soft-prompt", help="trained soft prompt (file or training --out directory); default: "
                                         "the model config's, else the soft variants are skipped")
    _model_args(p, clip=True)
    p.add_argument("--alphas", default=DEFAULT_ALPHAS, help=f"α values of the sweep (default {DEFAULT_ALPHAS})")
    p.add_argument("--alpha", type=float, default=2 / 3, help="α of the summary table (default 2/3)")
    p.add_argument("--candidates", type=int, help="candidates per (variant, user, target) (default: [method], else 2)")
    p.add_argument("--steps", type=int, help="diffusion steps (default: the model config's [method], else 20)")
    p.add_argument("--size", type=int, help="image height and width (default: the SD model's sample size)")
    p.add_argument("--guidance", type=float, help="classifier-free guidance (default: [method], else 7.5)")
    p.add_argument("--w-soft", type=float,
                   help="scale of the soft tokens (default: [method] soft_scale, as the pipeline; else 1)")
    p.add_argument("--seed", type=seed_arg, default=0, help="base seed (default 0)")
    p.add_argument("--limit-users", type=int, help="only the first N users (by id)")
    p.add_argument("--lpips-weights", help="LPIPS-alex weights: a safetensors file or directory (AlexNet conv "
                                           "layers + LPIPS lin layers); needs --posters")
    p.add_argument("--out", help="report directory (default <warehouse>/evaluations/<run id>)")
    p.add_argument("--run-id", help="replace this evaluation run's rows and files instead of starting a new run")
    p.add_argument("--world-reference", action="store_true",
                   help="miniature world only: also let the world's renderer draw the baseline and keywords-only "
                        "captions (a perfect generator: the most the scores can show with these keywords)")
    p.set_defaults(handler=cmd_evaluate)


def _model_args(p: argparse.ArgumentParser, clip: bool = False) -> None:
    p.add_argument("--config", help="model config TOML (default <warehouse>/pmg.toml or the tiny models)")
    p.add_argument("--llm", help="HF Llama directory (overrides the model config)")
    p.add_argument("--sd", help="diffusers Stable Diffusion directory (overrides the model config)")
    if clip:
        p.add_argument("--clip", help="HF CLIP directory (overrides the model config)")


def _alphas(text: str) -> list[float]:
    try:
        values = [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise ValueError(f"--alphas must be numbers like {DEFAULT_ALPHAS}, got {text!r}") from None
    if not values or any(not 0.0 <= a <= 1.0 for a in values):
        raise ValueError(f"--alphas must be numbers in [0, 1], got {text!r}")
    return values


def cmd_train(args) -> int:
    from flows import prefect_env

    prefect_env.configure(args.warehouse)
    from flows.train import train_soft_prompt_run

    def progress(row):
        if row["eval_loss"] is not None:
            print(f"step {row['step']}: train loss {row['train_loss']:.5f}, eval loss {row['eval_loss']:.5f}",
                  file=sys.stderr)

    s = train_soft_prompt_run(
        args.warehouse, args.posters, args.out, config=args.config, llm=args.llm, sd=args.sd, steps=args.steps,
        lr=args.lr, batch=args.batch, grad_accum=args.grad_accum, n_prefix=args.n_prefix, n_tokens=args.n_tokens,
        seed=args.seed, resume=args.resume, limit_users=args.limit_users, size=args.size,
        warmup_steps=args.warmup_steps, weight_decay=args.weight_decay, w_soft=args.w_soft,
        checkpoint_every=args.checkpoint_every, eval_every=args.eval_every, on_step=progress)
    print(f"trained on {s['examples']} (user, target) pairs for {s['steps']} steps"
          + (f" (resumed at step {s['resumed_from']})" if s["resumed_from"] else ""))
    print(f"fixed-set loss {s['first_eval_loss']:.5f} -> {s['final_eval_loss']:.5f}")
    print(f"soft prompt: {s['soft_prompt']}")
    print(f"loss curve:  {s['out_dir']}/loss.csv, {s['out_dir']}/loss.png")
    print(f"run id:      {s['run_id']}")
    return 0


def cmd_evaluate(args) -> int:
    from flows import prefect_env, progress

    prefect_env.configure(args.warehouse)
    progress.install(progress.TerminalProgress())
    from flows.evaluate import evaluate_run, headline

    s = evaluate_run(args.warehouse, posters=args.posters, soft_prompt=args.soft_prompt, config=args.config,
                     llm=args.llm, sd=args.sd, clip=args.clip, alphas=_alphas(args.alphas), alpha=args.alpha,
                     candidates=args.candidates, steps=args.steps, size=args.size, guidance=args.guidance,
                     w_soft=args.w_soft, seed=args.seed, limit_users=args.limit_users,
                     lpips_weights=args.lpips_weights, out=args.out, run_id=args.run_id,
                     world_reference=args.world_reference)
    for note in s["notes"]:
        print(note, file=sys.stderr)
    print(f"evaluated {s['pairs']} (user, target) pairs at α = {s['alpha']}, variants: {', '.join(s['variants'])}")
    for line in headline(s["summary"]):
        print(f"  {line}")
    print(f"report: {s['markdown']}")
    print(f"tables: {s['summary_csv']}, {s['results_csv']}, {s['candidates_csv']}")
    print(f"plot:   {s['plot']}")
    if s.get("pairs_grid"):
        print(f"grid:   {s['pairs_grid']}  (per pair: target poster, each variant's selected image, history posters)")
    print(f"SQL:    pmg sql \"SELECT variant, avg(d_p), avg(d_t) FROM evaluations WHERE run_id = '{s['run_id']}' "
          f"AND selected AND alpha = {s['alpha']} GROUP BY variant\"")
    return 0
