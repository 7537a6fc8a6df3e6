"""Diffusion objectives: DDPM noise prediction (the paper's), v-prediction, rectified flow.

Every objective turns clean latents x0 into a training example (x_t, model timestep,
target) and the loss is the plain mean-squared error between prediction and target.
Model timesteps are floats in [0, 1000) for every objective, so one timestep embedder
serves all.

Randomness is explicit: timesteps and noise come from torch.Generators the caller
seeds, so a run is reproducible and resumable, and the validation protocol
(`validation_example`) is a pure function of (seed, sample index).
"""
from __future__ import annotations

import dataclasses
import math

import torch

from .names import BETA_SCHEDULES, OBJECTIVES
NUM_TRAIN_TIMESTEPS = 1000


def _betas(schedule: str, steps: int) -> torch.Tensor:
    if schedule == "linear":  # Ho et al. 2020
        return torch.linspace(1e-4, 0.02, steps, dtype=torch.float64)
    if schedule == "cosine":  # Nichol & Dhariwal 2021
        s = 0.008
        t = torch.arange(steps + 1, dtype=torch.float64) / steps
        alpha_bar = torch.cos((t + s) / (1 + s) * math.pi / 2) ** 2
        return (1 - alpha_bar[1:] / alpha_bar[:-1]).clamp(max=0.999)
    raise ValueError(f"unknown beta schedule {schedule!r}; expected one of {BETA_SCHEDULES}")


@dataclasses.dataclass
class DiffusionObjective:
    """`kind`: ddpm (predict noise), v (predict v), flow (rectified flow velocity)."""

    kind: str = "ddpm"
    beta_schedule: str = "linear"
    num_timesteps: int = NUM_TRAIN_TIMESTEPS
    flow_shift: float = 1.0
    """flow only: training timesteps t are drawn as shift_flow_time(U(0, 1), flow_shift)."""

    def __post_init__(self):
        if self.kind not in OBJECTIVES:
            raise ValueError(f"unknown objective {self.kind!r}; expected one of {OBJECTIVES}")
        if self.flow_shift != 1.0 and self.kind != "flow":
            raise ValueError(f"flow_shift={self.flow_shift} applies to the flow objective only, "
                             f"not {self.kind!r}")
        alpha_bar = torch.cumprod(1 - _betas(self.beta_schedule, self.num_timesteps), 0)
        self._alpha_bar = alpha_bar.float()

    # -- timesteps ---------------------------------------------------------------------
    def sample_timesteps(self, batch_size: int, generator: torch.Generator) -> torch.Tensor:
        """Training timesteps: integer steps for ddpm/v, continuous (0, 1) for flow.

        The validation timesteps (`stratified_timestep`) are never shifted, so runs with
        and without a shift are scored on the same noise levels."""
        if self.kind == "flow":
            return shift_flow_time(torch.rand(batch_size, generator=generator), self.flow_shift)
        return torch.randint(0, self.num_timesteps, (batch_size,), generator=generator).float()

    def stratified_timestep(self, index: int, count: int) -> float:
        """The validation timestep of sample `index` of `count`: the (i+0.5)/n quantile."""
        u = (index + 0.5) / count
        return u if self.kind == "flow" else float(math.floor(u * self.num_timesteps))

    # -- examples ----------------------------------------------------------------------
    def make_example(self, x0: torch.Tensor, timesteps_B: torch.Tensor, noise: torch.Tensor
                     ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(x_t, model timesteps in [0, 1000), target) for clean latents x0 [B, ...]."""
        expand = (-1,) + (1,) * (x0.dim() - 1)
        if self.kind == "flow":
            t = timesteps_B.to(x0.dtype).view(expand)
            x_t = (1 - t) * x0 + t * noise
            return x_t, timesteps_B * self.num_timesteps, noise - x0
        alpha_bar = self._alpha_bar.to(timesteps_B.device)[timesteps_B.long()]
        alpha_bar = alpha_bar.to(x0.dtype).view(expand)
        a, s = alpha_bar.sqrt(), (1 - alpha_bar).sqrt()
        x_t = a * x0 + s * noise
        target = noise if self.kind == "ddpm" else a * noise - s * x0
        return x_t, timesteps_B, target

    def training_example(self, x0: torch.Tensor, sample_seeds: list[int]):
        """Random timestep and noise per sample, each from its own seeded generator.

        The caller derives `sample_seeds` from (seed, iteration, position in the global
        batch), so every layout and a resumed run draw the same numbers, and each rank
        draws only its own samples' noise.

        On a GPU the noise is drawn there, from a device generator with the same seed
        (no host-side tensor to copy; CUDA's generator is its own stream, so GPU runs
        match each other at every layout, not CPU runs). On CPU, timestep and noise come
        from one generator.
        """
        timesteps, noise = [], []
        on_cpu = x0.device.type == "cpu"
        for seed in sample_seeds:
            generator = torch.Generator().manual_seed(seed)
            timesteps.append(self.sample_timesteps(1, generator))
            noise_gen = generator if on_cpu else torch.Generator(x0.device).manual_seed(seed)
            noise.append(torch.randn(x0.shape[1:], generator=noise_gen, dtype=torch.float32,
                                     device=x0.device))
        return self.make_example(x0, torch.cat(timesteps).to(x0.device),
                                 torch.stack(noise).to(x0.dtype))

    def validation_example(self, x0: torch.Tensor, sample_indices: list[int], num_samples: int,
                           seed: int):
        """Deterministic validation example (see docs/design.md, "Validation protocol").

        Sample i of the held-out set always gets the same timestep (stratified over the
        schedule) and the same noise (a generator seeded by (seed, i)), whatever the
        batch size, layout or process that evaluates it.
        """
        timesteps = torch.tensor([self.stratified_timestep(i, num_samples) for i in sample_indices])
        noise = torch.stack([
            torch.randn(x0.shape[1:], generator=torch.Generator().manual_seed(
                seed_for(seed, i)), dtype=torch.float32) for i in sample_indices]).to(x0.dtype)
        return self.make_example(x0, timesteps, noise)


def shift_flow_time(t: torch.Tensor, shift: float) -> torch.Tensor:
    """SD3 / Wan timestep shift: ``shift * t / (1 + (shift - 1) * t)``.

    Maps [0, 1] onto itself with 0 and 1 fixed; shift > 1 spends more of the schedule
    at high noise, which higher-resolution (more-token) videos need because their
    redundancy lets more signal survive a given noise level.
    """
    if not shift > 0:
        raise ValueError(f"flow shift must be > 0, got {shift}")
    if shift == 1.0:
        return t
    return shift * t / (1 + (shift - 1) * t)


def seed_for(*keys: int) -> int:
    """A 63-bit seed from integer keys, stable across processes and Python versions."""
    value = 0x5DEECE66D
    for key in keys:
        value = (value * 1_000_003 + int(key) * 7919 + 0x9E3779B9) % (2 ** 63 - 1)
    return value
