"""Tiny random LLM + SD (+ CLIP) and procedural posters shared by the training and evaluation tests."""
import numpy as np
import pytest

pytest.importorskip("mindspore")

GENRES = ["Comedy", "Horror", "Romance", "Sci-Fi", "Animation", "Western", "Drama", "Action"]


@pytest.fixture(scope="session")
def tiny_dirs(tmp_path_factory):
    from pmg_models import clip, llama, sd

    root = tmp_path_factory.mktemp("tiny_models")
    return {"llm": llama.init_tiny(root / "llm", seed=0), "sd": sd.init_tiny(root / "sd", seed=0),
            "clip": clip.init_tiny(root / "clip", seed=0)}


@pytest.fixture(scope="session")
def tiny_models(tiny_dirs):
    from pmg_models.generation import LlamaLM
    from pmg_models.sd.pipeline import StableDiffusion

    return LlamaLM.from_pretrained(tiny_dirs["llm"]), StableDiffusion.from_pretrained(tiny_dirs["sd"])


def poster(i: int, size: int = 32) -> np.ndarray:
    from tasks.miniworld import world
    from tasks.miniworld.posters import poster_seed, render

    return render(world.poster_genres([GENRES[i % len(GENRES)]]), world.movie_attribute(i), poster_seed(i), size)
