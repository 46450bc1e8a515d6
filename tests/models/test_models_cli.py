"""`pmg models info|generate|txt2img|clip-score` on the shipped miniature-world checkpoints, as README shows them."""
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from flows.cli import main
from tasks.miniworld import posters, world

WEIGHTS = Path(__file__).resolve().parents[2] / "weights" / "miniworld"


def _pmg(capsys, *argv) -> tuple[int, str, str]:
    rc = main(list(argv))
    out = capsys.readouterr()
    return rc, out.out, out.err


def test_info_describes_an_sd_folder_whose_vae_is_the_parameter_free_codec(capsys):
    from pmg_models import info
    from pmg_models.sd import codec

    rc, out, err = _pmg(capsys, "models", "info", str(WEIGHTS / "sd"))  # it once failed: "no ... safetensors in vae"
    assert rc == 0, err
    described = json.loads(out)
    assert described["components"]["vae"]["parameters"] == 0 and described["components"]["unet"]["parameters"] > 0
    assert described["fingerprint"] and info.PARAMETER_FREE == (codec.CLASS_NAME,)


def test_txt2img_is_deterministic_and_clip_score_reads_the_genre(tmp_path, capsys):
    caption = "movie poster, " + ", ".join(world.block("Comedy"))
    args = ["models", "txt2img", str(WEIGHTS / "sd"), caption, "--steps", "4", "--seed", "3", "--guidance", "3",
            "--height", "32", "--width", "32"]
    assert _pmg(capsys, *args, "--out", str(tmp_path / "a" / "p.png"))[0] == 0
    assert _pmg(capsys, *args, "--out", str(tmp_path / "b.png"))[0] == 0
    a, b = (tmp_path / "a" / "p.png").read_bytes(), (tmp_path / "b.png").read_bytes()
    assert a == b and np.asarray(Image.open(tmp_path / "b.png")).shape == (32, 32, 3)

    # The trained CLIP ranks the genre of a poster the world's renderer drew (single genres: 0.99 top-1).
    posters.render_movie_posters([(7, ["Horror"])], tmp_path, size=32)
    texts = ["movie poster, " + ", ".join(world.block(g)) for g in ("Comedy", "Horror", "Western")]
    rc, out, _ = _pmg(capsys, "models", "clip-score", str(WEIGHTS / "clip"), "--image", str(tmp_path / "7.png"),
                      *[x for t in texts for x in ("--text", t)])
    scores = {line.split(None, 1)[1]: float(line.split()[0]) for line in out.strip().splitlines()}
    assert rc == 0 and list(scores) == texts and max(scores, key=scores.get) == texts[1]


def test_generate_is_deterministic(capsys):
    args = ["models", "generate", str(WEIGHTS / "llama"), "1. Heat (1995) (Crime|Thriller): ", "--max-new-tokens", "8"]
    rc, first, _ = _pmg(capsys, *args)
    assert rc == 0 and first.strip()
    assert _pmg(capsys, *args)[1] == first


@pytest.mark.parametrize("argv, message", [
    (["models", "clip-score", str(WEIGHTS / "clip"), "--image", "/nope.png", "--text", "x"], "image /nope.png does not exist"),
    (["models", "clip-score", str(WEIGHTS / "clip"), "--image", str(WEIGHTS / "SHA256SUMS"), "--text", "x"],
     "cannot read"),
    (["models", "generate", str(WEIGHTS / "sd"), "x"], "expected an HF Llama checkpoint directory"),
])
def test_clear_errors(argv, message, capsys):
    rc, _, err = _pmg(capsys, *argv)
    assert rc == 1 and message in err and err.startswith("pmg: error: ")
