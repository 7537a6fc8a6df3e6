"""Ring attention on fused SDPA kernels: exact against an fp64 softmax written here,
forward and backward, in float32 and bf16; and its memory is linear in tokens per rank.

Memory is measured two ways at two lengths (L and 2L tokens per rank): the bytes the
autograd graph saves (saved-tensor hooks) and the largest tensor any op produces
during forward + backward (a dispatch mode). The probe is checked on the textbook
[L, L]-score implementation too, where it must see the quadratic growth.
"""
from __future__ import annotations

import math

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from dist_utils import spawn_world

B, H, E = 1, 2, 8


def _softmax_attention(q, k, v):
    """The textbook definition, [B, H, L, L] scores and all."""
    scores = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])
    return torch.softmax(scores, dim=-1) @ v


class _LargestTensor(TorchDispatchMode):
    """Records the largest tensor (bytes) produced by any op while active."""

    def __init__(self):
        super().__init__()
        self.largest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_leaves(out):
            if isinstance(t, torch.Tensor):
                self.largest = max(self.largest, t.numel() * t.element_size())
        return out


def _saved_and_largest(fn, *inputs) -> tuple[int, int]:
    """(bytes saved for backward, largest op output in bytes) of fn(*inputs).sum().backward()."""
    saved = {}

    def pack(t):
        saved[(t.untyped_storage().data_ptr(), t.dtype)] = t.untyped_storage().nbytes()
        return t

    probe = _LargestTensor()
    with probe:
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            out = fn(*inputs)
        out.sum().backward()
    return sum(saved.values()), probe.largest


def _ring_memory(length: int):
    from megatron_vdit.parallel.context_parallel import ring_attention
    from megatron_vdit.parallel.layout import ParallelLayout, build_parallel_groups
    groups = build_parallel_groups(ParallelLayout(context_parallel_size=2))
    g = torch.Generator().manual_seed(groups.cp.rank())
    q, k, v = (torch.randn(B, H, length, E, generator=g).requires_grad_() for _ in range(3))
    ring = _saved_and_largest(lambda *t: ring_attention(*t, groups.cp, 2 * length), q, k, v)
    textbook = _saved_and_largest(_softmax_attention, q, k, v)
    return ring, textbook


def test_ring_memory_is_linear_in_tokens_per_rank():
    short, long = (spawn_world(_ring_memory, 2, length)[0] for length in (64, 128))
    (ring_saved_s, ring_big_s), (text_saved_s, text_big_s) = short
    (ring_saved_l, ring_big_l), (text_saved_l, text_big_l) = long
    # The probe sees quadratic growth where there is some: [L, L] scores 4x at 2x tokens.
    assert text_big_l / text_big_s == pytest.approx(4.0, rel=0.01)
    assert text_saved_l / text_saved_s > 3.0
    # The fused ring: saved q, k, v, out, lse and every intermediate double with tokens.
    assert ring_saved_l / ring_saved_s == pytest.approx(2.0, rel=0.05)
    assert ring_big_l / ring_big_s == pytest.approx(2.0, rel=0.05)
    assert ring_big_l < B * H * 128 * 128 * 4  # never one [L, L] float32 score block
    # Saved: q, k, v, out (L x E each, float32) and the lse (L): nothing else.
    assert ring_saved_l == B * H * 128 * (4 * E + 1) * 4


def _ring_vs_fp64(dtype_name: str, num_tokens: int, length: int):
    from megatron_vdit.parallel.context_parallel import ring_attention
    from megatron_vdit.parallel.layout import ParallelLayout, build_parallel_groups
    dtype = getattr(torch, dtype_name)
    cp = 2
    groups = build_parallel_groups(ParallelLayout(context_parallel_size=cp))
    g = torch.Generator().manual_seed(3)
    q, k, v, d_out = (torch.randn(B, H, cp * length, E, generator=g, dtype=torch.float64)
                      for _ in range(4))
    d_out[:, :, num_tokens:] = 0  # padded queries are discarded downstream
    ref_in = [t[:, :, :num_tokens].clone().requires_grad_() for t in (q, k, v)]
    ref = _softmax_attention(*ref_in)
    ref.backward(d_out[:, :, :num_tokens])
    rows = slice(groups.cp.rank() * length, (groups.cp.rank() + 1) * length)
    local = [t[:, :, rows].to(dtype).requires_grad_() for t in (q, k, v)]
    out = ring_attention(*local, groups.cp, num_tokens)
    out.backward(d_out[:, :, rows].to(dtype))
    real = max(0, min(length, num_tokens - rows.start))
    errors = {"out": (out.detach().double()[:, :, :real] - ref.detach()[:, :, rows][:, :, :real])}
    for name, t, r in zip("qkv", local, ref_in):
        full = torch.zeros_like(q)
        full[:, :, :num_tokens] = r.grad
        errors[f"d{name}"] = t.grad.double()[:, :, :real] - full[:, :, rows][:, :, :real]
        if name != "q":
            errors[f"d{name}_pad"] = t.grad.double()[:, :, real:]
    return {name: float(err.abs().max()) if err.numel() else 0.0 for name, err in errors.items()}


@pytest.mark.parametrize("dtype_name, tol", [("float32", 5e-6), ("bfloat16", 3e-2)])
def test_ring_fused_matches_fp64_softmax_forward_and_backward(dtype_name, tol):
    for rank, errors in enumerate(spawn_world(_ring_vs_fp64, 2, dtype_name, 27, 16)):
        for name, err in errors.items():
            limit = 0.0 if name.endswith("_pad") else tol
            assert err <= limit, f"{dtype_name} rank {rank} {name}: max abs error {err:.2e}"
