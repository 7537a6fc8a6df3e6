import math

import pytest
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from megatron_vdit.models import accounting as acc
from megatron_vdit.models.config import VDiTConfig
from megatron_vdit.models.vdit import VideoDiT


@pytest.mark.parametrize("layers,hidden,heads,channels,patch,text", [
    (2, 64, 2, 4, (1, 2, 2), 64),
    (3, 96, 3, 16, (1, 2, 2), 48),
    (1, 128, 8, 8, (2, 2, 2), 32),
])
def test_accounting_matches_built_model(tp_group, layers, hidden, heads, channels, patch, text):
    cfg = VDiTConfig(num_layers=layers, hidden_size=hidden, num_attention_heads=heads,
                     in_channels=channels, latent_frames=4, latent_height=8, latent_width=8,
                     patch_size_t=patch[0], patch_size_h=patch[1], patch_size_w=patch[2],
                     text_hidden_size=text, use_cpu_initialization=True)
    model = VideoDiT(cfg, tp_group)
    shape = acc.ModelShape.from_config(cfg)
    assert sum(p.numel() for p in model.blocks.parameters()) == acc.params_nonembed(shape)
    assert sum(p.numel() for p in model.parameters()) == acc.params_total(shape)
    # The paper's N is the leading term; the rest is O(L * d).
    extra = acc.params_nonembed(shape) - acc.paper_params_nonembed(layers, hidden)
    assert 0 < extra <= 30 * layers * hidden


@pytest.mark.parametrize("layers,hidden,heads,channels,patch,text,text_tokens", [
    (2, 64, 2, 4, (1, 2, 2), 48, 8),
    (1, 96, 3, 16, (2, 2, 2), 32, 5),
])
def test_model_flops_match_flop_counter(tp_group, layers, hidden, heads, channels, patch, text,
                                        text_tokens):
    """`model_flops_per_sample` against torch's FlopCounterMode on the built model.

    The accounting counts the per-token matmuls and calls training 3x forward. The
    counter sees two more things, both derived here from the architecture: per-sample
    conditioning matmuls (timestep MLP and the adaLN-single projection, O(d^2) per
    sample), and a backward that skips input gradients nobody needs (the patch
    embedding's, the caption projection's first layer's, the timestep MLP's first
    layer's). The math SDPA kernel is forced so attention shows up as counted bmm's."""
    cfg = VDiTConfig(num_layers=layers, hidden_size=hidden, num_attention_heads=heads,
                     in_channels=channels, latent_frames=4, latent_height=8, latent_width=8,
                     patch_size_t=patch[0], patch_size_h=patch[1], patch_size_w=patch[2],
                     text_hidden_size=text, max_text_tokens=text_tokens,
                     use_cpu_initialization=True)
    model = VideoDiT(cfg, tp_group)
    batch, d, n = 3, hidden, cfg.tokens_per_sample
    x = torch.randn(batch, channels, 4, 8, 8)
    caption = torch.randn(batch, text_tokens, text)
    mask = torch.ones(batch, text_tokens, dtype=torch.bool)
    mask[0, 2:] = False  # padding is masked, not skipped: the matmuls keep their size
    with sdpa_kernel(SDPBackend.MATH):
        with FlopCounterMode(display=False) as forward:
            out = model(x, torch.rand(batch) * 1000, caption, mask)
        with FlopCounterMode(display=False) as backward:
            out.square().mean().backward()
    conditioning = 2 * (cfg.timestep_embed_dim * d + d * d + d * 6 * d)
    unneeded_input_grads = 2 * (n * cfg.in_channels * cfg.patch_volume * d
                                + text_tokens * text * d + cfg.timestep_embed_dim * d)
    per_sample = acc.model_flops_per_sample(acc.ModelShape.from_config(cfg), n)
    assert forward.get_total_flops() == batch * (per_sample / 3 + conditioning)
    assert backward.get_total_flops() == batch * (2 * (per_sample / 3 + conditioning)
                                                  - unneeded_input_grads)


def test_paper_flops_formula_hand_values():
    # N = 16 * 28 * 1536^2, n_ctx = 1280, d = 1536: 3/4 N (7 + 1280/1536)
    n = 16 * 28 * 1536 ** 2
    assert acc.paper_params_nonembed(28, 1536) == n == 1_056_964_608
    expected = 0.75 * n * (7 + 1280 / 1536)
    assert acc.paper_flops_per_token(n, 1280, 1536) == pytest.approx(expected, rel=1e-12)
    assert acc.paper_flops_per_token(1e9, 0, 1000) == pytest.approx(5.25e9)
    assert acc.paper_training_flops(1e9, 0, 1000, 2e9) == pytest.approx(1.05e19)


def test_model_flops_reduce_to_paper_formula_without_text_terms():
    shape = acc.ModelShape(num_layers=4, hidden_size=256, num_attention_heads=4,
                           max_text_tokens=0, text_hidden_size=1, in_channels=1, patch_volume=1)
    n_ctx = 512
    exact = acc.model_flops_per_sample(shape, n_ctx, text_tokens=0)
    paper = acc.paper_flops_per_token(acc.paper_params_nonembed(4, 256), n_ctx, 256) * n_ctx
    embed = 3 * 2 * n_ctx * 256 * 2
    assert exact == pytest.approx(paper + embed, rel=1e-12)


@pytest.mark.parametrize("name", [k for k in acc.PRESETS if not k.startswith("cpu")])
def test_presets_hit_their_names(name):
    layers, hidden, heads = acc.PRESETS[name]
    target = float(name.rstrip("b")) * 1e9
    assert acc.paper_params_nonembed(layers, hidden) == pytest.approx(target, rel=0.02)
    assert hidden % heads == 0 and (hidden // heads) in (64, 128)


def test_cpu_presets_span_the_sweep_range():
    sizes = [acc.paper_params_nonembed(*acc.PRESETS[k][:2]) for k in acc.PRESETS if k.startswith("cpu")]
    assert min(sizes) < 2e5 and 1e7 < max(sizes) < 2.5e7


@pytest.mark.parametrize("target", [3e6, 1.7e7, 2.6e8, 1.07e9, 7e9, 1.8e10])
def test_shape_for_params(target):
    shape = acc.shape_for_params(target)
    n = acc.paper_params_nonembed(shape["num_layers"], shape["hidden_size"])
    assert n == pytest.approx(target, rel=0.05)
    assert shape["hidden_size"] % shape["num_attention_heads"] == 0


def test_shape_and_preset_errors():
    with pytest.raises(ValueError, match="unknown model preset 'huge'"):
        acc.preset_shape("huge")
    with pytest.raises(ValueError, match="positive"):
        acc.shape_for_params(-1)
    assert math.isfinite(acc.model_flops_per_sample(acc.ModelShape(2, 64, 2), 64))
