"""Context parallelism: core-attention backends for a video sequence split over CP ranks.

Only the self-attention core-attention slot knows about CP (it is swapped in through
the block's ModuleSpec); everything else in a block is token-wise or attends to the
full caption. The video tokens are split contiguously: CP rank c holds global tokens
[c * L, (c + 1) * L) of the padded sequence (full non-causal attention needs no load
balancing). Padding sits at the end of the global sequence; padded keys are dropped
from every attention block (they are always a suffix of a block), padded queries are
computed and discarded by `gather_tokens`.

Backends (`ParallelLayout.cp_comm_type`):
- "p2p"  ring attention: KV blocks travel round the CP ring (`batch_isend_irecv`, the
  next block's transfer overlapping the current block's compute); each block runs a
  fused SDPA kernel that returns its log-sum-exp (flash / memory-efficient on CUDA, the
  flash kernel for CPU on CPU; no [L, L] scores exist), blocks merged by log-sum-exp; a
  custom autograd Function whose backward runs the kernels' backward per block with the
  merged statistics, passing KV round the ring again with the dK/dV accumulators
  travelling along. Memory per rank is linear in its tokens.
- "a2a"  Ulysses: one all-to-all for q, k and v together from (all heads, S/CP tokens)
  to (H/CP heads, all tokens), local SDPA, all-to-all back.
- "a2a+p2p" hybrid: Ulysses inside groups of `ulysses_degree` adjacent CP ranks, ring
  attention across those groups.
- optional TransformerEngine backend (`TEContextParallelAttention`), GPU only.

Shape legend: B batch, H heads (local), L tokens held by a rank, E head dim.
"""
from __future__ import annotations

import math

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn


# --- all-to-all (Ulysses) --------------------------------------------------------------
def _all_to_all(x: torch.Tensor, group: dist.ProcessGroup, scatter_dim: int,
                gather_dim: int) -> torch.Tensor:
    """Split `scatter_dim` into group-size chunks, send chunk j to rank j, and concatenate
    what arrives along `gather_dim` in rank order (one copy in, one copy out)."""
    n = group.size()
    send = x.unflatten(scatter_dim, (n, -1)).movedim(scatter_dim, 0).contiguous()
    recv = torch.empty_like(send)
    dist.all_to_all_single(recv, send, group=group)
    return recv.movedim(0, gather_dim).flatten(gather_dim, gather_dim + 1)


class _AllToAll(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, group, scatter_dim, gather_dim):
        ctx.args = (group, scatter_dim, gather_dim)
        return _all_to_all(x, group, scatter_dim, gather_dim)

    @staticmethod
    def backward(ctx, grad):
        group, scatter_dim, gather_dim = ctx.args
        return _all_to_all(grad, group, gather_dim, scatter_dim), None, None, None


def heads_to_tokens(x_BHLE: torch.Tensor, group: dist.ProcessGroup) -> torch.Tensor:
    """[B, H, L, E] -> [B, H/n, n*L, E] (tokens of the group's ranks in rank order)."""
    return _AllToAll.apply(x_BHLE, group, 1, 2)


def qkv_heads_to_tokens(q_BHLE, k_BHLE, v_BHLE, group: dist.ProcessGroup):
    """`heads_to_tokens` of q, k and v in one all-to-all (one message per peer, not three)."""
    qkv_3BHLE = _AllToAll.apply(torch.stack((q_BHLE, k_BHLE, v_BHLE)), group, 2, 3)
    return qkv_3BHLE.unbind(0)


def tokens_to_heads(x_BHLE: torch.Tensor, group: dist.ProcessGroup) -> torch.Tensor:
    """Inverse of `heads_to_tokens`."""
    return _AllToAll.apply(x_BHLE, group, 2, 1)


# --- ring attention --------------------------------------------------------------------
def _start_ring_shift(tensor: torch.Tensor, group: dist.ProcessGroup):
    """Send `tensor` to the next ring rank, receive the previous rank's; returns (buf, works)."""
    rank, size = group.rank(), group.size()
    nxt = dist.get_global_rank(group, (rank + 1) % size)
    prv = dist.get_global_rank(group, (rank - 1) % size)
    recv = torch.empty_like(tensor)
    works = dist.batch_isend_irecv([dist.P2POp(dist.isend, tensor, nxt, group=group),
                                    dist.P2POp(dist.irecv, recv, prv, group=group)])
    return recv, works


def _wait(works) -> None:
    for work in works:
        work.wait()


def _valid_keys(num_tokens: int, block: int, block_len: int) -> int:
    """Number of real (non-padding) keys in ring block `block` of `block_len` tokens."""
    return max(0, min(block_len, num_tokens - block * block_len))


def _acc_dtype(x: torch.Tensor) -> torch.dtype:
    """Accumulation dtype: float32, or the input's when wider."""
    return torch.promote_types(x.dtype, torch.float32)


# --- one block on a fused kernel --------------------------------------------------------
# Each ring block runs a fused SDPA kernel that returns its log-sum-exp, so no [L, L]
# score block is ever materialised and the math runs in the activation dtype. Which
# kernel depends on the device only: on CPU the flash kernel for CPU; on CUDA flash for
# fp16/bf16 (head dim a multiple of 8, at most 256, sm80+), memory-efficient otherwise.
# The backward of a block takes the *merged* output and log-sum-exp: with the global
# softmax statistics the kernel's dQ, dK, dV are exactly this block's share of the
# full-attention gradient (P = exp(S - lse), delta = rowsum(dO * O)).
_aten = torch.ops.aten


def _cuda_kernel(q: torch.Tensor) -> str:
    head_dim = q.shape[-1]
    if (q.dtype in (torch.float16, torch.bfloat16) and head_dim % 8 == 0 and head_dim <= 256
            and torch.cuda.get_device_capability(q.device) >= (8, 0)):
        return "flash"
    return "efficient"


def _kernel_forward(q, k, v, scale):
    """(out [B,H,L,E] in q's dtype, lse [B,H,L], aux for `_kernel_backward`)."""
    q, k, v = (t.contiguous() for t in (q, k, v))
    if q.device.type != "cuda":
        out, lse = _aten._scaled_dot_product_flash_attention_for_cpu(q, k, v, 0.0, False,
                                                                   scale=scale)
        return out, lse, ("cpu",)
    if _cuda_kernel(q) == "flash":
        out, lse, cum_q, cum_k, _, _, seed, offset, _ = _aten._scaled_dot_product_flash_attention(
            q, k, v, 0.0, False, False, scale=scale)
        return out, lse, ("flash", cum_q, cum_k, seed, offset)
    out, lse, seed, offset = _aten._scaled_dot_product_efficient_attention(
        q, k, v, None, True, 0.0, False, scale=scale)
    # The efficient kernel may pad the lse rows (to a multiple of 32): keep L for merging.
    return out, lse[..., :q.shape[2]], ("efficient", seed, offset, lse.shape[-1])


def _kernel_backward(d_out, q, k, v, out, lse, aux, scale):
    """(dq, dk, dv) of one block, in q's dtype, given the merged `out` and `lse`."""
    d_out, q, k, v, out = (t.contiguous() for t in (d_out, q, k, v, out))
    lse = lse.contiguous()
    if aux[0] == "cpu":
        return _aten._scaled_dot_product_flash_attention_for_cpu_backward(
            d_out, q, k, v, out, lse, 0.0, False, scale=scale)
    if aux[0] == "flash":
        _, cum_q, cum_k, seed, offset = aux
        return _aten._scaled_dot_product_flash_attention_backward(
            d_out, q, k, v, out, lse, cum_q, cum_k, q.shape[2], k.shape[2], 0.0, False,
            seed, offset, scale=scale)
    _, seed, offset, lse_len = aux
    lse = F.pad(lse, (0, lse_len - lse.shape[-1]))
    dq, dk, dv, _ = _aten._scaled_dot_product_efficient_attention_backward(
        d_out, q, k, v, None, out, lse, seed, offset, 0.0, [True, True, True, False], False,
        scale=scale)
    return dq, dk, dv


class _RingAttention(torch.autograd.Function):
    """softmax(q k^T * scale) v with K/V split round `group`; q, k, v: [B, H, L, E].

    Saves q, k, v, the output (activation dtype) and the log-sum-exp: O(L) per rank.
    Blocks are merged by log-sum-exp in float32 (or the input dtype when wider).
    """

    @staticmethod
    def forward(ctx, q, k, v, group, num_tokens):
        rank, size = group.rank(), group.size()
        length, scale = k.shape[2], 1.0 / math.sqrt(q.shape[-1])
        acc = _acc_dtype(q)
        out = torch.zeros(q.shape, dtype=acc, device=q.device)
        lse = torch.full(q.shape[:-1], -math.inf, dtype=acc, device=q.device)
        kv, aux = torch.stack((k, v)), None
        for step in range(size):
            if step + 1 < size:
                next_kv, works = _start_ring_shift(kv, group)
            block = (rank - step) % size
            n = _valid_keys(num_tokens, block, length)
            if n:
                blk_out, blk_lse, aux = _kernel_forward(q, kv[0, :, :, :n], kv[1, :, :, :n],
                                                        scale)
                blk_lse = blk_lse.to(acc)
                new_lse = torch.logaddexp(lse, blk_lse)
                out = (out * torch.exp(lse - new_lse).unsqueeze(-1)
                       + blk_out.to(acc) * torch.exp(blk_lse - new_lse).unsqueeze(-1))
                lse = new_lse
            if step + 1 < size:
                _wait(works)
                kv = next_kv
        out = out.to(q.dtype)
        ctx.group, ctx.num_tokens, ctx.aux = group, num_tokens, aux
        ctx.save_for_backward(q, k, v, out, lse)
        return out

    @staticmethod
    def backward(ctx, d_out):
        q, k, v, out, lse = ctx.saved_tensors
        group, num_tokens = ctx.group, ctx.num_tokens
        rank, size = group.rank(), group.size()
        length, scale = k.shape[2], 1.0 / math.sqrt(q.shape[-1])
        acc = _acc_dtype(q)
        d_out = d_out.to(q.dtype)
        dq = torch.zeros(q.shape, dtype=acc, device=q.device)
        kv = torch.stack((k, v))
        dkv_works = None
        for step in range(size):
            if step + 1 < size:
                next_kv, kv_works = _start_ring_shift(kv, group)
            block = (rank - step) % size
            n = _valid_keys(num_tokens, block, length)
            dkv = torch.zeros(kv.shape, dtype=acc, device=kv.device)
            if n:
                dq_b, dk_b, dv_b = _kernel_backward(d_out, q, kv[0, :, :, :n], kv[1, :, :, :n],
                                                    out, lse, ctx.aux, scale)
                dq += dq_b
                dkv[0, :, :, :n], dkv[1, :, :, :n] = dk_b, dv_b
            if dkv_works is not None:
                # The accumulator for this block arrives from the previous rank.
                _wait(dkv_works)
                dkv += dkv_recv
            dkv_recv, dkv_works = _start_ring_shift(dkv, group)
            if step + 1 < size:
                _wait(kv_works)
                kv = next_kv
        # After `size` shifts each block's accumulator is back with its owner.
        _wait(dkv_works)
        return dq.to(q.dtype), dkv_recv[0].to(k.dtype), dkv_recv[1].to(v.dtype), None, None


def ring_attention(q_BHLE, k_BHLE, v_BHLE, group: dist.ProcessGroup, num_tokens: int):
    """Full attention over the ring's concatenated sequence, keys >= num_tokens dropped."""
    return _RingAttention.apply(q_BHLE, k_BHLE, v_BHLE, group, num_tokens)


# --- choosing a flavour and a backend ---------------------------------------------------
def transformer_engine_problem() -> str | None:
    """Why the TransformerEngine CP backend cannot run here (None when it can)."""
    try:
        import transformer_engine.pytorch  # noqa: F401
    except (ImportError, OSError) as exc:  # OSError: TE present but its CUDA libs are not
        return f"TransformerEngine is not importable here ({exc})"
    if not torch.cuda.is_available():
        return "TransformerEngine needs CUDA, which is not available here"
    return None


# --- core-attention backends ------------------------------------------------------------
class ContextParallelAttention(nn.Module):
    """Self-attention core over the CP-split sequence (Ulysses, ring or both).

    `ulysses_group` / `ring_group` are None where that level is absent. With both None
    (CP = 1) this is local SDPA that only drops padded keys (needed under SP padding).
    `num_tokens` is the real (unpadded) video sequence length.
    """

    def __init__(self, config=None, *, num_tokens: int, ulysses_group=None, ring_group=None,
                 **_unused):
        super().__init__()
        self.num_tokens = num_tokens
        self.ulysses_group = ulysses_group
        self.ring_group = ring_group

    def forward(self, q_BHLE, k_BHLE, v_BHLE, key_mask_BX=None):
        if key_mask_BX is not None:
            raise ValueError("ContextParallelAttention is a self-attention backend: "
                             "it masks padding itself and takes no key mask")
        if self.ulysses_group is not None:
            q_BHLE, k_BHLE, v_BHLE = qkv_heads_to_tokens(q_BHLE, k_BHLE, v_BHLE,
                                                         self.ulysses_group)
        if self.ring_group is not None and self.ring_group.size() > 1:
            out = ring_attention(q_BHLE, k_BHLE, v_BHLE, self.ring_group, self.num_tokens)
        else:
            block = 0 if self.ring_group is None else self.ring_group.rank()
            n = _valid_keys(self.num_tokens, block, k_BHLE.shape[2])
            out = F.scaled_dot_product_attention(q_BHLE, k_BHLE[:, :, :n], v_BHLE[:, :, :n])
        if self.ulysses_group is not None:
            out = tokens_to_heads(out, self.ulysses_group)
        return out


class TEContextParallelAttention(nn.Module):
    """TransformerEngine's DotProductAttention with its own CP (GPU only, optional).

    Not exercised by the CPU test suite (TransformerEngine needs CUDA). It supports
    only sequences that need no padding: TE's CP masks by cu_seqlens, not by a suffix.
    """

    def __init__(self, config, *, num_tokens: int, padded_tokens: int, cp_group,
                 cp_comm_type: str, num_local_heads: int, **_unused):
        super().__init__()
        problem = transformer_engine_problem()
        if problem is not None:
            raise ValueError(f"cp_backend='te': {problem}")
        from transformer_engine.pytorch import DotProductAttention
        if num_tokens != padded_tokens:
            raise ValueError(f"cp_backend='te' cannot mask padding: tokens_per_sample="
                             f"{num_tokens} must be divisible by the {padded_tokens // num_tokens}"
                             f"-way split (padded to {padded_tokens})")
        self.attn = DotProductAttention(
            num_local_heads, config.head_dim, attention_dropout=0.0, qkv_format="bshd",
            attn_mask_type="no_mask", cp_group=cp_group,
            cp_global_ranks=dist.get_process_group_ranks(cp_group),
            cp_stream=torch.cuda.Stream(), cp_comm_type=cp_comm_type)

    def forward(self, q_BHLE, k_BHLE, v_BHLE, key_mask_BX=None):
        assert key_mask_BX is None
        q, k, v = (t.transpose(1, 2) for t in (q_BHLE, k_BHLE, v_BHLE))  # TE wants bshd
        out_BLHE = self.attn(q, k, v).unflatten(-1, (q.shape[2], q.shape[3]))
        return out_BLHE.transpose(1, 2)
