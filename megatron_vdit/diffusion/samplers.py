"""Samplers that turn a trained denoiser into clean latents: ddpm, ddim, euler, heun.

Every objective in `objectives.py` noises along a Gaussian path
``x_t = alpha_t * x0 + sigma_t * eps``: DDPM/v use ``alpha = sqrt(alpha_bar[k])``,
``sigma = sqrt(1 - alpha_bar[k])`` at integer steps k; rectified flow uses
``alpha = 1 - t``, ``sigma = t`` for t in [0, 1]. A sampler only needs, at each grid
point, ``alpha``, ``sigma`` and the model timestep, and the model's output turned into
``(x0_hat, eps_hat)`` (`predict_x0_eps`: the one place that knows what each objective
predicts). That makes each sampler match its objective by construction:

- ``ddpm``: ancestral sampling from the Gaussian posterior q(x_s | x_t, x0 = x0_hat)
  of the path (Ho et al. 2020, written for any alpha/sigma as in Kingma et al. 2021).
- ``ddim``: ``x_s = alpha_s x0_hat + sigma_s eps_hat`` (Song et al. 2021, eta = 0).
- ``euler``: first-order step of the probability-flow ODE in the objective's natural
  coordinates: ``z = x / alpha``, ``tau = sigma / alpha`` for DDPM/v (Karras et al.
  2022), ``z = x``, ``tau = t`` for flow. ``dz/dtau = (z - x0_hat) / tau`` in both.
  It is algebraically the same step as ddim; both names are kept because users look
  for both.
- ``heun``: Heun's second-order method on the same ODE (Karras et al. 2022); the last
  step, into tau = 0, is a plain Euler step.

Grids: DDPM/v evaluate the model at integer steps spaced evenly from 999 down to 0 and
end at the clean latent (alpha = 1, sigma = 0); flow evaluates at t = 1 .. 1/N, shifted
by `shift_flow_time` when ``flow_shift != 1``, and ends at t = 0.

Randomness: the initial noise and ddpm's per-step noise come from one
`torch.Generator` per sample, seeded from (seed, sample index), so a sample does not
depend on the batch it is in, and every rank of a parallel job draws the same numbers.

Shape legend: B batch, C channels, F/H/W latent frames/height/width.
"""
from __future__ import annotations

import dataclasses
from typing import Callable

import torch

from .names import SAMPLERS
from .objectives import DiffusionObjective, seed_for, shift_flow_time

Denoiser = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
"""(x_t [B, ...], model timesteps [B] in [0, 1000)) -> raw model output, same shape as x_t."""


@dataclasses.dataclass(frozen=True)
class NoiseGrid:
    """Grid points of one sampling run, noisiest first; the last point is clean data."""

    model_t: torch.Tensor
    """Model timestep at each of the N evaluation points [N]."""
    alpha: torch.Tensor
    """alpha at the N evaluation points then the clean end point [N + 1] (float64)."""
    sigma: torch.Tensor
    """sigma at the same N + 1 points (the last is 0)."""
    natural_scale: torch.Tensor
    """z = x * natural_scale: 1/alpha for DDPM/v, 1 for flow [N + 1]."""
    natural_time: torch.Tensor
    """tau: sigma/alpha for DDPM/v, t for flow [N + 1]."""

    @property
    def num_steps(self) -> int:
        return self.model_t.numel()


def noise_grid(objective: DiffusionObjective, num_steps: int, flow_shift: float = 1.0) -> NoiseGrid:
    """The evaluation grid of `num_steps` model calls for `objective` (see module doc)."""
    if num_steps < 1:
        raise ValueError(f"num_steps must be >= 1, got {num_steps}")
    if objective.kind == "flow":
        t = shift_flow_time(torch.linspace(1.0, 0.0, num_steps + 1, dtype=torch.float64),
                            flow_shift)
        return NoiseGrid(model_t=(t[:-1] * objective.num_timesteps).float(), alpha=1 - t,
                         sigma=t, natural_scale=torch.ones_like(t), natural_time=t)
    if num_steps > objective.num_timesteps:
        raise ValueError(f"num_steps={num_steps} exceeds the {objective.num_timesteps} "
                         f"training timesteps of the {objective.kind} objective")
    steps = torch.linspace(objective.num_timesteps - 1, 0, num_steps, dtype=torch.float64).round()
    alpha_bar = objective._alpha_bar.double()[steps.long()]
    alpha = torch.cat([alpha_bar.sqrt(), torch.ones(1, dtype=torch.float64)])
    sigma = torch.cat([(1 - alpha_bar).sqrt(), torch.zeros(1, dtype=torch.float64)])
    return NoiseGrid(model_t=steps.float(), alpha=alpha, sigma=sigma, natural_scale=1 / alpha,
                     natural_time=sigma / alpha)


def predict_x0_eps(kind: str, output: torch.Tensor, x_t: torch.Tensor, alpha: float,
                   sigma: float) -> tuple[torch.Tensor, torch.Tensor]:
    """The model's raw output at (x_t, alpha, sigma) as (x0_hat, eps_hat).

    ddpm predicts eps; v predicts ``alpha eps - sigma x0`` (and alpha^2 + sigma^2 = 1);
    flow predicts the velocity ``eps - x0`` with alpha = 1 - t, sigma = t.
    """
    if kind == "ddpm":
        return (x_t - sigma * output) / alpha, output
    if kind == "v":
        return alpha * x_t - sigma * output, sigma * x_t + alpha * output
    if kind == "flow":
        return x_t - sigma * output, x_t + alpha * output
    raise ValueError(f"unknown objective {kind!r}")


def guided(model: Callable[..., torch.Tensor], guidance_scale: float) -> Callable[..., torch.Tensor]:
    """Classifier-free guidance around `model(x, t, cond)` where cond selects the caption.

    ``model(x, t, True)`` is the captioned prediction, ``model(x, t, False)`` the null-
    caption one; the result is ``uncond + s * (cond - uncond)`` (Ho & Salimans 2022).
    Every objective's output is affine in the score at fixed (x, t), so guiding the raw
    output equals guiding eps or x0. s = 1 is the captioned model alone (one call).
    """
    def denoise(x, t):
        if guidance_scale == 1.0:
            return model(x, t, True)
        return combine_guidance(model(x, t, True), model(x, t, False), guidance_scale)
    return denoise


def combine_guidance(cond: torch.Tensor, uncond: torch.Tensor, scale: float) -> torch.Tensor:
    return uncond + scale * (cond - uncond)


def model_calls(sampler: str, num_steps: int) -> int:
    """Model evaluations of one sampling run (before guidance doubles them)."""
    return 2 * num_steps - 1 if sampler == "heun" else num_steps


def initial_noise(shape_BCFHW: tuple[int, ...], seed: int, generators=None) -> torch.Tensor:
    """x_T ~ N(0, I), sample i drawn from its own generator seeded by (seed, i)."""
    gens = generators or sample_generators(seed, shape_BCFHW[0])
    return torch.stack([torch.randn(shape_BCFHW[1:], generator=g, dtype=torch.float32)
                        for g in gens])


def sample_generators(seed: int, batch_size: int) -> list[torch.Generator]:
    return [torch.Generator().manual_seed(seed_for(seed, i)) for i in range(batch_size)]


@torch.no_grad()
def sample(denoiser: Denoiser, objective: DiffusionObjective, shape_BCFHW: tuple[int, ...], *,
           sampler: str = "ddim", num_steps: int = 50, seed: int = 0, flow_shift: float = 1.0,
           progress: Callable | None = None) -> torch.Tensor:
    """Draw clean latents [B, C, F, H, W] (float32, on CPU) with `sampler`.

    `denoiser(x_t, model_t)` returns the objective's raw prediction (already guided);
    it receives float32 CPU tensors and may move them. `progress(step)` is called after
    each step (a tqdm update, say).
    """
    if sampler not in SAMPLERS:
        raise ValueError(f"unknown sampler {sampler!r}; expected one of {SAMPLERS}")
    grid = noise_grid(objective, num_steps, flow_shift)
    gens = sample_generators(seed, shape_BCFHW[0])
    x = initial_noise(shape_BCFHW, seed, gens)
    step = {"ddpm": _ddpm_step, "ddim": _ddim_step, "euler": _euler_step,
            "heun": _heun_step}[sampler]
    for i in range(grid.num_steps):
        x = step(denoiser, objective.kind, grid, i, x, gens)
        if progress is not None:
            progress(i)
    return x


def _x0_eps(denoiser, kind, grid: NoiseGrid, i: int, x):
    t_B = grid.model_t[i].expand(x.shape[0]).clone()
    output = denoiser(x, t_B).float().cpu()
    return predict_x0_eps(kind, output, x, float(grid.alpha[i]), float(grid.sigma[i]))


def _ddim_step(denoiser, kind, grid, i, x, gens):
    x0, eps = _x0_eps(denoiser, kind, grid, i, x)
    return float(grid.alpha[i + 1]) * x0 + float(grid.sigma[i + 1]) * eps


def _ddpm_step(denoiser, kind, grid, i, x, gens):
    x0, _ = _x0_eps(denoiser, kind, grid, i, x)
    a_t, s_t = grid.alpha[i], grid.sigma[i]
    a_s, s_s = grid.alpha[i + 1], grid.sigma[i + 1]
    a_ts = a_t / a_s                          # forward transition x_t = a_ts x_s + ...
    var_ts = s_t ** 2 - a_ts ** 2 * s_s ** 2  # ... + N(0, var_ts)
    mean = (a_ts * s_s ** 2 / s_t ** 2) * x + (a_s * var_ts / s_t ** 2) * x0
    std = float((var_ts * s_s ** 2 / s_t ** 2).clamp_min(0).sqrt())
    if std == 0.0:
        return mean.float()
    noise = torch.stack([torch.randn(x.shape[1:], generator=g, dtype=torch.float32) for g in gens])
    return (mean + std * noise).float()


def _ode_derivative(denoiser, kind, grid, i, x):
    """(z, dz/dtau) at grid point i in the natural ODE coordinates."""
    x0, _ = _x0_eps(denoiser, kind, grid, i, x)
    z = x * float(grid.natural_scale[i])
    return z, (z - x0) / float(grid.natural_time[i])


def _euler_step(denoiser, kind, grid, i, x, gens):
    z, d = _ode_derivative(denoiser, kind, grid, i, x)
    z_next = z + float(grid.natural_time[i + 1] - grid.natural_time[i]) * d
    return z_next / float(grid.natural_scale[i + 1])


def _heun_step(denoiser, kind, grid, i, x, gens):
    z, d = _ode_derivative(denoiser, kind, grid, i, x)
    dtau = float(grid.natural_time[i + 1] - grid.natural_time[i])
    z_next = z + dtau * d
    if i + 1 == grid.num_steps:  # tau = 0: no derivative there
        return z_next / float(grid.natural_scale[i + 1])
    x_pred = z_next / float(grid.natural_scale[i + 1])
    _, d_next = _ode_derivative(denoiser, kind, grid, i + 1, x_pred)
    return (z + dtau * 0.5 * (d + d_next)) / float(grid.natural_scale[i + 1])
