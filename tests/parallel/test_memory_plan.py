"""The layout planner's memory model: its per-unit constants measured on the real model
(saved tensors, a real AdamW step), its arithmetic by hand, its choices."""
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from megatron_vdit.parallel.memory import (ACTIVATION_BYTES_PER_TOKEN_DIM, BYTES_PER_PARAM_STATE,
                                           GIB, estimate_memory_gib, suggest_layout)

ROOT = Path(__file__).resolve().parents[2]


def _tiny_model(tp_group, num_layers: int, **overrides):
    from megatron_vdit.models.config import VDiTConfig
    from megatron_vdit.models.vdit import VideoDiT
    fields = dict(num_layers=num_layers, hidden_size=64, num_attention_heads=2, in_channels=4,
                  latent_frames=4, latent_height=16, latent_width=16, text_hidden_size=16,
                  max_text_tokens=8, use_cpu_initialization=True)
    fields.update(overrides)
    torch.manual_seed(0)
    return VideoDiT(VDiTConfig(**fields), tp_group)


def _saved_activation_bytes(model, recompute) -> int:
    """Bytes autograd keeps for backward after one bf16 forward of one sample: every
    saved tensor's storage, once, leaving out the parameters themselves."""
    from megatron_vdit.parallel.activation_memory import saved_activation_bytes
    from megatron_vdit.parallel.parallelize import apply_recompute
    for p in model.parameters():  # bf16 compute, as FSDP2's param_dtype gives it
        p.data = p.data.to(torch.bfloat16)
    apply_recompute(model, recompute)
    cfg = model.config
    x = torch.randn(1, cfg.in_channels, cfg.latent_frames, cfg.latent_height, cfg.latent_width,
                    dtype=torch.bfloat16)
    text = torch.randn(1, cfg.max_text_tokens, cfg.text_hidden_size, dtype=torch.bfloat16)
    mask = torch.ones(1, cfg.max_text_tokens, dtype=torch.bool)
    return saved_activation_bytes(model, lambda: model(x, torch.tensor([500.0]), text, mask))


# "selective" is torch's op-level selective checkpointing: the outputs it keeps live in the
# checkpoint's own cache, which saved-tensor hooks do not see, so this probe would read
# only the block input. Its kept bytes are measured in tests/parallel/test_recompute*.py;
# the planner's constant for it stays the no-recompute bound (it never picks selective).
@pytest.mark.parametrize("recompute", [None, "full"])
@pytest.mark.parametrize("hidden,heads", [(64, 2), (128, 4)])
def test_activation_constants_bound_the_saved_tensors(tp_group, recompute, hidden, heads):
    """Bytes per token and hidden unit that one block keeps, measured as the difference
    between a 2-block and a 1-block model: the constant is an upper bound within 10%
    (full recomputation keeps exactly the block's bf16 input, 2 bytes)."""
    kw = dict(hidden_size=hidden, num_attention_heads=heads)
    one, two = (_saved_activation_bytes(_tiny_model(tp_group, n, **kw), recompute) for n in (1, 2))
    tokens = 4 * 8 * 8  # latent 4 x 16 x 16, patches 1 x 2 x 2
    measured = (two - one) / (tokens * hidden)
    constant = ACTIVATION_BYTES_PER_TOKEN_DIM[recompute]
    assert measured <= constant <= 1.1 * measured, (recompute, measured, constant)


def test_model_state_bytes_match_a_real_adamw_step(tp_group):
    """fp32 master weights + fp32 gradients + AdamW's two moments, counted on a real step."""
    model = _tiny_model(tp_group, 1)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    for p in model.parameters():
        p.grad = torch.ones_like(p)
    opt.step()
    numel = sum(p.numel() for p in model.parameters())
    tensors = [t for p in model.parameters()
               for t in [p, p.grad, *opt.state[p].values()] if t.numel() == p.numel()]
    assert sum(t.numel() * t.element_size() for t in tensors) == BYTES_PER_PARAM_STATE * numel


def test_memory_estimate_composes_the_constants_by_hand():
    """Sharding arithmetic on top of the (separately measured) per-unit constants."""
    acts_per_unit = ACTIVATION_BYTES_PER_TOKEN_DIM[None]
    states, acts = estimate_memory_gib(params_total=1e9, num_layers=10, hidden_size=1000,
                                       tokens_per_sample=8000, tp=2, cp=2, pp=1, dp=2)
    # States sharded over all 8 ranks, plus one block's bf16 weights split by TP.
    assert states == pytest.approx((BYTES_PER_PARAM_STATE * 1e9 / 8 + 2e9 / 10 / 2) / GIB)
    # 4000 local tokens (CP 2), split by TP 2, all 10 blocks.
    assert acts == pytest.approx(acts_per_unit * 4000 * 1000 / 2 * 10 / GIB)
    _, full = estimate_memory_gib(params_total=1e9, num_layers=10, hidden_size=1000,
                                  tokens_per_sample=8000, tp=2, cp=2, pp=1, dp=2,
                                  recompute="full")
    # Each block's input kept, plus one block's activations while it is recomputed.
    assert full == pytest.approx((2 * 4000 * 1000 / 2 * 10 + acts_per_unit * 4000 * 1000 / 2)
                                 / GIB)


def test_small_model_short_clips_is_pure_data_parallel():
    est = suggest_layout(params_total=1.1e9, num_layers=28, hidden_size=1536,
                         num_attention_heads=12, tokens_per_sample=1280, num_gpus=8)
    assert (est.tensor_model_parallel_size, est.context_parallel_size,
            est.pipeline_model_parallel_size, est.data_parallel_size) == (1, 1, 1, 8)
    assert est.recompute_granularity is None and est.memory_gib < 74


def test_long_sequences_get_context_parallel_and_fit():
    est = suggest_layout(params_total=18e9, num_layers=30, hidden_size=6144,
                         num_attention_heads=48, tokens_per_sample=131072, num_gpus=64)
    assert est.context_parallel_size * est.tensor_model_parallel_size > 1
    assert est.memory_gib <= 80 - 6
    assert 48 % est.tensor_model_parallel_size == 0 and est.tensor_model_parallel_size <= 8
    assert "--context-parallel-size" in est.flags()


def test_nothing_fits_is_a_clear_error():
    with pytest.raises(ValueError, match="no layout of 2 GPUs with 80.0 GiB fits"):
        suggest_layout(params_total=30e9, num_layers=28, hidden_size=8192,
                       num_attention_heads=64, tokens_per_sample=65536, num_gpus=2)


def test_predict_config_reports_a_layout():
    out = subprocess.run([sys.executable, str(ROOT / "tools" / "predict_config.py"),
                          "--budget", "1e24", "--gpus", "64", "--tokens-per-sample", "65536",
                          "--json"], capture_output=True, text=True, check=True).stdout
    layout = json.loads(out)["parallel_layout"]
    assert layout["memory_gib_per_gpu"] <= 74 and "--context-parallel-size" in layout["flags"]
