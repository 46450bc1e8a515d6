"""`pmg models ...`: create tiny checkpoints, inspect any checkpoint, and try each model by hand."""
from __future__ import annotations

import json
from pathlib import Path

from flows.commands import positive_int, seed_arg


def register(sub) -> None:
    models = sub.add_parser("models", help="create, inspect and try model checkpoints")
    msub = models.add_subparsers(dest="models_command", metavar="ACTION", required=True)

    p = msub.add_parser("init-tiny", help="write tiny random-weight Llama, SD and CLIP checkpoints in the real layouts")
    p.add_argument("dir", type=Path)
    p.add_argument("--seed", type=seed_arg, default=0)
    p.set_defaults(handler=init_tiny)

    p = msub.add_parser("info", help="config, parameter count and fingerprint of a checkpoint directory")
    p.add_argument("path", type=Path)
    p.set_defaults(handler=info)

    p = msub.add_parser("generate", help="continue a prompt with an LLM checkpoint (greedy by default)")
    p.add_argument("llm_dir", type=Path)
    p.add_argument("prompt")
    p.add_argument("--max-new-tokens", type=positive_int, default=64)
    p.add_argument("--temperature", type=float, default=0.0)
    p.add_argument("--top-k", type=int, default=0)
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--seed", type=seed_arg, default=0)
    p.set_defaults(handler=generate)

    p = msub.add_parser("txt2img", help="one image from a Stable Diffusion checkpoint")
    p.add_argument("sd_dir", type=Path)
    p.add_argument("prompt")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--seed", type=seed_arg, default=0)
    p.add_argument("--guidance", type=float, default=7.5)
    p.add_argument("--height", type=int)
    p.add_argument("--width", type=int)
    p.add_argument("--negative-prompt", default="")
    p.add_argument("--scheduler", choices=["ddim", "euler", "dpm"], help="default: the checkpoint's own")
    p.set_defaults(handler=txt2img)

    p = msub.add_parser("clip-score", help="100·cosine between an image and each text")
    p.add_argument("clip_dir", type=Path)
    p.add_argument("--image", type=Path, required=True)
    p.add_argument("--text", action="append", required=True)
    p.set_defaults(handler=clip_score)


def init_tiny(args) -> int:
    from pmg_models import clip, llama, sd

    root = args.dir
    paths = {"llm": llama.init_tiny(root / "llama", seed=args.seed),
             "sd": sd.init_tiny(root / "sd", seed=args.seed),
             "clip": clip.init_tiny(root / "clip", seed=args.seed)}
    for kind, path in paths.items():
        print(f"{kind:5s} {path}")
    return 0


def info(args) -> int:
    from pmg_models import info as model_info

    print(json.dumps(model_info.describe(args.path), indent=2, default=str))
    return 0


def generate(args) -> int:
    from pmg_models import llama

    lm = llama.load(_existing(args.llm_dir))
    out = lm.generate([args.prompt], max_new_tokens=args.max_new_tokens, temperature=args.temperature,
                      top_k=args.top_k, top_p=args.top_p, seed=args.seed)
    print(out[0])
    return 0


def txt2img(args) -> int:
    from PIL import Image

    from pmg_models.sd.pipeline import StableDiffusion

    pipe = StableDiffusion.from_pretrained(_existing(args.sd_dir), scheduler=args.scheduler)
    images = pipe.generate([args.prompt], seeds=[args.seed], steps=args.steps, guidance=args.guidance,
                           height=args.height, width=args.width, negative_prompt=args.negative_prompt)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(images[0]).save(args.out, format="PNG")
    print(args.out)
    return 0


def clip_score(args) -> int:
    from PIL import Image

    from pmg_models.clip import CLIPModel

    model = CLIPModel.from_pretrained(_existing(args.clip_dir))
    if not args.image.is_file():
        raise FileNotFoundError(f"image {args.image} does not exist")
    try:
        with Image.open(args.image) as im:
            img_emb = model.encode_image([im.convert("RGB")])
    except OSError as e:  # PIL's UnidentifiedImageError is an OSError
        raise ValueError(f"cannot read {args.image} as an image ({e})") from None
    txt_emb = model.encode_text(args.text)
    scores = model.similarity(img_emb, txt_emb)[0]
    for text, score in zip(args.text, scores):
        print(f"{float(score):8.3f}  {text}")
    return 0


def _existing(path: Path) -> Path:
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist; pass a checkpoint directory (see `pmg models init-tiny`)")
    return path
