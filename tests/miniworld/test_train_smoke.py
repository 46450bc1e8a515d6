"""`pmg train-miniworld --smoke`: every stage trains a few dozen steps, losses fall, saved models load with the
standard loaders and give the expected shapes, metrics.json records it all."""
import json

import pytest

from tasks.miniworld.train import STAGES, train_miniworld


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("world")
    return out, train_miniworld(out, seed=0, smoke=True)


def test_smoke_losses_fall_and_shapes_match(smoke_run):
    out, metrics = smoke_run
    assert set(metrics["stages"]) == set(STAGES)
    assert metrics["checks"] and all(metrics["checks"].values()), metrics["checks"]
    for name in ("clip_shapes", "sd_shapes", "llama_shapes", "clip_loss_fell", "sd_loss_fell", "llama_loss_fell"):
        assert metrics["checks"][name]
    assert json.loads((out / "metrics.json").read_text())["checks"] == metrics["checks"]


def test_smoke_writes_standard_layouts(smoke_run):
    out, _ = smoke_run
    assert {"config.json", "model.safetensors", "preprocessor_config.json", "vocab.json"} <= {p.name for p in (out / "clip").iterdir()}
    for part in ("unet", "vae", "text_encoder", "tokenizer", "scheduler"):
        assert (out / "sd" / part).is_dir()
    assert (out / "sd" / "unet" / "diffusion_pytorch_model.safetensors").exists()
    assert {"config.json", "model.safetensors", "tokenizer.model"} <= {p.name for p in (out / "llama").iterdir()}


def test_smoke_gates_are_reported(smoke_run):
    _, metrics = smoke_run
    assert set(metrics["gates"]) == {"clip_retrieval_top1", "sd_target_background", "sd_preference_motif",
                                     "llama_keyword_accuracy"}
    for gate in metrics["gates"].values():
        assert 0.0 <= gate["value"] <= 1.0 and isinstance(gate["passed"], bool)


def test_random_weights_control_really_uses_other_weights(smoke_run):
    """The chance baseline must not score the trained UNet again: weights set on a pipeline that has already
    run a compiled graph are ignored, so the control builds its own pipeline."""
    import numpy as np

    from pmg_models.sd.pipeline import StableDiffusion
    from tasks.miniworld.train_sd import control_pipeline

    out, _ = smoke_run
    pipe = StableDiffusion.from_pretrained(out / "sd")
    trained = pipe.generate(["action"], [3], steps=2, guidance=2.0)
    rng = np.random.default_rng(0)
    arrays = {p.name: rng.standard_normal(p.shape).astype(np.float32) * 0.05 for p in pipe.unet.get_parameters()}
    control = control_pipeline(out / "sd", arrays, micro_batch=1).generate(["action"], [3], steps=2, guidance=2.0)
    assert np.abs(trained.astype(int) - control.astype(int)).mean() > 5


def test_a_stage_can_be_redone(smoke_run):
    """`--stages soft_prompt` on a finished world trains that stage again and keeps the others."""
    out, first = smoke_run
    again = train_miniworld(out, seed=0, smoke=True, stages=("soft_prompt",))
    assert again["stages"]["soft_prompt"]["loss_fell"] is not None
    assert again["stages"]["llama"] == first["stages"]["llama"]
    # the kept stages keep their training times; the total is what the folder's stages took
    for stage in ("classifier", "clip", "sd", "llama"):
        assert again["seconds"][stage] == first["seconds"][stage]
    stage_seconds = sum(v for k, v in again["seconds"].items() if k in STAGES)
    assert again["seconds"]["total"] == pytest.approx(stage_seconds, abs=0.2)
    assert set(again["seconds"]) == set(STAGES) | {"total", "this_run"}
