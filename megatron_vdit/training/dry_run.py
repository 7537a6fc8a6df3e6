"""`--dry-run`: validate a job config and its layout, report the memory estimate, train nothing.

No process group, model or data loader is built: the checks are those a real launch runs
before any of them (config values, layout at the world size, model shape, paths, the
data's manifest, where the run would start), so a config that passes here fails a real launch only
on what needs the machines (memory, communication).
"""
from __future__ import annotations

import os

from ..models import accounting
from ..parallel.memory import GIB, RESERVE_GIB, layout_memory
from .config import JobConfig
from .data import check_data_paths, check_manifest, data_identity
from .resolved import model_config, resolve, resolved_flat
from .rundir import find_start


def dry_run_world_size(job: JobConfig, world_size: int | None) -> int:
    """--world-size, else torchrun's WORLD_SIZE, else the smallest world the layout needs."""
    if world_size is not None:
        if world_size < 1:
            raise ValueError(f"--world-size={world_size} must be >= 1")
        return world_size
    if "WORLD_SIZE" in os.environ:
        return int(os.environ["WORLD_SIZE"])
    p = job.parallel
    return p.tensor_model_parallel_size * p.pipeline_model_parallel_size * p.context_parallel_size


def dry_run(job: JobConfig, world_size: int | None = None) -> str:
    """The report of a validated config; ValueError naming the offender otherwise."""
    world = dry_run_world_size(job, world_size)
    r = resolve(job, world)
    mc = model_config(job, r)
    check_data_paths(job)
    if job.data.data not in ("default", "synthetic"):
        check_manifest(job, r, job.data.data)
    layout = r.layout
    shape = accounting.ModelShape.from_config(mc)
    params_total = accounting.params_total(shape)
    mem = layout_memory(
        params_total=params_total, num_layers=r.num_layers, hidden_size=r.hidden_size,
        tokens_per_sample=r.tokens_per_sample, tp=layout.tensor_model_parallel_size,
        cp=layout.context_parallel_size, pp=layout.pipeline_model_parallel_size,
        dp=layout.data_parallel_size, vpp=layout.virtual_stages(r.num_layers),
        zero_stage=job.parallel.zero_stage, micro_batch_size=r.micro_batch_size,
        num_microbatches=r.num_microbatches, recompute=job.parallel.recompute_granularity,
        params_replicated=accounting.embedding_params(shape))
    flat = resolved_flat(job, r, data_identity(job))
    start = find_start(job, flat, warn=lambda _: None)
    begins = ("nothing to do (the run dir holds this run, finished)" if start.finished_record
              else f"resume from {start.checkpoint}" if start.checkpoint else "a fresh run")
    lines = [
        f"config ok (dry run, world size {world}): nothing was trained",
        f"model: {r.num_layers} layers x {r.hidden_size} hidden, {r.num_attention_heads} heads; "
        f"params {accounting.params_nonembed(shape):,} non-embedding, {params_total:,} total",
        f"tokens per sample {r.tokens_per_sample}; global batch {r.global_batch_size} samples "
        f"= {r.batch_tokens} tokens; {r.train_iters} iterations = {r.train_tokens} tokens",
        f"layout: TP{layout.tensor_model_parallel_size} PP{layout.pipeline_model_parallel_size} "
        f"(virtual {layout.virtual_stages(r.num_layers)}) CP{layout.context_parallel_size} "
        f"({layout.cp_comm_type}) DP{layout.data_parallel_size}; micro-batch "
        f"{r.micro_batch_size}, {r.num_microbatches} micro-batches per step",
        f"memory estimate per GPU (parallel/memory.py, ZeRO-{job.parallel.zero_stage}): "
        f"model states {mem.model_states / GIB:.2f} GiB + activations "
        f"{mem.activations / GIB:.2f} GiB + buffers {mem.buffers / GIB:.2f} GiB = "
        f"{mem.total / GIB:.2f} GiB, plus a {RESERVE_GIB:g} GiB reserve",
        f"data: {flat['data']}; run dir: {job.logging.run_dir}; would start: {begins}",
    ]
    return "\n".join(lines)
