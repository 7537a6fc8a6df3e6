"""Per-GPU memory estimate and a suggested (TP, CP, PP, DP) layout for a flagship run.

Pure Python (no torch), so the planner can call it. The estimate is deliberately simple
and states its assumptions; it picks a starting layout, not a tuned one:
- model states: bf16 compute with fp32 master weights, fp32 gradients and AdamW moments,
  16 bytes per parameter, sharded ZeRO-3 style over TP x PP x DP x CP (FSDP2 over
  DP x CP, megatron TP, PP stages), plus one block's bf16 weights gathered at a time;
- activations (bf16, flash/SDPA attention so no S^2 term): per block and sample the
  bytes autograd keeps for backward, measured on this model's block (tests/parallel/
  test_memory_plan.py counts the saved tensors): about 82 * s * d without recomputation
  (GPT blocks keep about 34 s d, Korthikanti et al. 2022; ours adds cross-attention,
  the adaLN modulations and RoPE in float32), the same 82 * s * d for selective recomputation
  as a conservative bound (torch's op-level selective checkpointing keeps matmul and
  attention outputs and recomputes norms, modulation, RoPE and GELU: about 47% of the
  no-recompute bytes measured in tests/parallel/test_recompute.py; the planner does not
  pick it), 2 * s * d with full recomputation (the
  block's input), with s = tokens / CP, divided by TP (sequence parallel); under 1F1B
  the first stage holds PP micro-batches of L / PP blocks, i.e. all L blocks' worth;
- a fixed reserve for the CUDA context, NCCL buffers and fragmentation.

``layout_memory`` (what the planner and the dry run use) refines this per layout: model
states by ZeRO stage (FSDP2's: 12 sharded bytes of master weights and moments, plus
unsharded bf16 parameters and fp32 gradients at stage 1, unsharded bf16 parameters at
stage 2, two gathered blocks at stage 3), the gathered inputs of the column-parallel
linears that autograd keeps whole under sequence parallelism, the micro-batches the
first pipeline stage holds at the 1F1B peak (more when interleaved), and the pipeline
and ring-attention buffers (docs/planning.md, "Memory model").
"""
from __future__ import annotations

import dataclasses
import itertools

GIB = 1024 ** 3
BYTES_PER_PARAM_STATE = 16
ACTIVATION_BYTES_PER_TOKEN_DIM = {None: 82, "selective": 82, "full": 2}
RESERVE_GIB = 6.0


@dataclasses.dataclass(frozen=True)
class LayoutEstimate:
    tensor_model_parallel_size: int
    context_parallel_size: int
    pipeline_model_parallel_size: int
    data_parallel_size: int
    recompute_granularity: str | None
    memory_gib: float
    model_states_gib: float
    activations_gib: float

    def flags(self) -> str:
        """The training CLI flags (Megatron-LM names) for this layout."""
        out = (f"--tensor-model-parallel-size {self.tensor_model_parallel_size} "
               f"--context-parallel-size {self.context_parallel_size} "
               f"--pipeline-model-parallel-size {self.pipeline_model_parallel_size}")
        if self.tensor_model_parallel_size > 1:
            out += " --sequence-parallel"
        if self.recompute_granularity:
            out += f" --recompute-granularity {self.recompute_granularity}"
        return out


def estimate_memory_gib(*, params_total: float, num_layers: int, hidden_size: int,
                        tokens_per_sample: int, tp: int, cp: int, pp: int, dp: int,
                        micro_batch_size: int = 1, recompute: str | None = None) -> tuple[float, float]:
    """(model-state GiB, activation GiB) per GPU under the module's assumptions."""
    states = params_total * BYTES_PER_PARAM_STATE / (tp * pp * dp * cp)
    states += 2 * params_total / num_layers / tp  # one block's gathered bf16 weights
    tokens_local = tokens_per_sample / cp
    per_block = ACTIVATION_BYTES_PER_TOKEN_DIM[recompute] * tokens_local * hidden_size / tp
    activations = per_block * num_layers * micro_batch_size
    if recompute == "full":  # plus one block's full activations while it is recomputed
        activations += (ACTIVATION_BYTES_PER_TOKEN_DIM[None] * tokens_local * hidden_size / tp
                        * micro_batch_size)
    return states / GIB, activations / GIB


def suggest_layout(*, params_total: float, num_layers: int, hidden_size: int,
                   num_attention_heads: int, tokens_per_sample: int, num_gpus: int,
                   gpu_memory_gib: float = 80.0, gpus_per_node: int = 8,
                   micro_batch_size: int = 1) -> LayoutEstimate:
    """The cheapest layout that fits: least recomputation, then fewest PP stages, then
    the smallest TP x CP (TP within a node, dividing the heads); data parallel takes the
    rest. Raises ValueError when nothing fits, naming the smallest estimate found."""
    if num_gpus < 1 or not gpu_memory_gib > 0:
        raise ValueError(f"need num_gpus >= 1 and gpu_memory_gib > 0, got "
                         f"{num_gpus} and {gpu_memory_gib}")
    budget = gpu_memory_gib - RESERVE_GIB
    powers = [2 ** i for i in range(num_gpus.bit_length()) if num_gpus % 2 ** i == 0]
    candidates, smallest = [], None
    # Selective recomputation is not offered: with flash attention it saves under 5%.
    for recompute_rank, recompute in enumerate((None, "full")):
        for tp, cp, pp in itertools.product(powers, powers, range(1, num_layers + 1)):
            if (tp > gpus_per_node or num_attention_heads % tp or num_layers % pp
                    or num_gpus % (tp * cp * pp) or tokens_per_sample < tp * cp):
                continue
            dp = num_gpus // (tp * cp * pp)
            states, acts = estimate_memory_gib(
                params_total=params_total, num_layers=num_layers, hidden_size=hidden_size,
                tokens_per_sample=tokens_per_sample, tp=tp, cp=cp, pp=pp, dp=dp,
                micro_batch_size=micro_batch_size, recompute=recompute)
            est = LayoutEstimate(tp, cp, pp, dp, recompute, states + acts, states, acts)
            if smallest is None or est.memory_gib < smallest.memory_gib:
                smallest = est
            if est.memory_gib <= budget:
                candidates.append(((recompute_rank, pp, tp * cp, tp), est))
    if not candidates:
        raise ValueError(f"no layout of {num_gpus} GPUs with {gpu_memory_gib} GiB fits: the "
                         f"smallest layout needs {smallest.memory_gib + RESERVE_GIB:.1f} GiB "
                         f"per GPU ({smallest.memory_gib:.1f} GiB estimate + {RESERVE_GIB} GiB "
                         f"reserve; {smallest.flags()}); use more GPUs")
    return min(candidates, key=lambda item: item[0])[1]


# -- the layout-aware model the planner uses (docs/planning.md, "Memory model") ----------
COMPUTE_BYTES = 2          # bf16 parameters and activations
MASTER_AND_ADAM_BYTES = 12  # fp32 master weights + two fp32 AdamW moments, always sharded
GRAD_BYTES = 4             # fp32 gradient accumulators
SP_GATHERED_PER_TOKEN_DIM = 6  # qkv, cross-q, fc1 keep their all-gathered bf16 input


@dataclasses.dataclass(frozen=True)
class MemoryBreakdown:
    """Per-GPU bytes on the first pipeline stage (the one holding most activations)."""

    model_states: float
    activations: float
    buffers: float

    @property
    def total(self) -> float:
        return self.model_states + self.activations + self.buffers


def model_state_bytes(params_total: float, num_layers: int, *, tp: int, pp: int, dp: int,
                      cp: int, zero_stage: int, params_replicated: float = 0.0) -> float:
    """Parameters, gradients and optimizer state per rank under FSDP2's ZeRO stages
    (parallel/data_parallel.py): master + moments sharded over DP x CP always; stage 1
    keeps bf16 params and fp32 grads unsharded, stage 2 bf16 params, stage 3 two blocks.
    Under PP > 1 torch's pipeline schedule keeps the stage's fp32 gradients unsharded
    over all micro-batches whatever the stage (docs/parallelism.md), so stage 2 costs
    what stage 1 does and stage 3 adds the unsharded gradients. ``params_replicated``:
    the embeddings and conditioning, which every TP rank and every pipeline stage holds
    whole (measured: bench/bench_memory_model.py)."""
    blocks = params_total - params_replicated
    local = blocks / (tp * pp) + params_replicated
    shards = dp * cp
    states = MASTER_AND_ADAM_BYTES * local / shards
    if zero_stage == 1 or (zero_stage == 2 and pp > 1):
        return states + (COMPUTE_BYTES + GRAD_BYTES) * local
    states += GRAD_BYTES * (local if pp > 1 else local / shards)
    if zero_stage == 2:
        return states + COMPUTE_BYTES * local
    return states + 2 * COMPUTE_BYTES * blocks / num_layers / tp


def block_activation_bytes(tokens_local: float, hidden_size: int, tp: int,
                           recompute: str | None) -> float:
    """Bytes one block keeps for backward for one sample of ``tokens_local`` tokens.
    Under sequence parallelism everything is split over TP except the gathered inputs
    of the column-parallel linears, which autograd keeps whole."""
    per = ACTIVATION_BYTES_PER_TOKEN_DIM[recompute]
    if recompute == "full":
        return per * tokens_local * hidden_size / tp
    if tp == 1:
        return per * tokens_local * hidden_size
    sharded = (per - SP_GATHERED_PER_TOKEN_DIM) / tp + SP_GATHERED_PER_TOKEN_DIM
    return sharded * tokens_local * hidden_size


def in_flight_microbatches(pp: int, vpp: int, num_microbatches: int) -> float:
    """Micro-batches whose activations the first stage holds at the 1F1B peak, in units
    of one micro-batch through all of the stage's layers: ``pp`` under 1F1B, plus
    ``(pp - 1) / vpp`` chunks' worth when interleaved (Megatron-LM's warm-up depth)."""
    if pp == 1:
        return 1.0
    depth = pp + ((pp - 1) / vpp if vpp > 1 else 0)
    return min(depth, num_microbatches)


def layout_memory(*, params_total: float, num_layers: int, hidden_size: int,
                  tokens_per_sample: int, tp: int, cp: int, pp: int, dp: int, vpp: int = 1,
                  zero_stage: int = 2, micro_batch_size: int = 1, num_microbatches: int = 1,
                  recompute: str | None = None, params_replicated: float = 0.0
                  ) -> MemoryBreakdown:
    """Per-GPU bytes of one layout (the module docstring and docs/planning.md list the
    assumptions); the reserve (CUDA context, NCCL) is not included."""
    states = model_state_bytes(params_total, num_layers, tp=tp, pp=pp, dp=dp, cp=cp,
                               zero_stage=zero_stage, params_replicated=params_replicated)
    tokens_local = tokens_per_sample / cp
    per_block = block_activation_bytes(tokens_local, hidden_size, tp, recompute)
    stage_layers = num_layers / pp
    acts = (per_block * stage_layers * micro_batch_size
            * in_flight_microbatches(pp, vpp, num_microbatches))
    if recompute == "full":  # one block recomputed at a time holds its full activations
        acts += block_activation_bytes(tokens_local, hidden_size, tp, None) * micro_batch_size
    # Pipeline send/receive buffers (two per direction) of one micro-batch's hidden
    # states, sharded over TP under SP, plus ring attention's two K/V chunks in flight.
    hidden_bytes = COMPUTE_BYTES * tokens_local * hidden_size / tp * micro_batch_size
    buffers = (4 * hidden_bytes if pp > 1 else 0.0) + (4 * hidden_bytes if cp > 1 else 0.0)
    return MemoryBreakdown(states, acts, buffers)
