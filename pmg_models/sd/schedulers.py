"""Diffusion samplers in NumPy on the host: DDIM, Euler (discrete) and DPM-Solver++ 2M.

Each mirrors the diffusers scheduler of the same name (scheduling_ddim.py, scheduling_euler_discrete.py,
scheduling_dpmsolver_multistep.py) step for step, in float32 like diffusers' torch tensors, so a full loop
agrees to ~1e-6. Usage: `s.set_timesteps(n)`; `x *= s.init_noise_sigma`; for t in `s.timesteps`:
`out = model(s.scale_model_input(x, t), t)`; `x = s.step(out, t, x)`.

Notation (DDPM/DDIM papers): beta_t noise schedule, alpha_bar_t = prod(1 - beta), sigma_t =
sqrt((1 - alpha_bar_t) / alpha_bar_t) (the k-diffusion / Euler noise level), lambda_t = log(alpha_t / sigma_t)
(DPM-Solver's half log-SNR). Prediction types: epsilon (noise), v_prediction (v = alpha_t eps - sigma_t x0).
"""
from __future__ import annotations

import numpy as np

F32 = np.float32
PREDICTIONS = ("epsilon", "v_prediction")
SPACINGS = ("leading", "trailing", "linspace")


def _betas(cfg: dict) -> np.ndarray:
    n = int(cfg.get("num_train_timesteps", 1000))
    start, end = float(cfg.get("beta_start", 0.0001)), float(cfg.get("beta_end", 0.02))
    if cfg.get("trained_betas") is not None:
        return np.asarray(cfg["trained_betas"], F32)
    kind = cfg.get("beta_schedule", "linear")
    if kind == "linear":
        return np.linspace(start, end, n, dtype=F32)
    if kind == "scaled_linear":  # SD's schedule: linear in sqrt(beta)
        return np.linspace(start ** 0.5, end ** 0.5, n, dtype=F32) ** 2
    if kind == "squaredcos_cap_v2":  # Nichol & Dhariwal's cosine ᾱ(t), each beta capped at 0.999
        t = np.arange(n + 1, dtype=np.float64) / n
        alpha_bar = np.cos((t + 0.008) / 1.008 * np.pi / 2) ** 2
        return np.minimum(1 - alpha_bar[1:] / alpha_bar[:-1], 0.999).astype(F32)
    raise ValueError(f"scheduler: beta_schedule={kind!r} is not supported; "
                     "choose linear, scaled_linear or squaredcos_cap_v2")


def _check(cfg: dict, unsupported: dict) -> None:
    for key, allowed in {"thresholding": False, "rescale_betas_zero_snr": False, **unsupported}.items():
        if key in cfg and cfg[key] != allowed:
            raise ValueError(f"scheduler: {key}={cfg[key]!r} is not supported (only {allowed!r})")
    if cfg.get("prediction_type", "epsilon") not in PREDICTIONS:
        raise ValueError(f"scheduler: prediction_type={cfg.get('prediction_type')!r}; choose one of {PREDICTIONS}")
    if cfg.get("timestep_spacing", "leading") not in SPACINGS:
        raise ValueError(f"scheduler: timestep_spacing={cfg.get('timestep_spacing')!r}; choose one of {SPACINGS}")


def _spaced(cfg: dict, n: int, default: str) -> np.ndarray:
    """Inference timesteps, high to low (float64), by the config's spacing rule."""
    train = int(cfg.get("num_train_timesteps", 1000))
    if not 0 < n <= train:
        raise ValueError(f"scheduler: {n} steps is outside 1..{train}")
    spacing = cfg.get("timestep_spacing", default)
    if spacing == "linspace":
        return np.linspace(0, train - 1, n)[::-1].copy()
    if spacing == "leading":
        return (np.arange(0, n) * (train // n)).round()[::-1].astype(np.float64) + int(cfg.get("steps_offset", 0))
    return np.round(np.arange(train, 0, -train / n)) - 1   # trailing


class Scheduler:
    """Common state: the config dict, alpha_bar, the timestep list and the step counter."""

    name = ""

    def __init__(self, config: dict):
        self.config = dict(config)
        self.prediction_type = self.config.get("prediction_type", "epsilon")
        self.alphas_cumprod = np.cumprod(1.0 - _betas(self.config), dtype=F32)
        self.timesteps = np.zeros(0, np.int64)
        self.step_index = 0

    @classmethod
    def from_config(cls, config: dict) -> "Scheduler":
        return cls(config)

    init_noise_sigma = 1.0

    def scale_model_input(self, sample: np.ndarray, t) -> np.ndarray:
        return sample

    def _index(self, t) -> int:
        """The step index of timestep `t` on first use (diffusers' rule), then a running counter."""
        if self.step_index == 0 and len(self.timesteps) and self.timesteps[0] != t:
            hits = np.nonzero(self.timesteps == t)[0]
            self.step_index = int(hits[1] if len(hits) > 1 else hits[0]) if len(hits) else len(self.timesteps) - 1
        return self.step_index


class DDIMScheduler(Scheduler):
    """Deterministic DDIM (eta = 0), Song et al. 2020, eq. 12."""

    name = "ddim"

    def __init__(self, config: dict):
        _check(config, {})
        super().__init__(config)
        self.final_alpha = F32(1.0) if self.config.get("set_alpha_to_one", True) else self.alphas_cumprod[0]

    def set_timesteps(self, n: int) -> None:
        spacing = self.config.get("timestep_spacing", "leading")
        ts = _spaced(self.config, n, "leading")
        self.timesteps = (ts.round() if spacing == "linspace" else ts).astype(np.int64)
        self.num_inference_steps, self.step_index = n, 0

    def step(self, model_output: np.ndarray, t, sample: np.ndarray) -> np.ndarray:
        t = int(t)
        self._index(t)
        prev = t - int(self.config.get("num_train_timesteps", 1000)) // self.num_inference_steps
        a_t = self.alphas_cumprod[t]
        a_prev = self.alphas_cumprod[prev] if prev >= 0 else self.final_alpha
        b_t = F32(1) - a_t
        if self.prediction_type == "epsilon":
            x0 = (sample - b_t ** F32(0.5) * model_output) / a_t ** F32(0.5)
            eps = model_output
        else:
            x0 = a_t ** F32(0.5) * sample - b_t ** F32(0.5) * model_output
            eps = a_t ** F32(0.5) * model_output + b_t ** F32(0.5) * sample
        if self.config.get("clip_sample", True):
            r = F32(self.config.get("clip_sample_range", 1.0))
            x0 = np.clip(x0, -r, r)
        self.step_index += 1
        return (a_prev ** F32(0.5) * x0 + (F32(1) - a_prev) ** F32(0.5) * eps).astype(F32)


class _SigmaScheduler(Scheduler):
    """Schedulers that work on sigma = sqrt((1 - alpha_bar) / alpha_bar), interpolated at the timesteps."""

    def _set_sigmas(self, timesteps: np.ndarray) -> None:
        if self.config.get("final_sigmas_type", "zero") != "zero":
            raise ValueError("scheduler: only final_sigmas_type='zero' is supported")
        ac = self.alphas_cumprod
        table = ((F32(1) - ac) / ac) ** F32(0.5)
        sigmas = np.interp(timesteps, np.arange(len(table)), table)
        self.sigmas = np.concatenate([sigmas, [0.0]]).astype(F32)
        self.step_index = 0


class EulerDiscreteScheduler(_SigmaScheduler):
    """Euler method on the probability-flow ODE in sigma (Karras et al. 2022, Algorithm 2 with churn 0)."""

    name = "euler"

    def __init__(self, config: dict):
        _check(config, {"use_karras_sigmas": False, "use_exponential_sigmas": False, "use_beta_sigmas": False,
                        "timestep_type": "discrete", "interpolation_type": "linear"})
        super().__init__(config)

    def set_timesteps(self, n: int) -> None:
        ts = _spaced(self.config, n, "leading").astype(F32)
        self._set_sigmas(ts)
        self.timesteps = ts
        self.num_inference_steps = n

    @property
    def init_noise_sigma(self) -> float:
        top = self.sigmas.max() if hasattr(self, "sigmas") else F32(1)
        if self.config.get("timestep_spacing", "leading") in ("linspace", "trailing"):
            return top
        return (top ** F32(2) + F32(1)) ** F32(0.5)

    def scale_model_input(self, sample, t):
        sigma = self.sigmas[self._index(t)]
        return (sample / (sigma ** F32(2) + F32(1)) ** F32(0.5)).astype(F32)

    def step(self, model_output, t, sample):
        i = self._index(t)
        sigma = self.sigmas[i]
        if self.prediction_type == "epsilon":
            x0 = sample - sigma * model_output
        else:
            x0 = model_output * (-sigma / (sigma ** F32(2) + F32(1)) ** F32(0.5)) + sample / (sigma ** F32(2) + F32(1))
        derivative = (sample - x0) / sigma
        self.step_index += 1
        return (sample + derivative * (self.sigmas[i + 1] - sigma)).astype(F32)


class DPMSolverMultistepScheduler(_SigmaScheduler):
    """DPM-Solver++ (Lu et al. 2022, arXiv 2211.01095) multistep, order 2, midpoint; data (x0) prediction."""

    name = "dpm++2m"

    def __init__(self, config: dict):
        _check(config, {"use_karras_sigmas": False, "use_exponential_sigmas": False, "use_beta_sigmas": False,
                        "use_lu_lambdas": False, "use_flow_sigmas": False, "algorithm_type": "dpmsolver++",
                        "variance_type": None})
        if int(config.get("solver_order", 2)) not in (1, 2):
            raise ValueError(f"scheduler: solver_order={config.get('solver_order')} is not supported (1 or 2)")
        if config.get("solver_type", "midpoint") not in ("midpoint", "heun"):
            raise ValueError(f"scheduler: solver_type={config.get('solver_type')!r}; choose midpoint or heun")
        super().__init__(config)

    def set_timesteps(self, n: int) -> None:
        train = int(self.config.get("num_train_timesteps", 1000))
        spacing = self.config.get("timestep_spacing", "linspace")
        if not 0 < n <= train:
            raise ValueError(f"scheduler: {n} steps is outside 1..{train}")
        if spacing == "linspace":   # DPM uses n+1 points and drops the last (diffusers' rule)
            ts = np.linspace(0, train - 1, n + 1).round()[::-1][:-1]
        elif spacing == "leading":
            ts = (np.arange(0, n + 1) * (train // (n + 1))).round()[::-1][:-1] + int(self.config.get("steps_offset", 0))
        else:
            ts = np.arange(train, 0, -train / n).round() - 1
        ts = ts.astype(np.int64)
        self._set_sigmas(ts)
        self.timesteps = ts
        self.num_inference_steps = len(ts)
        self.x0_history: list[np.ndarray] = []

    @staticmethod
    def _alpha_sigma(sigma):
        alpha = F32(1) / (sigma ** F32(2) + F32(1)) ** F32(0.5)
        return alpha, sigma * alpha

    def _x0(self, model_output, sample, sigma):
        alpha, sig = self._alpha_sigma(sigma)
        if self.prediction_type == "epsilon":
            return (sample - sig * model_output) / alpha
        return alpha * sample - sig * model_output

    def step(self, model_output, t, sample):
        i = self._index(t)
        x0 = self._x0(model_output, sample, self.sigmas[i])
        self.x0_history = (self.x0_history + [x0])[-2:]
        last = i == len(self.timesteps) - 1   # final step to sigma 0: first order (final_sigmas_type zero)
        order = 1 if int(self.config.get("solver_order", 2)) == 1 or len(self.x0_history) < 2 or last else 2
        with np.errstate(divide="ignore"):
            a_t, s_t = self._alpha_sigma(self.sigmas[i + 1])
            a_s, s_s = self._alpha_sigma(self.sigmas[i])
            lam_t, lam_s = np.log(a_t) - np.log(s_t), np.log(a_s) - np.log(s_s)
            h = lam_t - lam_s
            phi = a_t * (np.exp(-h) - F32(1))
            x = (s_t / s_s) * sample - phi * x0
            if order == 2:
                a_p, s_p = self._alpha_sigma(self.sigmas[i - 1])
                r0 = (lam_s - (np.log(a_p) - np.log(s_p))) / h
                d1 = (F32(1) / r0) * (x0 - self.x0_history[0])
                if self.config.get("solver_type", "midpoint") == "midpoint":
                    x = x - F32(0.5) * phi * d1
                else:
                    x = x + (a_t * ((np.exp(-h) - F32(1)) / h + F32(1))) * d1
        self.step_index += 1
        return x.astype(F32)


SCHEDULERS = {"ddim": DDIMScheduler, "euler": EulerDiscreteScheduler, "dpm++2m": DPMSolverMultistepScheduler}
_BY_CLASS = {"DDIMScheduler": "ddim", "EulerDiscreteScheduler": "euler", "DPMSolverMultistepScheduler": "dpm++2m"}
ALIASES = {"dpm": "dpm++2m", "dpm++": "dpm++2m", "dpmsolver++": "dpm++2m", "euler_discrete": "euler"}


def make_scheduler(config: dict, name: str | None = None) -> Scheduler:
    """A scheduler from a diffusers scheduler_config.json dict; `name` overrides the class.

    Unsupported classes in the folder (e.g. SD 1.5's PNDMScheduler) fall back to DPM-Solver++ 2M with
    the folder's beta schedule and prediction type.
    """
    if name is None:
        name = _BY_CLASS.get(config.get("_class_name", ""), "dpm++2m")
    name = _BY_CLASS.get(name, name).lower()
    name = ALIASES.get(name, name)
    if name not in SCHEDULERS:
        raise ValueError(f"scheduler {name!r} is not supported; choose one of {sorted(SCHEDULERS)}")
    cls = SCHEDULERS[name]
    if _BY_CLASS.get(config.get("_class_name", "")) != name:
        # Options of another class would be misread: keep only the shared schedule and prediction fields.
        shared = ("num_train_timesteps", "beta_start", "beta_end", "beta_schedule", "trained_betas",
                  "prediction_type", "steps_offset", "timestep_spacing")
        config = {k: config[k] for k in shared if k in config}
        if name == "dpm++2m":
            config.pop("timestep_spacing", None)  # DPM's own default (linspace) suits its n+1-point rule
    return cls.from_config(config)
