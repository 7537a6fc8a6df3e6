"""Measure the bytes autograd keeps for backward (the activation memory of a forward).

Used by the benchmarks that check the memory model (bench/bench_memory_model.py) and
how CP divides activations (bench/bench_cp_scaling.py). The planner's estimate itself is
`parallel/memory.py` (pure Python, no torch).
"""
from __future__ import annotations

from typing import Any, Callable

import torch
from torch import nn


def _local(t: torch.Tensor) -> torch.Tensor:
    """The local shard of a DTensor (an FSDP2 parameter), the tensor itself otherwise."""
    return t.to_local() if hasattr(t, "to_local") else t


def _storage_ptr(t: torch.Tensor) -> int | None:
    try:
        return t.untyped_storage().data_ptr()
    except RuntimeError:  # a sharded FSDP parameter whose storage is freed
        return None


def saved_activation_bytes(model: nn.Module, forward: Callable[[], Any]) -> int:
    """Bytes of the tensors autograd saves while `forward()` runs, parameters left out.

    Every storage is counted once, at its full size (a view saved twice, or two views of
    one buffer, cost one storage). Parameters are those `model` holds at the moment a
    tensor is saved, so FSDP2's unsharded parameters, swapped in for a block's forward,
    are excluded too. The output of `forward()` is dropped before returning.
    """
    saved: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        params = {_storage_ptr(_local(p)) for p in model.parameters()}
        here = _storage_ptr(t)
        if here is not None and here not in params:
            saved[here] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = forward()
    del out
    return sum(saved.values())
