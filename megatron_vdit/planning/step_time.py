"""A step-time model for one layout: compute at the assumed MFU plus exposed communication.

Every collective is timed as ``bytes moved per rank / bandwidth`` (the ring or
all-to-all bus model), on NVLink when the group fits in a node and on the inter-node
network otherwise. Rank order is TP, CP, DP, PP (fastest first), as in
``parallel/layout.py``, so a group of stride ``s`` and size ``n`` stays in a node when
``s * n <= gpus_per_node``. What hides behind compute:
- TP (sequence parallel all-gathers and reduce-scatters): nothing (on the critical path);
- Ulysses all-to-alls: nothing;
- ring K/V exchange: hidden behind the attention of the chunk in flight;
- FSDP all-gathers / reduce-scatters: hidden behind the rank's compute but for the first
  block's gather;
- pipeline: the bubble ``(pp - 1) / (vpp * m)`` of the compute, plus the activation
  sends, counted in full.
"""
from __future__ import annotations

import dataclasses

from .gpus import GpuSpec

RECOMPUTE_EXTRA = {None: 0.0, "selective": 0.1, "full": 1 / 3}  # extra forward work
GRAD_REDUCE_BYTES = 4   # fp32 gradient reduction
PARAM_GATHER_BYTES = 2  # bf16 parameters
ACT_BYTES = 2           # bf16 activations
RING_GRAD_BYTES = 4     # ring attention's fp32 dK/dV accumulators


@dataclasses.dataclass(frozen=True)
class StepInputs:
    """What the model needs to know about the run, independent of the layout."""

    params_total: float
    num_layers: int
    hidden_size: int
    tokens_per_sample: int
    flops_per_sample: float
    """Model FLOPs of one training sample (forward + backward, every matmul)."""
    attention_flops_per_sample: float
    """The self-attention score/value part of it (what ring attention overlaps)."""
    global_batch: int
    num_gpus: int
    gpu: GpuSpec
    gpus_per_node: int
    mfu: float
    params_replicated: float = 0.0
    """Embeddings and conditioning: whole on every TP rank and pipeline stage."""

    def params_local(self, tp: int, pp: int) -> float:
        return (self.params_total - self.params_replicated) / (tp * pp) + self.params_replicated


def _bandwidth(stride: int, size: int, run: StepInputs) -> float:
    intra = stride * size <= run.gpus_per_node
    return run.gpu.nvlink_bytes_per_s if intra else run.gpu.internode_bytes_per_s


def _ring(size: int) -> float:
    return (size - 1) / size if size > 1 else 0.0


def step_time(run: StepInputs, *, tp, cp, pp, dp, vpp, ulysses, zero_stage,
              micro_batch_size, recompute) -> dict:
    """Seconds per optimizer step, split by cause (a dict of floats, "total" included)."""
    m = run.global_batch // (dp * micro_batch_size)
    samples_per_rank = run.global_batch / dp          # through every layer of the replica
    extra = RECOMPUTE_EXTRA[recompute]
    rate = run.gpu.peak_bf16_flops * run.mfu
    compute = run.flops_per_sample * samples_per_rank * (1 + extra) / (tp * cp * pp * rate)
    out = {"compute": compute}
    out["pipeline_bubble"] = compute * (pp - 1) / (vpp * m) if pp > 1 else 0.0
    stage_layers = run.num_layers / pp
    act_bytes = ACT_BYTES * run.tokens_per_sample / cp * run.hidden_size * micro_batch_size
    # TP: 3 all-gathers + 3 reduce-scatters of the full-sequence activation per block
    # forward, as many backward, and the forward's again when a block is recomputed.
    per_block = (12 + (6 if recompute == "full" else 0)) * act_bytes * _ring(tp)
    out["tp_comm"] = m * stage_layers * per_block / _bandwidth(1, tp, run)
    out["cp_comm"] = _cp_time(run, m, stage_layers, act_bytes / tp, tp, cp, ulysses,
                              compute / (m * stage_layers) if m else 0.0)
    pp_bytes = 2 * m * act_bytes / tp if pp > 1 else 0.0
    out["pp_comm"] = pp_bytes / _bandwidth(tp * cp * dp, pp, run) if pp > 1 else 0.0
    out["dp_comm"] = _dp_time(run, m, tp, cp, pp, dp, zero_stage, compute, stage_layers)
    out["total"] = sum(out.values())
    return out


def _cp_time(run, m, stage_layers, shard_bytes, tp, cp, ulysses, block_compute) -> float:
    """Ulysses: 4 all-to-alls forward (q, k, v, out), 4 backward, exposed. Ring over
    cp / ulysses ranks: K and V forward and again backward (ring - 1 shifts each), and
    the float32 dK/dV accumulators, which make ring shifts to return to their owner
    (twice the bf16 shard's bytes), each hidden behind the attention of the previous
    chunk. Both counts are measured exactly by bench/bench_cp_scaling.py."""
    if cp == 1:
        return 0.0
    a2a = 0.0
    if ulysses > 1:
        a2a = 8 * shard_bytes * _ring(ulysses) / _bandwidth(tp, ulysses, run)
    ring = cp // ulysses
    p2p = 0.0
    if ring > 1:
        moved = shard_bytes * (4 * (ring - 1) + 2 * ring * RING_GRAD_BYTES / ACT_BYTES)
        comm = moved / _bandwidth(tp * ulysses, ring, run)
        attention = block_compute * run.attention_flops_per_sample / run.flops_per_sample
        p2p = max(0.0, comm - attention * (ring - 1) / ring)
    return m * stage_layers * (a2a + p2p)


def _dp_time(run, m, tp, cp, pp, dp, zero_stage, compute, stage_layers) -> float:
    """FSDP over DP x CP: stage 1 gathers and reduces once per step, stage 2 per
    micro-batch, stage 3 gathers twice (forward, backward) per micro-batch."""
    shards = dp * cp
    if shards == 1:
        return 0.0
    local = run.params_local(tp, pp) * _ring(shards)
    per = {1: 1, 2: m, 3: m}[zero_stage]
    gathers = {1: 1, 2: 1, 3: 2}[zero_stage]
    moved = per * local * (gathers * PARAM_GATHER_BYTES + GRAD_REDUCE_BYTES)
    comm = moved / _bandwidth(tp, shards, run)
    first_gather = comm / (per * stage_layers)
    return max(0.0, comm - compute) + first_gather
