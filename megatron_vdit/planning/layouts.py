"""Search the parallel layouts of a model on a cluster: fit by the memory model, rank by
the step-time model (docs/planning.md, "Layout search").

Constraints: TP within a node and dividing the heads; the Ulysses degree divides the
heads per TP rank and the CP degree; layers divisible by PP x virtual stages; the
global batch (the law's, rounded) a multiple of DP x micro-batch with at least PP
micro-batches per step. Layouts are ranked by the whole run's wall-clock time, so a
layout whose rounding makes the batch larger is charged for it.
"""
from __future__ import annotations

import dataclasses
import itertools

from ..parallel.memory import GIB, RESERVE_GIB, MemoryBreakdown, layout_memory
from .step_time import StepInputs, step_time

MICRO_BATCHES = (1, 2, 4)
RECOMPUTE = (None, "full")   # selective keeps ~95% of the bytes here: never worth it
ZERO = (1, 2, 3)


@dataclasses.dataclass(frozen=True)
class Layout:
    tp: int
    pp: int
    vpp: int
    cp: int
    cp_comm_type: str | None
    ulysses: int
    dp: int
    zero_stage: int
    micro_batch_size: int
    recompute: str | None
    global_batch: int
    memory: MemoryBreakdown
    times: dict
    train_days: float

    @property
    def num_microbatches(self) -> int:
        return self.global_batch // (self.dp * self.micro_batch_size)

    @property
    def memory_gib(self) -> float:
        return self.memory.total / GIB + RESERVE_GIB

    def label(self) -> str:
        cp = f"CP{self.cp}" + (f"({self.cp_comm_type}"
                               + (f", Ulysses {self.ulysses}" if self.cp_comm_type == "a2a+p2p"
                                  else "") + ")" if self.cp > 1 else "")
        pp = f"PP{self.pp}" + (f"x{self.vpp}v" if self.vpp > 1 else "")
        return (f"TP{self.tp} {pp} {cp} DP{self.dp} ZeRO-{self.zero_stage} "
                f"mb{self.micro_batch_size}x{self.num_microbatches} "
                f"recompute={self.recompute or 'none'}")


def _powers_dividing(n: int, limit: int) -> list[int]:
    return [2 ** i for i in range(limit.bit_length()) if 2 ** i <= limit and n % 2 ** i == 0]


def cp_flavours(heads_per_tp: int, cp: int) -> list[tuple[str | None, int]]:
    """(cp_comm_type, Ulysses degree) choices valid for ``cp``."""
    if cp == 1:
        return [(None, 1)]
    out = [("p2p", 1)]
    if heads_per_tp % cp == 0:
        out.append(("a2a", cp))
    inner = max(u for u in range(1, cp) if cp % u == 0 and heads_per_tp % u == 0)
    if inner > 1:
        out.append(("a2a+p2p", inner))
    return out


def rounded_batch(target: float, per_step: int, min_steps: int) -> int:
    """The law's batch rounded to the nearest multiple of ``per_step`` (DP x micro-batch),
    at least ``min_steps`` of them (PP needs PP micro-batches)."""
    return per_step * max(min_steps, round(target / per_step))


def _grid(run: StepInputs, heads: int):
    g = run.num_gpus
    for tp in _powers_dividing(heads, min(run.gpus_per_node, g)):
        if g % tp:
            continue
        for cp in _powers_dividing(run.tokens_per_sample // tp, g // tp):
            rest = g // (tp * cp)
            if g % (tp * cp):
                continue
            for pp in (p for p in range(1, run.num_layers + 1)
                       if rest % p == 0 and run.num_layers % p == 0):
                per_stage = run.num_layers // pp
                vpps = [1] + ([v for v in (2, 4) if per_stage % v == 0] if pp > 1 else [])
                for vpp, (comm, u) in itertools.product(vpps, cp_flavours(heads // tp, cp)):
                    yield tp, cp, pp, rest // pp, vpp, comm, u


def search(run: StepInputs, heads: int, batch_target: float, train_samples: float,
           margin: float) -> tuple[list[Layout], list[Layout]]:
    """(fitting layouts fastest first, all layouts fastest first). ``margin``: fraction
    of the GPU's memory kept free on top of the fixed reserve."""
    budget_bytes = run.gpu.memory_gib * (1 - margin) * GIB - RESERVE_GIB * GIB
    fits, every = [], []
    for tp, cp, pp, dp, vpp, comm, u in _grid(run, heads):
        for mbs, recompute, zero in itertools.product(MICRO_BATCHES, RECOMPUTE, ZERO):
            batch = rounded_batch(batch_target, dp * mbs, pp)
            m = batch // (dp * mbs)
            mem = layout_memory(params_total=run.params_total, num_layers=run.num_layers,
                                hidden_size=run.hidden_size,
                                tokens_per_sample=run.tokens_per_sample, tp=tp, cp=cp, pp=pp,
                                dp=dp, vpp=vpp, zero_stage=zero, micro_batch_size=mbs,
                                num_microbatches=m, recompute=recompute,
                                params_replicated=run.params_replicated)
            times = step_time(dataclasses.replace(run, global_batch=batch), tp=tp, cp=cp,
                              pp=pp, dp=dp, vpp=vpp, ulysses=u, zero_stage=zero,
                              micro_batch_size=mbs, recompute=recompute)
            days = times["total"] * train_samples / batch / 86400
            layout = Layout(tp, pp, vpp, cp, comm, u, dp, zero, mbs, recompute, batch, mem,
                            times, days)
            every.append(layout)
            if mem.total <= budget_bytes:
                fits.append(layout)
    # Times within 0.1% are a tie (batch rounding, not the layout): less memory wins.
    key = (lambda x: (float(f"{x.train_days:.3g}"), x.memory.total))
    return sorted(fits, key=key), sorted(every, key=key)


def _component_days(x: Layout, train_samples: float) -> dict:
    return {k: v * train_samples / x.global_batch / 86400 for k, v in x.times.items()}


def _without(best: Layout, fits: list[Layout], every: list[Layout]) -> list[str]:
    """For each kind of model parallelism or recompute the winner uses: what doing
    without it costs (the fastest fitting layout without it), or why it cannot."""
    out = []
    tests = (("context parallelism", best.cp > 1, lambda x: x.cp == 1),
             ("tensor parallelism", best.tp > 1, lambda x: x.tp == 1),
             ("pipeline parallelism", best.pp > 1, lambda x: x.pp == 1),
             ("full recompute", best.recompute == "full", lambda x: x.recompute is None))
    for name, used, lacks in tests:
        if not used:
            continue
        fitting = [x for x in fits if lacks(x)]
        if fitting:
            out.append(f"without {name} the fastest fitting layout ({fitting[0].label()}) "
                       f"takes {fitting[0].train_days / best.train_days - 1:.1%} longer")
            continue
        rest = [x for x in every if lacks(x)]
        if rest:
            small = min(rest, key=lambda x: x.memory.total)
            out.append(f"without {name} nothing fits: the smallest such layout needs "
                       f"{small.memory_gib:.1f} GiB ({small.label()})")
    return out


def explain(best: Layout, fits: list[Layout], every: list[Layout], gpu_gib: float,
            train_samples: float) -> list[str]:
    """Why the winner wins: what it needs memory for, what the runner-up loses."""
    lines = [f"fits {best.memory_gib:.1f} of {gpu_gib:.1f} GiB "
             f"(states {best.memory.model_states / GIB:.1f} + activations "
             f"{best.memory.activations / GIB:.1f} + buffers {best.memory.buffers / GIB:.1f} + "
             f"reserve {RESERVE_GIB:g})"]
    lines += _without(best, fits, every)
    faster = [x for x in every if float(f"{x.train_days:.3g}") < float(f"{best.train_days:.3g}")]
    if faster:
        lines.append(f"{len(faster)} faster layout(s) do not fit in memory")
    if len(fits) > 1:
        other = fits[1]
        mine, theirs = _component_days(best, train_samples), _component_days(other, train_samples)
        diffs = {k: theirs[k] - mine[k] for k in mine if k != "total"}
        cause = max(diffs, key=diffs.get)
        if f"{other.train_days:.3g}" == f"{best.train_days:.3g}":
            lines.append(f"runner-up {other.label()} ties on time (to 0.1%) but needs "
                         f"{other.memory_gib:.1f} GiB")
        else:
            lines.append(f"runner-up {other.label()} takes "
                         f"{other.train_days - best.train_days:.3g} days longer, mostly "
                         f"{cause.replace('_', ' ')} (+{diffs[cause]:.3g} days)")
    t = best.times
    parts = ", ".join(f"{k.replace('_', ' ')} {v:.3g}" for k, v in t.items()
                      if k != "total" and v > 0)
    lines.append(f"step {t['total']:.3g} s = {parts}")
    return lines
