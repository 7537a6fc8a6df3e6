import pytest
import torch

from megatron_vdit.diffusion.objectives import DiffusionObjective


def test_ddpm_example_matches_closed_form():
    obj = DiffusionObjective("ddpm", "linear")
    x0, noise = torch.randn(3, 2, 4), torch.randn(3, 2, 4)
    t = torch.tensor([0.0, 499.0, 999.0])
    x_t, t_model, target = obj.make_example(x0, t, noise)
    betas = torch.linspace(1e-4, 0.02, 1000, dtype=torch.float64)
    alpha_bar = torch.cumprod(1 - betas, 0)[t.long()].float().view(-1, 1, 1)
    assert torch.allclose(x_t, alpha_bar.sqrt() * x0 + (1 - alpha_bar).sqrt() * noise, atol=1e-6)
    assert torch.equal(target, noise) and torch.equal(t_model, t)
    # Nearly clean at t=0, nearly pure noise at t=999 for the linear schedule.
    assert (x_t[0] - x0[0]).abs().max() <= 0.011 * noise[0].abs().max()
    assert alpha_bar[2].item() < 1e-4


def test_v_and_flow_targets():
    x0, noise, t = torch.randn(2, 5), torch.randn(2, 5), torch.tensor([100.0, 800.0])
    v = DiffusionObjective("v", "cosine")
    x_t, _, target = v.make_example(x0, t, noise)
    # x0 is recoverable from (x_t, v): x0 = a x_t - s v.
    a = v._alpha_bar[t.long()].sqrt().view(-1, 1)
    s = (1 - v._alpha_bar[t.long()]).sqrt().view(-1, 1)
    assert torch.allclose(a * x_t - s * target, x0, atol=1e-5)
    flow = DiffusionObjective("flow")
    tf = torch.tensor([0.25, 0.75])
    x_t, t_model, target = flow.make_example(x0, tf, noise)
    assert torch.allclose(x_t, (1 - tf.view(-1, 1)) * x0 + tf.view(-1, 1) * noise)
    assert torch.allclose(target, noise - x0) and torch.allclose(t_model, tf * 1000)


@pytest.mark.parametrize("kind", ["ddpm", "v", "flow"])
def test_validation_examples_do_not_depend_on_batching(kind):
    obj = DiffusionObjective(kind)
    x0 = torch.randn(6, 3, 2, 4, 4)
    whole = obj.validation_example(x0, list(range(6)), 6, seed=3)
    parts = [obj.validation_example(x0[i:i + 2], list(range(i, i + 2)), 6, seed=3) for i in (0, 2, 4)]
    for k in range(3):
        assert torch.equal(whole[k], torch.cat([p[k] for p in parts]))
    other_seed = obj.validation_example(x0, list(range(6)), 6, seed=4)
    assert not torch.equal(whole[0], other_seed[0])


def test_stratified_timesteps_cover_the_schedule():
    obj = DiffusionObjective("ddpm")
    ts = [obj.stratified_timestep(i, 10) for i in range(10)]
    assert ts == [50.0 + 100 * i for i in range(10)]
    flow = DiffusionObjective("flow")
    assert flow.stratified_timestep(0, 4) == pytest.approx(0.125)


def test_unknown_choices():
    with pytest.raises(ValueError, match="unknown objective 'eps2'"):
        DiffusionObjective("eps2")
    with pytest.raises(ValueError, match="unknown beta schedule 'quad'"):
        DiffusionObjective("ddpm", "quad")
