"""Selective and full recompute: less activation memory kept for backward, same gradients.

"Kept" is measured as the net bytes allocated during the forward pass (allocations minus
frees, from the CPU profiler's memory events): what stays alive until backward, the
saved activations plus whatever the selective policy caches. One process, then CP2
ring and Ulysses (the collectives re-run in the recomputation).
"""
from __future__ import annotations

import pytest
import torch
import torch.distributed as dist
from torch.profiler import ProfilerActivity, profile

from dist_utils import make_batch, mse_loss, spawn_world, tiny_config

SEED = 5


def _forward_kept_bytes(model, batch):
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        loss = mse_loss(model, batch)
    return loss, sum(e.self_cpu_memory_usage for e in prof.events())


def _run(recompute_options, layout_kw):
    from megatron_vdit.parallel.layout import ParallelLayout, build_parallel_groups
    from megatron_vdit.parallel.parallelize import apply_recompute, build_parallel_model
    config = tiny_config(num_layers=2, latent_frames=4)
    layout = ParallelLayout.from_world_size(dist.get_world_size(), **layout_kw)
    groups = build_parallel_groups(layout, num_attention_heads=config.num_attention_heads)
    batch = make_batch(config, 2)
    results = {}
    for recompute in recompute_options:
        model = build_parallel_model(config, groups, seed=SEED)
        apply_recompute(model, recompute)
        loss, kept = _forward_kept_bytes(model, batch)
        loss.backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters()}
        results[recompute] = (loss.item(), kept, grads)
    return results


def _check(results):
    none_loss, none_kept, none_grads = results[None]
    for recompute in ("selective", "full"):
        loss, _, grads = results[recompute]
        assert loss == none_loss
        for name, grad in none_grads.items():
            torch.testing.assert_close(grads[name], grad, rtol=1e-6, atol=1e-7,
                                       msg=lambda m: f"{recompute} {name}: {m}")
    return none_kept, results["selective"][1], results["full"][1]


def test_recompute_keeps_less_and_gives_the_same_gradients():
    results = spawn_world(_run, 1, (None, "selective", "full"), {})[0]
    none_kept, selective_kept, full_kept = _check(results)
    # Selective drops the norm / modulation / GELU outputs: well under no recompute.
    assert selective_kept < 0.6 * none_kept, (none_kept, selective_kept)
    assert full_kept < 0.5 * selective_kept, (selective_kept, full_kept)


@pytest.mark.parametrize("comm_type", ["p2p", "a2a"])
def test_selective_recompute_under_context_parallelism(comm_type):
    layout_kw = dict(context_parallel_size=2, cp_comm_type=comm_type)
    for results in spawn_world(_run, 2, (None, "selective"), layout_kw):
        none_loss, none_kept, none_grads = results[None]
        loss, kept, grads = results["selective"]
        assert loss == none_loss and kept < none_kept
        for name, grad in none_grads.items():
            torch.testing.assert_close(grads[name], grad, rtol=1e-6, atol=1e-7)
