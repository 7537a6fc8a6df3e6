"""Ulysses moves q, k and v in one all-to-all: two exchanges forward, two backward.

Equivalence of the fused exchange with full attention is covered by
test_tp_cp_dp_attention.py (ulysses and hybrid cases); here the count of collectives
is checked with a spy that forwards to the real gloo all-to-all.
"""
from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F

from dist_utils import spawn_world


def _count_exchanges():
    from megatron_vdit.parallel import context_parallel
    from megatron_vdit.parallel.context_parallel import ContextParallelAttention
    from megatron_vdit.parallel.layout import ParallelLayout, build_parallel_groups
    groups = build_parallel_groups(ParallelLayout(context_parallel_size=2, cp_comm_type="a2a"))
    calls = []
    real = dist.all_to_all_single

    def spy(out, inp, *args, **kwargs):
        calls.append(tuple(inp.shape))
        return real(out, inp, *args, **kwargs)

    context_parallel.dist.all_to_all_single = spy
    try:
        g = torch.Generator().manual_seed(0)
        q, k, v = (torch.randn(2, 4, 32, 8, generator=g, dtype=torch.float64) for _ in range(3))
        rows = slice(16 * groups.cp.rank(), 16 * groups.cp.rank() + 16)
        local = [t[:, :, rows].clone().requires_grad_() for t in (q, k, v)]
        out = ContextParallelAttention(num_tokens=32, ulysses_group=groups.cp_ulysses)(*local)
        forward_calls = len(calls)
        out.sum().backward()
    finally:
        context_parallel.dist.all_to_all_single = real
    full = [t.clone().requires_grad_() for t in (q, k, v)]
    ref = F.scaled_dot_product_attention(*full)
    ref.sum().backward()
    err = max(float((out.detach() - ref.detach()[:, :, rows]).abs().max()),
              *(float((t.grad - r.grad[:, :, rows]).abs().max()) for t, r in zip(local, full)))
    return forward_calls, len(calls) - forward_calls, calls[0], err


def test_ulysses_exchanges_qkv_in_one_all_to_all():
    for forward, backward, first_shape, err in spawn_world(_count_exchanges, 2):
        assert (forward, backward) == (2, 2)  # qkv in + out back; their gradients
        assert first_shape == (2, 3, 2, 2, 16, 8)  # [peer, q/k/v, B, H/CP, L, E]
        assert err < 1e-12
