"""Activation recomputation per block: "full" or "selective" (op-level).

- "full": each block keeps only its inputs; its whole forward runs again in backward.
- "selective": each block keeps the outputs of its matmuls and attention kernels (the
  expensive ops) and recomputes everything else in backward: the norms, the adaLN
  modulation and gated residuals, RoPE, the MLP's GELU. Those are cheap elementwise
  ops whose outputs are as large as (GELU: 4x) the matmuls' inputs, so this drops most
  of the block's activations for a few percent more compute. Under context
  parallelism the attention's collectives run again in backward (they write into
  buffers and cannot be replayed from a cache); the ring's per-step kernel outputs are
  kept (CP of them per block).
Both use the composable `checkpoint` (parameter names and checkpoints unchanged);
"selective" passes it a selective-checkpoint policy. Apply before `apply_data_parallel`.
"""
from __future__ import annotations


import torch
from torch import nn
from torch.distributed._composable import checkpoint
from torch.utils.checkpoint import CheckpointPolicy, create_selective_checkpoint_contexts

GRANULARITIES = ("selective", "full")

_aten = torch.ops.aten
# Kept by "selective": GEMMs (linears lower to these) and fused attention kernels.
_SAVED_OPS = {_aten.mm.default, _aten.addmm.default, _aten.bmm.default, _aten.baddbmm.default,
              _aten._scaled_dot_product_flash_attention_for_cpu.default,
              _aten._scaled_dot_product_flash_attention.default,
              _aten._scaled_dot_product_efficient_attention.default,
              _aten._scaled_dot_product_cudnn_attention.default}


def _policy(ctx, op, *args, **kwargs) -> CheckpointPolicy:
    return CheckpointPolicy.MUST_SAVE if op in _SAVED_OPS else CheckpointPolicy.PREFER_RECOMPUTE


def _selective_contexts():
    return create_selective_checkpoint_contexts(_policy)


def apply_recompute(model: nn.Module, granularity: str | None) -> nn.Module:
    """Recompute activations of every block of `model` in backward (None: keep them)."""
    if granularity is None:
        return model
    if granularity not in GRANULARITIES:
        raise ValueError(f"recompute granularity {granularity!r}; expected 'selective', "
                         "'full' or None")
    for block in model.blocks.values():
        if granularity == "full":
            checkpoint(block)
        else:
            checkpoint(block, context_fn=_selective_contexts)
    return model
