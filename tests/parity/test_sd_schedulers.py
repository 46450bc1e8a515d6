"""Each NumPy scheduler's full loop against diffusers' on the same model outputs (<= 1e-5)."""
import numpy as np
import pytest

torch = pytest.importorskip("torch")
diffusers = pytest.importorskip("diffusers")

from pmg_models.sd.schedulers import make_scheduler  # noqa: E402

pytestmark = pytest.mark.parity

SD_BETAS = dict(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear")
CASES = [
    ("DDIMScheduler", "epsilon", "leading", 10, dict(clip_sample=False, set_alpha_to_one=False, steps_offset=1)),
    ("DDIMScheduler", "v_prediction", "trailing", 7, dict(clip_sample=False)),
    ("DDIMScheduler", "epsilon", "linspace", 5, dict(clip_sample=True)),
    ("EulerDiscreteScheduler", "epsilon", "leading", 10, dict(steps_offset=1)),
    ("EulerDiscreteScheduler", "v_prediction", "trailing", 8, {}),
    ("EulerDiscreteScheduler", "epsilon", "linspace", 6, {}),
    ("DPMSolverMultistepScheduler", "epsilon", "linspace", 10, {}),
    ("DPMSolverMultistepScheduler", "v_prediction", "trailing", 20, {}),
    ("DPMSolverMultistepScheduler", "epsilon", "leading", 16, dict(steps_offset=1, solver_type="heun")),
    ("DPMSolverMultistepScheduler", "v_prediction", "linspace", 1, {}),
    # the cosine schedule (the miniature world's diffusion model is trained with it)
    ("DDIMScheduler", "v_prediction", "trailing", 20, dict(clip_sample=False, beta_schedule="squaredcos_cap_v2")),
    ("EulerDiscreteScheduler", "epsilon", "leading", 10, dict(steps_offset=1, beta_schedule="squaredcos_cap_v2")),
]


def _model(sample, k, rng_outputs):
    """A stand-in denoiser: depends on the step and on the current sample, like a real one."""
    return (rng_outputs[k] + 0.5 * sample).astype(np.float32)


@pytest.mark.parametrize("cls,pred,spacing,steps,extra", CASES)
def test_full_loop_matches_diffusers(cls, pred, spacing, steps, extra):
    config = dict(SD_BETAS, prediction_type=pred, timestep_spacing=spacing)
    config.update(extra)
    ref = getattr(diffusers, cls).from_config(config)
    ours = make_scheduler(dict(config, _class_name=cls))
    ref.set_timesteps(steps)
    ours.set_timesteps(steps)
    np.testing.assert_allclose(ours.timesteps, ref.timesteps.numpy(), atol=0)
    rng = np.random.default_rng(3)
    outputs = rng.standard_normal((steps, 2, 4, 8, 8)).astype(np.float32)
    x0 = rng.standard_normal((2, 4, 8, 8)).astype(np.float32)
    x_ref = torch.from_numpy(x0) * ref.init_noise_sigma
    x = x0 * np.float32(ours.init_noise_sigma)
    for k, t in enumerate(ref.timesteps):
        out_ref = torch.from_numpy(_model(ref.scale_model_input(x_ref, t).numpy(), k, outputs))
        x_ref = ref.step(out_ref, t, x_ref).prev_sample
        out = _model(ours.scale_model_input(x, ours.timesteps[k]), k, outputs)
        x = ours.step(out, ours.timesteps[k], x)
    scale = max(1.0, float(np.abs(x_ref.numpy()).max()))
    assert np.abs(x - x_ref.numpy()).max() / scale <= 1e-5


def test_unsupported_options_are_named():
    with pytest.raises(ValueError, match="use_karras_sigmas"):
        make_scheduler(dict(SD_BETAS, _class_name="EulerDiscreteScheduler", use_karras_sigmas=True))
    with pytest.raises(ValueError, match="prediction_type"):
        make_scheduler(dict(SD_BETAS, _class_name="DDIMScheduler", prediction_type="sample"))
    with pytest.raises(ValueError, match="choose one of"):
        make_scheduler(SD_BETAS, "heun")


def test_unknown_folder_class_falls_back_to_dpm():
    s = make_scheduler(dict(SD_BETAS, _class_name="PNDMScheduler", skip_prk_steps=True, prediction_type="v_prediction"))
    assert s.name == "dpm++2m" and s.prediction_type == "v_prediction"


def test_names_and_aliases():
    for name, want in (("dpm", "dpm++2m"), ("DPMSolverMultistepScheduler", "dpm++2m"), ("euler", "euler"),
                       ("ddim", "ddim")):
        assert make_scheduler(dict(SD_BETAS, _class_name="DDIMScheduler"), name).name == want
