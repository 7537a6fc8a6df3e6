"""TP / SP / CP / DP (FSDP2) training equivalence against one process, on CPU/gloo.

Each case trains the tiny model three AdamW steps (with gradient clipping that is
active) under a layout and compares the losses, the global gradient norms and the
full parameters afterwards with a single-process run from the same seed: within 1e-5
relative for losses, norms and the whole parameter vector, float32 throughout.
"""
from __future__ import annotations

import pytest
import torch
import torch.distributed as dist

from dist_utils import (make_batch, mse_loss, perturb_zero_inits, slice_batch, spawn_world,
                        tiny_config, train_reference)

STEPS, SEED, LR, MAX_NORM, GLOBAL_BATCH = 3, 0, 3e-3, 0.05, 4
UNEVEN = dict(latent_height=6, latent_width=10)  # 45 tokens: no CP size > 1 divides it

# name: (world size, layout degrees, config overrides, options: apply_data_parallel
# kwargs plus "recompute")
CASES = {
    "tp2": (2, dict(tensor_model_parallel_size=2), {}, {}),
    "tp2_sp": (2, dict(tensor_model_parallel_size=2, sequence_parallel=True), {}, {}),
    "tp2_sp_uneven": (2, dict(tensor_model_parallel_size=2, sequence_parallel=True),
                      dict(UNEVEN, max_text_tokens=5), {}),  # caption padded for SP too
    "cp2_ring": (2, dict(context_parallel_size=2, cp_comm_type="p2p"), {}, {}),
    "cp2_ulysses": (2, dict(context_parallel_size=2, cp_comm_type="a2a"), {}, {}),
    "cp4_hybrid": (4, dict(context_parallel_size=4, cp_comm_type="a2a+p2p",
                           ulysses_size=2), {}, {}),
    "cp2_ring_uneven": (2, dict(context_parallel_size=2, cp_comm_type="p2p"), UNEVEN, {}),
    "cp4_hybrid_uneven": (4, dict(context_parallel_size=4, cp_comm_type="a2a+p2p"),
                          UNEVEN, {}),
    "dp2_zero2": (2, {}, {}, dict(zero_stage=2)),
    "dp2_zero3": (2, {}, {}, dict(zero_stage=3)),
    "tp2_cp2": (4, dict(tensor_model_parallel_size=2, context_parallel_size=2,
                        cp_comm_type="p2p"), {}, {}),
    "dp2_cp2": (4, dict(context_parallel_size=2, cp_comm_type="a2a"), {}, dict(zero_stage=3)),
    "tp2_sp_cp2_full_recompute": (4, dict(tensor_model_parallel_size=2, sequence_parallel=True,
                                          context_parallel_size=2, cp_comm_type="p2p"),
                                  UNEVEN, dict(recompute="full")),
    "dp2_cp2_ring_selective_recompute": (4, dict(context_parallel_size=2, cp_comm_type="p2p"),
                                         {}, dict(zero_stage=2, recompute="selective")),
}


def _train_parallel(layout_kw, config_kw, options):
    from megatron_vdit.parallel.layout import ParallelLayout, build_parallel_groups
    from megatron_vdit.parallel.parallelize import (apply_data_parallel, apply_recompute,
                                                    average_over_dp, build_parallel_model,
                                                    clip_grad_norm_, finalize_grads,
                                                    full_state_dict)
    dp_kw = dict(options)
    recompute = dp_kw.pop("recompute", None)
    config = tiny_config(**config_kw)
    batch = make_batch(config, GLOBAL_BATCH)
    reference = train_reference(config, batch, steps=STEPS, seed=SEED, lr=LR,
                                max_norm=MAX_NORM)

    layout = ParallelLayout.from_world_size(dist.get_world_size(), **layout_kw)
    layout.validate(dist.get_world_size(), config.num_layers, config.num_attention_heads,
                    config.tokens_per_sample)
    groups = build_parallel_groups(layout, num_attention_heads=config.num_attention_heads)
    model = build_parallel_model(config, groups, seed=SEED)
    perturb_zero_inits(model)
    apply_recompute(model, recompute)
    model = apply_data_parallel(model, groups, **dp_kw)
    opt = torch.optim.AdamW(model.parameters(), lr=LR)
    local = slice_batch(batch, groups.dp.rank(), groups.dp.size())
    losses, norms = [], []
    for _ in range(STEPS):
        opt.zero_grad()
        loss = mse_loss(model, local)
        loss.backward()
        finalize_grads(model, groups)
        norms.append(clip_grad_norm_(model, MAX_NORM, groups).item())
        opt.step()
        losses.append(average_over_dp(loss, groups).item())
    return reference, (losses, norms, full_state_dict(model, groups))


def _assert_matches(results, rtol_loss: float, rtol_norm: float, rtol_params: float,
                    rtol_tensor: float, of_update: bool = False):
    """Losses and grad norms step by step, then the parameters: the whole vector and each
    tensor, relative to the parameters themselves or (`of_update`) to their three-step
    update (final minus initial values), the part that training and the layout produced."""
    (ref_losses, ref_norms, ref_params, initial), _ = results[0]
    assert ref_norms[0] > MAX_NORM, "clipping must be active for the test to mean anything"

    def error(got, expected, start):
        scale = (expected - start).norm() if of_update else expected.norm().clamp_min(1e-12)
        return ((got - expected).norm() / scale).item()

    names = list(ref_params)
    flat = lambda state: torch.cat([state[n].flatten() for n in names])
    for rank, (_, (losses, norms, params)) in enumerate(results):
        for name, value, expected, rtol in (("loss", losses, ref_losses, rtol_loss),
                                            ("norm", norms, ref_norms, rtol_norm)):
            for step, (a, b) in enumerate(zip(value, expected)):
                assert abs(a - b) <= rtol * abs(b), f"rank {rank} step {step} {name}: {a} vs {b}"
        assert params.keys() == ref_params.keys()
        err = error(flat(params), flat(ref_params), flat(initial))
        assert err <= rtol_params, f"rank {rank}: all parameters, relative error {err:.2e}"
        for name in names:
            err = error(params[name], ref_params[name], initial[name])
            assert err <= rtol_tensor, f"rank {rank} {name}: relative error {err:.2e}"


@pytest.mark.parametrize("case", list(CASES))
def test_matches_single_process(case):
    world, layout_kw, config_kw, options = CASES[case]
    # Per tensor 1e-4: zero-initialised biases are pure Adam updates, which amplify
    # float32 reduction-order noise (a real bug shows errors ~1e-2).
    _assert_matches(spawn_world(_train_parallel, world, layout_kw, config_kw, options),
                    rtol_loss=1e-5, rtol_norm=1e-5, rtol_params=1e-5, rtol_tensor=1e-4)


def test_bf16_mixed_precision_tracks_float32():
    """FSDP2 bf16 compute, float32 master weights and reduction: close, not equal.

    bf16 keeps 8 significant bits (rounding error up to 2^-9 = 2e-3 of each value).
    Measured against float32 (this seed): losses, means over thousands of values, within
    1e-4 relative, grad norms within 1.5e-3, and each tensor's three-step update within
    8% of its size. Per tensor the update is the yardstick: a tensor may move 0.6% of its
    norm in three steps, so a bound relative to the tensor would let a wrong update
    through. A real bug is far outside these bounds: training on half the batch (what a
    missing data-parallel reduction gives) changes every tensor's update by >= 38%, the
    grad norms by 20% and the losses by 1-2%. The bounds sit about 3x above the noise.
    """
    options = dict(zero_stage=2, param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
    results = spawn_world(_train_parallel, 4, dict(context_parallel_size=2,
                                                   cp_comm_type="p2p"), {}, options)
    _assert_matches(results, rtol_loss=1e-3, rtol_norm=5e-3, rtol_params=0.15,
                    rtol_tensor=0.15, of_update=True)
