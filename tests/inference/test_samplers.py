"""Samplers recover a distribution with a known answer: Gaussian latents.

For x0 ~ N(mu, diag(var)) the exact denoiser is analytic:
E[x0 | x_t] = mu + a var / (a^2 var + s^2) (x_t - a mu) on the path x_t = a x0 + s eps.
Plugged in as the "model" (in each objective's own parametrisation, derived here from
the path, not from the code under test), every sampler must return samples whose
per-channel mean and standard deviation match mu and sqrt(var). What is left is the
sampler's discretisation error and Monte-Carlo error (4096 samples x 4 positions per
channel: 32 samples x 256 positions = 8192 values per channel, standard error of the
mean 1.1% of the std, of the std 0.8%). The denoiser is element-wise, so positions are
independent samples.
"""
import math

import pytest
import torch


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Element-wise work on small tensors: extra intra-op threads only contend."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)

from megatron_vdit.diffusion.objectives import DiffusionObjective
from megatron_vdit.diffusion.samplers import (SAMPLERS, guided, noise_grid, sample,
                                              shift_flow_time)

MU = torch.tensor([1.5, -0.5, 0.0, 0.8])
STD = torch.tensor([0.3, 1.0, 2.0, 0.2])
SHAPE = (32, 4, 1, 16, 16)


def _path(kind, model_t):
    """(alpha, sigma) [B] of the objective's noising path, from first principles."""
    if kind == "flow":
        t = model_t.double() / 1000
        return 1 - t, t
    betas = torch.linspace(1e-4, 0.02, 1000, dtype=torch.float64)  # Ho et al.'s schedule
    alpha_bar = torch.cumprod(1 - betas, 0)[model_t.long()]
    return alpha_bar.sqrt(), (1 - alpha_bar).sqrt()


def gaussian_denoiser(kind, mu=MU, std=STD):
    view = (1, -1, 1, 1, 1)
    mu5, var5 = mu.double().view(view), (std.double() ** 2).view(view)

    def model(x_t, model_t):
        a, s = (v.view(-1, 1, 1, 1, 1) for v in _path(kind, model_t))
        x = x_t.double()
        x0 = mu5 + a * var5 / (a ** 2 * var5 + s ** 2) * (x - a * mu5)
        eps = (x - a * x0) / s
        out = {"ddpm": eps, "v": a * eps - s * x0, "flow": eps - x0}[kind]
        return out.float()
    return model


def assert_matches(x_BCFHW, mu, std_expected):
    """Tolerance: 5% of the std on the mean (4.5 standard errors), 5% relative on the
    std (measured at the steps used here: discretisation error below 3%)."""
    mean, std = channel_stats(x_BCFHW)
    assert ((mean - mu.double()).abs() < 0.05 * std_expected.double()).all(), (mean, mu)
    assert torch.allclose(std, std_expected.double(), rtol=0.05), (std, std_expected)


def channel_stats(x_BCFHW):
    per_channel = x_BCFHW.transpose(0, 1).reshape(x_BCFHW.shape[1], -1).double()
    return per_channel.mean(1), per_channel.std(1)


# Steps per sampler: ancestral sampling with x0_hat plugged into the posterior leaves
# out Var[x0 | x_t], which vanishes only as steps -> 1000 (11% low on the 0.1 channel at
# 250 steps); first-order ODE steps need more steps than Heun.
STEPS = {"ddpm": 1000, "ddim": 400, "euler": 400, "heun": 100}


@pytest.mark.parametrize("kind", ["ddpm", "v", "flow"])
@pytest.mark.parametrize("sampler", SAMPLERS)
def test_sampler_recovers_gaussian(kind, sampler):
    objective = DiffusionObjective(kind)
    x = sample(gaussian_denoiser(kind), objective, SHAPE, sampler=sampler,
               num_steps=STEPS[sampler], seed=3)
    assert_matches(x, MU, STD)


def test_ddim_equals_euler():
    """DDIM (eta = 0) is the Euler step of the probability-flow ODE in sigma/alpha."""
    for kind in ("ddpm", "flow"):
        objective, model = DiffusionObjective(kind), gaussian_denoiser(kind)
        a = sample(model, objective, (8, 4, 1, 2, 2), sampler="ddim", num_steps=10, seed=1)
        b = sample(model, objective, (8, 4, 1, 2, 2), sampler="euler", num_steps=10, seed=1)
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)


def test_heun_is_more_accurate_than_euler_with_few_steps():
    objective = DiffusionObjective("flow")
    errors = {}
    for sampler in ("euler", "heun"):
        x = sample(gaussian_denoiser("flow"), objective, SHAPE, sampler=sampler, num_steps=4,
                   seed=0)
        errors[sampler] = (channel_stats(x)[1] - STD.double()).abs().max().item()
    assert errors["heun"] < errors["euler"], errors


def test_flow_shift_keeps_endpoints_and_sampler_correct():
    t = torch.tensor([0.0, 0.5, 1.0], dtype=torch.float64)
    # shift 3 at t = 0.5: 1.5 / (1 + 1) = 0.75, by hand.
    torch.testing.assert_close(shift_flow_time(t, 3.0), torch.tensor([0.0, 0.75, 1.0],
                                                                     dtype=torch.float64))
    grid = noise_grid(DiffusionObjective("flow"), 4, flow_shift=3.0)
    assert grid.model_t[0] == 1000 and grid.sigma[-1] == 0
    x = sample(gaussian_denoiser("flow"), DiffusionObjective("flow"), SHAPE, sampler="heun",
               num_steps=100, seed=2, flow_shift=3.0)
    assert_matches(x, MU, STD)


def test_same_seed_same_samples_whatever_the_batch():
    objective, model = DiffusionObjective("ddpm"), gaussian_denoiser("ddpm")
    big = sample(model, objective, (6, 4, 1, 2, 2), sampler="ddpm", num_steps=5, seed=9)
    small = sample(model, objective, (2, 4, 1, 2, 2), sampler="ddpm", num_steps=5, seed=9)
    torch.testing.assert_close(big[:2], small)
    other = sample(model, objective, (2, 4, 1, 2, 2), sampler="ddpm", num_steps=5, seed=10)
    assert not torch.allclose(other, small)


def test_guidance_moves_toward_the_conditional_mean():
    """Two Gaussians (caption -> mean +1, null caption -> mean 0): guidance scale s gives
    the exact denoiser of mean s * 1 + (1 - s) * 0 when both share the variance (the
    guided x0 estimate is affine in the means), so s = 2 lands at mean 2."""
    kind, ones = "flow", torch.ones(4)
    cond, uncond = gaussian_denoiser(kind, mu=ones, std=ones), gaussian_denoiser(
        kind, mu=0 * ones, std=ones)
    model = guided(lambda x, t, c: cond(x, t) if c else uncond(x, t), guidance_scale=2.0)
    x = sample(model, DiffusionObjective(kind), SHAPE, sampler="heun", num_steps=100, seed=4)
    mean, std = channel_stats(x)
    assert torch.allclose(mean, 2 * ones.double(), atol=0.05), mean
    assert torch.allclose(std, ones.double(), rtol=0.06)


def test_bad_arguments():
    with pytest.raises(ValueError, match="sampler"):
        sample(gaussian_denoiser("v"), DiffusionObjective("v"), SHAPE, sampler="plms")
    with pytest.raises(ValueError, match="num_steps"):
        noise_grid(DiffusionObjective("v"), 0)
    with pytest.raises(ValueError, match="shift"):
        shift_flow_time(torch.zeros(1), -1.0)
    assert math.isclose(float(noise_grid(DiffusionObjective("v"), 3).model_t[1]), 500.0)


def test_inference_flops_per_video_by_hand():
    """1 layer, d = 8, 4 video tokens, 2 text tokens (width 4), patch features 4 x 1 = 4.
    Forward FLOPs counted by hand: per layer 2*4*14*64 (video-token matmuls) + 2*2*2*64
    (text K/V) + 2*2*4*4*8 (self scores/values) + 2*2*4*2*8 (cross scores/values)
    = 7168 + 512 + 512 + 256 = 8448; embeddings 2*4*4*8*2 (patch in/out) + 2*2*(4*8 + 64)
    (caption MLP) = 512 + 384 = 896. Total 9344 per forward."""
    from megatron_vdit.diffusion.samplers import model_calls
    from megatron_vdit.models.accounting import ModelShape, inference_flops_per_video
    shape = ModelShape(num_layers=1, hidden_size=8, num_attention_heads=1, in_channels=4,
                       patch_volume=1, text_hidden_size=4, max_text_tokens=2)
    assert inference_flops_per_video(shape, 4, model_calls("ddim", 10), guidance=False) == 10 * 9344
    assert inference_flops_per_video(shape, 4, model_calls("heun", 10), guidance=True) == 19 * 2 * 9344
