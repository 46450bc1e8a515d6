"""The command line on the embedded Prefect API: clean output, progress, summary, one-sentence errors."""
import os
import shutil
import subprocess
import sys
from pathlib import Path

from tests.models.test_memory_check import header_only
from tests.pipeline.conftest import subprocess_env


def pmg(root, *args, env=None):
    return subprocess.run([sys.executable, "-m", "flows", "--warehouse", str(root), *args], env=env,
                          capture_output=True, text=True, timeout=300)


def test_backfill_on_its_own_embedded_api_prints_progress_and_summary_only(make_warehouse):
    root = make_warehouse()
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env["PMG_JIT"] = "0"
    out = pmg(root, "backfill", "--targets", "holdout", "--limit-users", "2", "--candidates", "1", "--steps", "1",
              "--height", "32", "--width", "32", env=env)
    assert out.returncode == 0, out.stderr[-3000:]
    text = out.stdout + out.stderr
    for noise in ("Traceback", "Error flushing", "CancelledError", "Error logging to API", "| INFO", "| ERROR"):
        assert noise not in text, text[-3000:]
    assert "generate" in out.stderr and "ETA" in out.stderr or "pairs/s" in out.stderr  # the progress bar
    assert "finished in" in out.stdout and "processed" in out.stdout and "posters" in out.stdout
    assert (root / "prefect" / "server.log").exists()  # PREFECT_HOME lives inside the warehouse


def test_user_errors_are_one_sentence_without_traceback(make_warehouse, prefect_api, tiny_models, tmp_path):
    root = make_warehouse()
    out = pmg(root, "backfill", "--movie", "99999999", env=subprocess_env(prefect_api))
    assert out.returncode == 1
    assert out.stderr.strip().splitlines() == [
        "pmg: error: movie id(s) [99999999] are not in the warehouse; check the ids or ingest first"]
    # an unknown device fails the run once, up front, instead of failing every item
    out = pmg(root, "backfill", "--movie", "1", env={**subprocess_env(prefect_api), "PMG_DEVICE": "gpu"})
    assert out.returncode == 1 and out.stderr.startswith("pmg: error: PMG_DEVICE='gpu' is not supported"), out.stderr
    assert len(out.stderr.strip().splitlines()) == 1
    # so does a soft prompt trained for other checkpoints (the world's, here with the tiny models)
    world_soft = Path(__file__).resolve().parents[2] / "weights" / "miniworld" / "soft_prompt.safetensors"
    config = tmp_path / "pmg.toml"
    config.write_text("[models]\n" + "".join(f'{k} = "{tiny_models / k}"\n' for k in ("llm", "sd", "clip"))
                      + f'soft_prompt = "{world_soft}"\n')
    out = pmg(root, "backfill", "--movie", "1", "--config", str(config), env=subprocess_env(prefect_api))
    assert out.returncode == 1 and "was trained for the LLM checkpoint" in out.stderr, out.stderr
    assert len(out.stderr.strip().splitlines()) == 1
    # and so do models whose weights cannot fit in this machine's memory (a Llama declaring 160 GB)
    big = tmp_path / "big-llm"
    shutil.copytree(tiny_models / "llm", big)
    header_only(big / "model.safetensors", "model.embed_tokens.weight")
    config.write_text(f'[models]\nllm = "{big}"\n' + "".join(f'{k} = "{tiny_models / k}"\n' for k in ("sd", "clip")))
    out = pmg(root, "backfill", "--movie", "1", "--config", str(config), env=subprocess_env(prefect_api))
    assert out.returncode == 1 and out.stderr.startswith("pmg: error: the model weights need 160.0 GB as float32 "
                                                         "on CPU (llm 160.0 GB) but this machine has "), out.stderr
    assert len(out.stderr.strip().splitlines()) == 1
