"""Context-parallel attention kernels against PyTorch SDPA: outputs and gradients.

The full sequence (with padding keys masked out) is the reference; each CP rank feeds
its contiguous shard and the gathered outputs / input gradients must match.
"""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from dist_utils import spawn_world

B, H, E = 2, 4, 16


def _reference(q, k, v, num_tokens):
    out = F.scaled_dot_product_attention(q[:, :, :num_tokens], k[:, :, :num_tokens],
                                         v[:, :, :num_tokens])
    return out


def _run(comm_type, cp, ulysses, num_tokens, padded):
    from megatron_vdit.parallel.context_parallel import ContextParallelAttention
    from megatron_vdit.parallel.layout import ParallelLayout, build_parallel_groups
    layout = ParallelLayout(context_parallel_size=cp, cp_comm_type=comm_type,
                            ulysses_size=ulysses)
    groups = build_parallel_groups(layout, num_attention_heads=H)
    g = torch.Generator().manual_seed(0)
    q, k, v, d_out = (torch.randn(B, H, padded, E, generator=g, dtype=torch.float64)
                      for _ in range(4))
    d_out[:, :, num_tokens:] = 0  # padded queries are discarded: no gradient (gather_tokens)
    for t in (q, k, v):
        t.requires_grad_(True)
    ref = _reference(q, k, v, num_tokens)
    ref.backward(d_out[:, :, :num_tokens])
    ref_grads = [t.grad.clone() for t in (q, k, v)]

    length = padded // cp
    rows = slice(groups.cp.rank() * length, (groups.cp.rank() + 1) * length)
    local = [t.detach()[:, :, rows].clone().requires_grad_(True) for t in (q, k, v)]
    attn = ContextParallelAttention(num_tokens=num_tokens, ulysses_group=groups.cp_ulysses,
                                    ring_group=groups.cp_ring)
    out = attn(*local)
    out.backward(d_out[:, :, rows])
    # Padded query rows have no reference: compare real rows only.
    real = slice(0, max(0, min(length, num_tokens - rows.start)))
    errors = {"out": (out.detach()[:, :, real] - ref.detach()[:, :, rows][:, :, real]).abs().max()}
    for name, t, full in zip("qkv", local, ref_grads):
        expected = full[:, :, rows]
        if name != "q":  # padded keys/values must get exactly zero gradient
            errors[f"d{name}_pad"] = t.grad[:, :, real.stop:].abs().max() if real.stop < length \
                else torch.zeros(())
        errors[f"d{name}"] = (t.grad[:, :, real] - expected[:, :, real]).abs().max()
    return {k: float(v) for k, v in errors.items()}


CASES = {  # name: (comm_type, cp, ulysses_size, num_tokens, padded length)
    "ring2": ("p2p", 2, None, 24, 24),
    "ring4_uneven": ("p2p", 4, None, 21, 24),
    "ring4_empty_shard": ("p2p", 4, None, 17, 20),  # last rank holds padding only
    "ulysses2_uneven": ("a2a", 2, None, 23, 24),
    "hybrid_2x2_uneven": ("a2a+p2p", 4, 2, 22, 24),
}


@pytest.mark.parametrize("case", list(CASES))
def test_cp_attention_matches_sdpa(case):
    comm_type, cp, ulysses, num_tokens, padded = CASES[case]
    for rank, errors in enumerate(spawn_world(_run, cp, comm_type, cp, ulysses, num_tokens,
                                              padded)):
        for name, err in errors.items():
            assert err < 1e-10, f"rank {rank} {name}: max abs error {err:.2e}"


def test_ring_attention_float32_and_bf16_inputs():
    """The ring kernel accumulates in float32 whatever the input dtype."""
    def run():
        from megatron_vdit.parallel.context_parallel import ring_attention
        from megatron_vdit.parallel.layout import ParallelLayout, build_parallel_groups
        groups = build_parallel_groups(ParallelLayout(context_parallel_size=2))
        g = torch.Generator().manual_seed(1)
        q, k, v = (torch.randn(1, 2, 16, 8, generator=g) for _ in range(3))
        ref = F.scaled_dot_product_attention(q, k, v)
        rows = slice(8 * groups.cp.rank(), 8 * groups.cp.rank() + 8)
        out32 = ring_attention(q[:, :, rows], k[:, :, rows], v[:, :, rows], groups.cp, 16)
        out16 = ring_attention(*(t[:, :, rows].bfloat16() for t in (q, k, v)), groups.cp, 16)
        assert out16.dtype == torch.bfloat16
        return (float((out32 - ref[:, :, rows]).abs().max()),
                float((out16.float() - ref[:, :, rows]).abs().max()))
    for err32, err16 in spawn_world(run, 2):
        assert err32 < 1e-5 and err16 < 3e-2
