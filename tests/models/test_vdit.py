import pytest
import torch

from megatron_vdit.models.config import VDiTConfig, validate_model_config
from megatron_vdit.models.layers import apply_rope, patchify, rope_tables, unpatchify
from megatron_vdit.models.vdit import VideoDiT


def tiny_config(**overrides):
    values = dict(num_layers=2, hidden_size=64, num_attention_heads=2, in_channels=4,
                  latent_frames=2, latent_height=8, latent_width=6, text_hidden_size=16,
                  max_text_tokens=8, use_cpu_initialization=True)
    values.update(overrides)
    return VDiTConfig(**values)


def test_patchify_roundtrip():
    x = torch.randn(2, 3, 4, 6, 8)
    tokens = patchify(x, (2, 3, 2))
    assert tokens.shape == (2 * 2 * 4, 2, 3 * 2 * 3 * 2)
    assert torch.equal(unpatchify(tokens, (2, 3, 2), 3, (2, 2, 4)), x)


def test_rope_is_relative():
    """Scores after RoPE depend only on position differences along each axis."""
    cos, sin = rope_tables((3, 4, 5), 24, 10000.0)
    q, k = torch.randn(24), torch.randn(24)
    grid = torch.arange(60).reshape(3, 4, 5)

    def score(i, j):
        qi = apply_rope(q.view(1, 1, 1, 24), cos[i:i + 1], sin[i:i + 1]).flatten()
        kj = apply_rope(k.view(1, 1, 1, 24), cos[j:j + 1], sin[j:j + 1]).flatten()
        return (qi * kj).sum()

    a = score(grid[0, 1, 2].item(), grid[1, 2, 3].item())
    b = score(grid[1, 2, 1].item(), grid[2, 3, 2].item())
    c = score(grid[0, 1, 2].item(), grid[1, 2, 4].item())
    assert torch.allclose(a, b, atol=1e-5) and not torch.allclose(a, c, atol=1e-3)


def test_forward_shape_and_text_mask(tp_group):
    torch.manual_seed(0)
    model = VideoDiT(tiny_config(), tp_group)
    # Non-zero output head so the text path is visible in the output.
    torch.nn.init.normal_(model.final_layer.linear.weight, std=0.1)
    torch.nn.init.normal_(model.ada_single[1].weight, std=0.1)
    x, t = torch.randn(2, 4, 2, 8, 6), torch.tensor([10.0, 900.0])
    text, mask = torch.randn(2, 8, 16), torch.zeros(2, 8, dtype=torch.bool)
    mask[:, :3] = True
    out = model(x, t, text, mask)
    assert out.shape == x.shape
    changed_padding = text.clone()
    changed_padding[:, 3:] = torch.randn(2, 5, 16)
    assert torch.allclose(model(x, t, changed_padding, mask), out, atol=1e-6)
    changed_real = text.clone()
    changed_real[:, 0] += 1.0
    assert not torch.allclose(model(x, t, changed_real, mask), out, atol=1e-4)


@pytest.mark.parametrize("overrides,message", [
    (dict(hidden_size=66, num_attention_heads=4), "does not divide hidden_size=66"),
    (dict(latent_height=7), "patch size 2 does not divide latent height=7"),
    (dict(hidden_size=12, num_attention_heads=3), "head dim 4"),
])
def test_invalid_model_configs(overrides, message):
    with pytest.raises(ValueError, match=message):
        validate_model_config(tiny_config(**overrides))


@pytest.mark.parametrize("hidden", [12, 24])
def test_output_bottleneck_warning_matches_the_output_rank(tp_group, hidden):
    """The warning's claim, checked on the model: a token's prediction (in_channels x patch
    = 16 values here) spans at most hidden_size directions, so hidden 12 cannot reach all 16."""
    from megatron_vdit.models.validation import output_bottleneck
    cfg = tiny_config(hidden_size=hidden, num_attention_heads=2)
    torch.manual_seed(0)
    model = VideoDiT(cfg, tp_group)
    with torch.no_grad():
        for p in model.parameters():  # adaLN-zero starts the output at 0: randomise all
            p.normal_(0, 0.3)
    x = torch.randn(4, 4, 2, 8, 6)
    out = model(x, torch.tensor([10.0, 200.0, 500.0, 900.0]), torch.randn(4, 8, 16),
                torch.ones(4, 8, dtype=torch.bool))
    tokens = patchify(out, (1, 2, 2)).reshape(-1, 16).double()   # [B * tokens, 16 values]
    rank = torch.linalg.matrix_rank(tokens - tokens.mean(0), rtol=1e-5).item()   # float32 outputs
    problem = output_bottleneck(hidden_size=hidden, in_channels=4, patch=(1, 2, 2))
    if hidden < 16:
        assert rank <= hidden and problem and "below the 16 values" in problem
    else:
        assert rank == 16 and problem is None
