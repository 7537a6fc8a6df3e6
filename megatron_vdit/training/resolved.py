"""What a job config implies at a world size, derived once and frozen; validation.

`resolve(job, world_size)` checks every value of the (never mutated) `JobConfig`, fills
in what the user left to defaults (shape from a preset, global batch, iterations from
tokens, data-parallel size from the world) and returns a frozen `Resolved`. It needs no
process group, model or data, and no torch (megatron-core is imported by `model_config`
only), so every mistake it finds costs nothing.
"""
from __future__ import annotations

import dataclasses
import math
import os
import warnings
from typing import TYPE_CHECKING

from ..models.accounting import PRESETS, preset_shape
from ..models.validation import output_bottleneck, validate_model_shape
from ..parallel.layout import ParallelLayout, default_cp_comm_type
from .config import FIELDS, JobConfig

if TYPE_CHECKING:
    from ..models.config import VDiTConfig


@dataclasses.dataclass(frozen=True)
class Resolved:
    """Values derived from the job config; the loop reads these, never re-derives them."""

    num_layers: int
    hidden_size: int
    num_attention_heads: int
    global_batch_size: int
    """Samples per optimizer step."""
    train_iters: int
    train_tokens: int
    layout: ParallelLayout
    """Every parallel degree, data parallel included."""
    tokens_per_sample: int
    micro_batch_size: int
    eval_micro_batch_size: int
    """Validation batch per rank: --eval-micro-batch-size or micro-batch x PP."""

    @property
    def data_parallel_size(self) -> int:
        return self.layout.data_parallel_size

    @property
    def batch_samples(self) -> int:
        return self.global_batch_size

    @property
    def batch_tokens(self) -> int:
        return self.global_batch_size * self.tokens_per_sample

    @property
    def num_microbatches(self) -> int:
        return self.global_batch_size // (self.micro_batch_size * self.data_parallel_size)


def world_size_from_env() -> int:
    """torchrun's WORLD_SIZE, known before any process group exists (1 without torchrun)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def tokens_per_sample(job: JobConfig) -> int:
    m = job.model
    pt, ph, pw = m.patch_size
    return (m.latent_frames // pt) * (m.latent_height // ph) * (m.latent_width // pw)


def resolve(job: JobConfig, world_size: int) -> Resolved:
    """Validate `job` for `world_size` ranks and derive what it implies (ValueError naming
    the flag otherwise)."""
    check_ranges(job)
    check_choices(job)
    check_inference_options(job)
    layers, hidden, heads = _shape(job)
    p = job.parallel
    check_cp_backend(job)
    cp_comm_type = p.cp_comm_type or default_cp_comm_type(
        heads, p.tensor_model_parallel_size, p.context_parallel_size)
    layout = ParallelLayout.from_world_size(
        world_size, tensor_model_parallel_size=p.tensor_model_parallel_size,
        pipeline_model_parallel_size=p.pipeline_model_parallel_size,
        context_parallel_size=p.context_parallel_size, cp_comm_type=cp_comm_type,
        ulysses_size=p.ulysses_size, sequence_parallel=p.sequence_parallel,
        num_layers_per_virtual_pipeline_stage=p.num_layers_per_virtual_pipeline_stage)
    n_ctx = tokens_per_sample(job)
    eval_micro_batch = (job.schedule.eval_micro_batch_size or
                        job.schedule.micro_batch_size * layout.pipeline_model_parallel_size)
    batch = _global_batch(job, n_ctx, layout, eval_micro_batch)
    iters, tokens = _duration(job, batch * n_ctx)
    resolved = Resolved(layers, hidden, heads, batch, iters, tokens, layout, n_ctx,
                        job.schedule.micro_batch_size, eval_micro_batch)
    check_schedule(job, resolved)
    m = job.model
    validate_model_shape(hidden_size=hidden, num_attention_heads=heads,
                         latent=(m.latent_frames, m.latent_height, m.latent_width),
                         patch=m.patch_size, max_text_tokens=m.max_text_tokens,
                         text_hidden_size=m.text_hidden_size)
    layout.validate(world_size, layers, heads, n_ctx)
    problem = output_bottleneck(hidden_size=hidden, in_channels=m.in_channels, patch=m.patch_size)
    if problem:
        warnings.warn(problem, stacklevel=2)
    return resolved


def model_config(job: JobConfig, r: Resolved) -> VDiTConfig:
    """The model's config; parallel degrees stay in `r.layout` (one place each). Imports
    megatron-core (seconds): call after `resolve`."""
    from ..models.config import validate_model_config
    with warnings.catch_warnings():  # megatron-core's deprecation noise on every config
        warnings.filterwarnings("ignore", message="full scope is deprecated")
        mc = _vdit_config(job, r)
    validate_model_config(mc)
    return mc


def _vdit_config(job: JobConfig, r: Resolved) -> VDiTConfig:
    import torch

    from ..models.config import VDiTConfig
    m = job.model
    pt, ph, pw = m.patch_size
    return VDiTConfig(
        num_layers=r.num_layers, hidden_size=r.hidden_size,
        num_attention_heads=r.num_attention_heads, in_channels=m.in_channels,
        latent_frames=m.latent_frames, latent_height=m.latent_height,
        latent_width=m.latent_width, patch_size_t=pt, patch_size_h=ph, patch_size_w=pw,
        text_hidden_size=m.text_hidden_size, max_text_tokens=m.max_text_tokens,
        use_cpu_initialization=True, params_dtype=torch.float32, bf16=m.bf16)


def _shape(job: JobConfig) -> tuple[int, int, int]:
    m = job.model
    shape = [m.num_layers, m.hidden_size, m.num_attention_heads]
    if m.model_size is not None:
        preset = preset_shape(m.model_size)
        shape = [given if given is not None else p for given, p in zip(shape, preset)]
    for name, value in zip(("num_layers", "hidden_size", "num_attention_heads"), shape):
        if value is None:
            raise ValueError(f"{FIELDS[name].flag} is not set and no --model-size preset "
                             f"gives it (presets: {', '.join(PRESETS)})")
    return tuple(shape)


def _global_batch(job: JobConfig, n_ctx: int, layout: ParallelLayout,
                  eval_micro_batch: int) -> int:
    s, dp = job.schedule, layout.data_parallel_size
    batch = s.global_batch_size
    if s.global_batch_tokens is not None:
        if n_ctx <= 0 or s.global_batch_tokens % n_ctx:
            raise ValueError(f"--global-batch-tokens={s.global_batch_tokens} is not a whole "
                             f"number of samples of {n_ctx} tokens")
        samples = s.global_batch_tokens // n_ctx
        if batch not in (None, samples):
            raise ValueError(f"--global-batch-size={batch} disagrees with --global-batch-tokens="
                             f"{s.global_batch_tokens} ({samples} samples)")
        batch = samples
    per_step = s.micro_batch_size * dp
    batch = per_step if batch is None else batch
    if batch % per_step:
        raise ValueError(f"--global-batch-size={batch} is not a multiple of "
                         f"--micro-batch-size={s.micro_batch_size} x data-parallel size {dp}")
    pp = layout.pipeline_model_parallel_size
    if s.eval_samples % (dp * pp) or eval_micro_batch % pp:
        raise ValueError(f"--eval-samples={s.eval_samples} must be a multiple of data-parallel "
                         f"size x pipeline size = {dp * pp} and --eval-micro-batch-size="
                         f"{eval_micro_batch} a multiple of pipeline size {pp}, so "
                         "every rank evaluates equal, pipeline-divisible batches")
    if pp > 1 and batch // per_step < pp:
        raise ValueError(f"pipeline parallel size {pp} needs at least {pp} micro-batches per "
                         f"step, got {batch // per_step} (--global-batch-size={batch}, "
                         f"--micro-batch-size={s.micro_batch_size}, data-parallel size {dp})")
    return batch


def _duration(job: JobConfig, batch_tokens: int) -> tuple[int, int]:
    """(iterations, tokens) of the run."""
    s = job.schedule
    iters = s.train_iters
    if s.train_tokens is not None:
        if s.train_tokens < batch_tokens:
            raise ValueError(f"--train-tokens={s.train_tokens} is smaller than one global "
                             f"batch ({batch_tokens} tokens)")
        if s.train_tokens % batch_tokens:
            lo = s.train_tokens // batch_tokens * batch_tokens
            raise ValueError(f"--train-tokens={s.train_tokens} is not a whole number of "
                             f"global batches of {batch_tokens} tokens; use {lo} or "
                             f"{lo + batch_tokens}")
        from_tokens = s.train_tokens // batch_tokens
        if iters not in (None, from_tokens):
            raise ValueError(f"--train-iters={iters} disagrees with --train-tokens="
                             f"{s.train_tokens} ({from_tokens} iterations of {batch_tokens} "
                             "tokens); give one of them")
        iters = from_tokens
    if iters is None:
        raise ValueError("set --train-iters or --train-tokens")
    return iters, iters * batch_tokens


def check_ranges(job: JobConfig) -> None:
    """Positivity and finiteness of every number, before anything divides by one."""
    flat = job.flat()
    for name, spec in FIELDS.items():
        value = flat[name]
        if value is None or spec.kind not in (int, float):
            continue
        if spec.kind is int and name not in _MAY_BE_ZERO_OR_NEGATIVE and value < 1:
            raise ValueError(f"{spec.flag}={value} must be >= 1")
        if spec.kind is float and not math.isfinite(value):
            raise ValueError(f"{spec.flag}={value} must be finite")
    for name in ("min_lr", "lr_warmup_samples", "weight_decay", "clip_grad", "adam_eps"):
        if flat[name] < 0:
            raise ValueError(f"{FIELDS[name].flag}={flat[name]} must be finite and >= 0")
    if min(job.model.patch_size) < 1:
        raise ValueError(f"--patch-size needs 3 positive numbers (t h w), got "
                         f"{list(job.model.patch_size)}")
    for name in ("adam_beta1", "adam_beta2"):
        if not 0 <= flat[name] < 1:
            raise ValueError(f"{FIELDS[name].flag}={flat[name]} must be in [0, 1)")


# Seeds may be any integer; warmup may be 0 (no warmup).
_MAY_BE_ZERO_OR_NEGATIVE = ("seed", "data_seed", "eval_seed", "lr_warmup_samples")


def check_choices(job: JobConfig) -> None:
    for name, value in job.flat().items():
        choices = FIELDS[name].choices
        if choices and value is not None and value not in choices:
            raise ValueError(f"{FIELDS[name].flag}={value!r}; expected one of {choices}")


def check_inference_options(job: JobConfig) -> None:
    m = job.model
    if not 0 <= m.text_dropout <= 1:
        raise ValueError(f"--text-dropout={m.text_dropout} must be in [0, 1]")
    if m.ema_decay is not None and not 0 < m.ema_decay < 1:
        raise ValueError(f"--ema-decay={m.ema_decay} must be in (0, 1)")
    if not m.flow_shift > 0:
        raise ValueError(f"--flow-shift={m.flow_shift} must be > 0")
    if m.flow_shift != 1.0 and m.objective != "flow":
        raise ValueError(f"--flow-shift={m.flow_shift} needs --objective flow "
                         f"(got {m.objective!r})")


def check_cp_backend(job: JobConfig) -> None:
    """--cp-backend te where TransformerEngine cannot run is a usage error, found here
    rather than when the first attention layer is built."""
    if job.parallel.cp_backend == "te":
        from ..parallel.context_parallel import transformer_engine_problem
        problem = transformer_engine_problem()
        if problem is not None:
            raise ValueError(f"--cp-backend te: {problem}")


def check_schedule(job: JobConfig, r: Resolved) -> None:
    """The LR schedule; model-shape checks run in `validate_model_shape`."""
    o, s = job.optimizer, job.schedule
    if not o.lr > 0:
        raise ValueError(f"--lr={o.lr} must be > 0")
    if o.min_lr > o.lr:
        raise ValueError(f"--min-lr={o.min_lr} is above --lr={o.lr}: the schedule would "
                         "decay upwards; need 0 <= --min-lr <= --lr")
    total_samples = r.train_iters * r.global_batch_size
    if s.lr_warmup_samples >= total_samples:
        raise ValueError(f"--lr-warmup-samples={s.lr_warmup_samples} covers the whole run "
                         f"({total_samples} samples): the run would never reach --lr={o.lr}")
    if not 0 < s.lr_wsd_decay_fraction <= 1:
        raise ValueError(f"--lr-wsd-decay-fraction={s.lr_wsd_decay_fraction} must be in (0, 1]")
    if not 0 <= s.eval_cooldown_fraction < 1:
        raise ValueError(f"--eval-cooldown-fraction={s.eval_cooldown_fraction} must be in [0, 1)")


def resolved_flat(job: JobConfig, r: Resolved, data_root: str | None = None) -> dict:
    """The flat config with derived values filled in: what run.json and checkpoints store
    under "config" (the pre-nesting format, so old records and checkpoints compare)."""
    flat = job.flat()
    flat.update(num_layers=r.num_layers, hidden_size=r.hidden_size,
                num_attention_heads=r.num_attention_heads, global_batch_size=r.global_batch_size,
                train_iters=r.train_iters, train_tokens=r.train_tokens,
                data_parallel_size=r.data_parallel_size, cp_comm_type=r.layout.cp_comm_type,
                eval_micro_batch_size=r.eval_micro_batch_size)
    if data_root is not None:
        flat["data"] = data_root
    return flat
