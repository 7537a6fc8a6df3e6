"""Caption dropout and the null caption; flow shift of training timesteps."""
import pytest
import torch

from megatron_vdit.diffusion.guidance import drop_captions, null_caption
from megatron_vdit.diffusion.objectives import DiffusionObjective


def test_null_caption_is_zero_with_one_live_token():
    text, mask = null_caption(2, 5, 3)
    assert not text.any() and mask.tolist() == [[True, False, False, False, False]] * 2


def test_drop_captions_rate_and_determinism():
    n = 2000
    text = torch.ones(n, 4, 2)
    mask = torch.ones(n, 4, dtype=torch.bool)
    out, out_mask = drop_captions(text, mask, 0.3, list(range(n)))
    dropped = (out.sum((1, 2)) == 0)
    # Binomial(2000, 0.3): mean 600, std 20.5; 4 std.
    assert abs(dropped.sum().item() - 600) < 82
    assert (out_mask[dropped].sum(1) == 1).all() and out_mask[~dropped].all()
    again, _ = drop_captions(text, mask, 0.3, list(range(n)))
    assert torch.equal(again, out), "same seeds, same captions dropped"
    assert drop_captions(text, mask, 0.0, list(range(n)))[0] is text
    assert not drop_captions(text, mask, 1.0, list(range(n)))[0].any()
    with pytest.raises(ValueError, match="probability"):
        drop_captions(text, mask, 1.5, list(range(n)))


def test_flow_shift_moves_training_timesteps_to_high_noise():
    g = torch.Generator().manual_seed(0)
    plain = DiffusionObjective("flow").sample_timesteps(20000, g)
    g = torch.Generator().manual_seed(0)
    shifted = DiffusionObjective("flow", flow_shift=3.0).sample_timesteps(20000, g)
    # Same uniforms u through 3u / (1 + 2u): the median 0.5 maps to 0.75.
    torch.testing.assert_close(shifted, 3 * plain / (1 + 2 * plain))
    assert abs(shifted.median().item() - 0.75) < 0.01
    with pytest.raises(ValueError, match="flow objective only"):
        DiffusionObjective("ddpm", flow_shift=3.0)
