"""Layout-free initialisation (models/init.py): pieces agree with the whole, the
distributions are the layers' usual ones, and nothing is allocated before materialising.

Expected values come from the layers' documented rules, not from the code under test:
megatron's normal(0, 0.02) and normal(0, 0.02 / sqrt(2 L)) for its output projections,
PyTorch's uniform(+-1/sqrt(fan_in)) for nn.Linear, xavier's sqrt(6 / (fan_in + fan_out)).
"""
import math

import pytest
import torch
from torch import nn

from megatron_vdit.models.config import VDiTConfig
from megatron_vdit.models.init import TILE, InitRule, init_piece, init_rules
from megatron_vdit.models.vdit import VideoDiT
from megatron_vdit.parallel.layout import ParallelLayout, build_parallel_groups
from megatron_vdit.parallel.parallelize import build_parallel_model, materialize


@pytest.mark.parametrize("rule", [InitRule("normal", 0.5), InitRule("uniform", 2.0)])
def test_any_piece_equals_that_part_of_the_whole(rule):
    full_shape = (TILE + 90, 2 * TILE + 7)  # tiles cut short at both edges
    whole = init_piece(rule, 7, "w", full_shape, (0, 0), full_shape)
    g = torch.Generator().manual_seed(0)
    for _ in range(12):
        r0, c0 = (int(torch.randint(0, n, (1,), generator=g)) for n in full_shape)
        nr = int(torch.randint(0, full_shape[0] - r0 + 1, (1,), generator=g))
        nc = int(torch.randint(0, full_shape[1] - c0 + 1, (1,), generator=g))
        piece = init_piece(rule, 7, "w", full_shape, (r0, c0), (nr, nc))
        assert torch.equal(piece, whole[r0:r0 + nr, c0:c0 + nc]), (r0, c0, nr, nc)
    vector = init_piece(rule, 7, "b", (600,), (0,), (600,))
    assert torch.equal(init_piece(rule, 7, "b", (600,), (250,), (300,)), vector[250:550])
    # Other names and seeds draw other values.
    assert not torch.equal(init_piece(rule, 7, "v", full_shape, (0, 0), full_shape), whole)
    assert not torch.equal(init_piece(rule, 8, "w", full_shape, (0, 0), full_shape), whole)


def test_the_model_has_the_layers_usual_distributions(tp_group):
    layers, d = 3, 256
    cfg = VDiTConfig(num_layers=layers, hidden_size=d, num_attention_heads=4, in_channels=4,
                     latent_frames=1, latent_height=4, latent_width=4, text_hidden_size=64,
                     max_text_tokens=4, timestep_embed_dim=256, use_cpu_initialization=True)
    torch.manual_seed(0)
    p = dict(VideoDiT(cfg, tp_group).named_parameters())

    def close_std(name, std):
        got = p[name].detach().double()
        assert abs(got.mean()) < 4 * std / math.sqrt(got.numel()), name
        assert got.std().item() == pytest.approx(std, rel=0.03), name

    close_std("blocks.0.self_attention.linear_qkv.weight", 0.02)
    close_std("blocks.2.mlp.linear_fc1.weight", 0.02)
    close_std("blocks.1.mlp.linear_fc2.weight", 0.02 / math.sqrt(2 * layers))
    close_std("blocks.1.self_attention.linear_proj.weight", 0.02 / math.sqrt(2 * layers))
    close_std("blocks.0.scale_shift_table", 1 / math.sqrt(d))
    for name, bound in [("timestep_embedder.mlp.2.weight", 1 / math.sqrt(d)),
                        ("caption_projection.fc1.weight", 1 / math.sqrt(64)),
                        ("patch_embed.weight", math.sqrt(6 / (4 * 4 + d)))]:
        w = p[name].detach()
        assert w.abs().max() <= bound and w.abs().max() > 0.97 * bound, name
        # uniform(-b, b) has mean square b^2 / 3
        assert w.pow(2).mean().item() == pytest.approx(bound ** 2 / 3, rel=0.1), name
    for name in ("ada_single.1.weight", "final_layer.linear.weight",
                 "blocks.0.self_attention.linear_qkv.bias", "blocks.0.norm_cross.bias"):
        assert not p[name].any(), name
    for name in ("blocks.0.self_attention.q_norm.weight", "blocks.2.norm_cross.weight"):
        assert torch.equal(p[name], torch.ones_like(p[name])), name
    # Different parameters are independent draws (tile seeds include the name).
    a = p["blocks.0.mlp.linear_fc1.weight"].flatten()
    b = p["blocks.1.mlp.linear_fc1.weight"].flatten()
    assert abs(torch.corrcoef(torch.stack([a, b]))[0, 1]) < 0.01


def test_meta_build_allocates_nothing_until_materialised(tp_group):
    cfg = VDiTConfig(num_layers=2, hidden_size=32, num_attention_heads=4, in_channels=4,
                     latent_frames=2, latent_height=4, latent_width=6, text_hidden_size=16,
                     max_text_tokens=5, timestep_embed_dim=32, use_cpu_initialization=True)
    groups = build_parallel_groups(ParallelLayout.from_world_size(1))
    model = build_parallel_model(cfg, groups, seed=3, device="meta")
    assert all(p.is_meta for p in model.parameters())
    assert not model.rope_cos.is_meta  # buffers are real from the start
    rope = model.rope_cos.clone()
    materialize(model, groups, "cpu")
    torch.manual_seed(3)
    reference = dict(VideoDiT(cfg, groups.tp).named_parameters())
    for name, value in model.named_parameters():
        assert torch.equal(value, reference[name]), name
    assert torch.equal(model.rope_cos, rope)


def test_a_parameter_without_a_rule_is_refused():
    class WithTable(nn.Module):
        def __init__(self):
            super().__init__()
            self.proj = nn.Linear(4, 4)
            self.table = nn.Parameter(torch.empty(3, 4))

    with pytest.raises(ValueError, match="parameter table .* has no init rule"):
        init_rules(WithTable())
