"""Shared, session-scoped pieces of the pipeline tests: tiny models, one Prefect API, small warehouses."""
import os
import shutil
from pathlib import Path

import pytest

from warehouse import images
from warehouse.db import connect_reader

FAST = {"candidates": 2, "steps": 2, "height": 32, "width": 32, "chunk_size": 3}


@pytest.fixture(scope="session")
def session_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("pipeline")


@pytest.fixture(scope="session")
def tiny_models(session_dir) -> Path:
    """Tiny random-weight LLM, SD and CLIP in their real layouts, written once per session."""
    from flows.demo import make_tiny_models

    make_tiny_models(session_dir / "models-home")
    return session_dir / "models-home" / "models" / "tiny"


@pytest.fixture(scope="session")
def prefect_api(session_dir):
    """One quiet local Prefect API for the whole session (subprocesses get its URL)."""
    from flows import prefect_env

    with prefect_env.embedded_api(session_dir / "prefect-wh") as url:
        yield url


@pytest.fixture(scope="session")
def dataset(session_dir) -> Path:
    from warehouse.synth import synthesize

    return synthesize(session_dir / "ml-small", users=8, movies=60, ratings=8 * 25, seed=3)


@pytest.fixture
def make_warehouse(tmp_path, tiny_models, dataset):
    """A fresh warehouse with the small dataset ingested and pmg.toml pointing at the tiny models."""
    from warehouse.ingest import ingest

    def make(name: str = "wh", source: Path | None = None) -> Path:
        root = tmp_path / name
        root.mkdir()
        (root / "pmg.toml").write_text(
            f'[models]\nllm = "{tiny_models / "llm"}"\nsd = "{tiny_models / "sd"}"\nclip = "{tiny_models / "clip"}"\n')
        ingest(source or dataset, root)
        return root

    return make


def copy_dataset(dataset: Path, out: Path) -> Path:
    shutil.copytree(dataset, out)
    return out


def subprocess_env(prefect_url: str, **extra) -> dict:
    env = {**os.environ, "PREFECT_API_URL": prefect_url, "PMG_JIT": "0", **extra}
    return env


def check_invariants(root):
    """Exactly one selected poster per pair, no duplicates, every referenced image complete."""
    with connect_reader(root) as con:
        q = lambda s: con.execute(s).fetchall()  # noqa: E731
        assert q("SELECT count(*) FROM (SELECT user_id, target_movie_id, candidate FROM generations "
                 "GROUP BY ALL HAVING count(*) > 1)") == [(0,)]
        assert q("SELECT count(*) FROM (SELECT generation_id FROM scores GROUP BY 1 HAVING count(*) > 1)") == [(0,)]
        assert q("SELECT count(*) FROM (SELECT user_id, target_movie_id FROM scores GROUP BY ALL "
                 "HAVING count(*) FILTER (WHERE selected) <> 1)") == [(0,)]
        assert q("SELECT count(*) FROM (SELECT user_id, target_movie_id FROM posters GROUP BY ALL "
                 "HAVING count(*) > 1)") == [(0,)]
        assert q("SELECT count(*) FROM (SELECT stage, item_key FROM work_ledger GROUP BY ALL HAVING count(*) > 1)") == [(0,)]
        gens = q("SELECT image_path, image_sha256 FROM generations")
    assert all(images.verify(root, p, s) for p, s in gens)
    assert not list((root / "images").glob("*/.tmp-*"))
    return len(gens)
