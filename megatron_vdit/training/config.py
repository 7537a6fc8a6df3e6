"""Training config: one flat dataclass, loaded from YAML, overridden by Megatron-LM flags.

Every field is a CLI flag with dashes (`micro_batch_size` -> `--micro-batch-size`), so
Megatron-LM users keep their muscle memory; YAML files use the field names. Validation
(`validate`) runs before any process group, model or data is built, and names the
offending values.
"""
from __future__ import annotations

import argparse
import dataclasses
import math
from typing import Optional

import yaml

from ..diffusion.objectives import BETA_SCHEDULES, OBJECTIVES
from ..models.accounting import PRESETS, preset_shape
from ..parallel.layout import CP_COMM_TYPES

LR_DECAY_STYLES = ("constant", "cosine", "wsd")
WANDB_MODES = ("offline", "online", "disabled")


@dataclasses.dataclass
class TrainConfig:
    # Model shape: a preset, or explicit numbers (explicit numbers win).
    model_size: Optional[str] = None
    num_layers: Optional[int] = None
    hidden_size: Optional[int] = None
    num_attention_heads: Optional[int] = None
    in_channels: int = 4
    latent_frames: int = 3
    latent_height: int = 8
    latent_width: int = 8
    patch_size: tuple = (1, 2, 2)
    text_hidden_size: int = 64
    max_text_tokens: int = 32
    # Objective.
    objective: str = "ddpm"
    beta_schedule: str = "linear"
    # Data: "default" (procedural mp4 -> tiny VAE/UMT5 precompute -> shards, cached in
    # default_data_dir), "synthetic" (the same procedural clips mapped to latents in
    # memory, no VAE: fast, for tests), or a directory made by tools/precompute_latents.py.
    data: str = "synthetic"
    default_data_dir: str = "runs/default_data"
    default_data_train_clips: int = 256
    default_data_val_clips: int = 64
    # Batch and duration. global_batch_size is in samples; global_batch_tokens sets it
    # from tokens (must be a whole number of samples).
    micro_batch_size: int = 4
    global_batch_size: Optional[int] = None
    global_batch_tokens: Optional[int] = None
    train_iters: Optional[int] = None
    train_tokens: Optional[int] = None
    # Optimiser and schedule.
    lr: float = 1e-3
    min_lr: float = 0.0
    lr_decay_style: str = "constant"
    lr_warmup_samples: int = 0
    lr_wsd_decay_fraction: float = 0.2
    weight_decay: float = 0.0
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    adam_eps: float = 1e-8
    clip_grad: float = 1.0
    seed: int = 1234
    bf16: bool = False
    # Validation, logging, checkpoints.
    eval_interval: int = 50
    eval_samples: int = 64
    eval_micro_batch_size: int = 16
    log_interval: int = 10
    run_dir: str = "runs/default"
    save: Optional[str] = None
    load: Optional[str] = None
    save_interval: Optional[int] = None
    save_keep: int = 2
    wandb_mode: str = "offline"
    wandb_project: str = "megatron_vdit"
    # Parallel layout (Megatron-LM names); data parallel size is what remains.
    tensor_model_parallel_size: int = 1
    pipeline_model_parallel_size: int = 1
    num_layers_per_virtual_pipeline_stage: Optional[int] = None
    context_parallel_size: int = 1
    cp_comm_type: str = "p2p"
    sequence_parallel: bool = False
    recompute_granularity: Optional[str] = None
    # Set by `resolve` from the world size; not a flag.
    data_parallel_size: int = 1

    # -- derived -----------------------------------------------------------------------
    @property
    def tokens_per_sample(self) -> int:
        pt, ph, pw = self.patch_size
        return (self.latent_frames // pt) * (self.latent_height // ph) * (self.latent_width // pw)

    @property
    def batch_samples(self) -> int:
        return self.global_batch_size

    @property
    def batch_tokens(self) -> int:
        return self.global_batch_size * self.tokens_per_sample

    def resolve(self, data_parallel_size: int = 1) -> "TrainConfig":
        """Fill derived fields (shape from preset, batch, iterations) and validate."""
        if self.model_size is not None:
            layers, hidden, heads = preset_shape(self.model_size)
            self.num_layers = self.num_layers or layers
            self.hidden_size = self.hidden_size or hidden
            self.num_attention_heads = self.num_attention_heads or heads
        for name in ("num_layers", "hidden_size", "num_attention_heads"):
            if getattr(self, name) is None:
                raise ValueError(f"--{name.replace('_', '-')} is not set and no --model-size "
                                 f"preset gives it (presets: {', '.join(PRESETS)})")
        self.patch_size = tuple(int(p) for p in self.patch_size)
        self.data_parallel_size = data_parallel_size
        self._resolve_batch(data_parallel_size)
        self._resolve_duration()
        validate(self)
        return self

    def _resolve_batch(self, dp: int) -> None:
        n_ctx = self.tokens_per_sample
        if self.global_batch_tokens is not None:
            if n_ctx <= 0 or self.global_batch_tokens % n_ctx:
                raise ValueError(f"--global-batch-tokens={self.global_batch_tokens} is not a whole "
                                 f"number of samples of {n_ctx} tokens")
            samples = self.global_batch_tokens // n_ctx
            if self.global_batch_size not in (None, samples):
                raise ValueError(f"--global-batch-size={self.global_batch_size} disagrees with "
                                 f"--global-batch-tokens={self.global_batch_tokens} ({samples} samples)")
            self.global_batch_size = samples
        if self.global_batch_size is None:
            self.global_batch_size = self.micro_batch_size * dp
        per_step = self.micro_batch_size * dp
        if self.micro_batch_size < 1 or self.global_batch_size % per_step:
            raise ValueError(f"--global-batch-size={self.global_batch_size} is not a multiple of "
                             f"--micro-batch-size={self.micro_batch_size} x data-parallel size {dp}")
        pp = self.pipeline_model_parallel_size
        if self.eval_samples % (dp * pp) or self.eval_micro_batch_size % pp:
            raise ValueError(f"--eval-samples={self.eval_samples} must be a multiple of data-parallel "
                             f"size x pipeline size = {dp * pp} and --eval-micro-batch-size="
                             f"{self.eval_micro_batch_size} a multiple of pipeline size {pp}, so "
                             "every rank evaluates equal, pipeline-divisible batches")
        if pp > 1 and self.global_batch_size // per_step < pp:
            raise ValueError(f"pipeline parallel size {pp} needs at least {pp} micro-batches per "
                             f"step, got {self.global_batch_size // per_step} (--global-batch-size="
                             f"{self.global_batch_size}, --micro-batch-size={self.micro_batch_size}, "
                             f"data-parallel size {dp})")

    def _resolve_duration(self) -> None:
        batch_tokens = self.batch_tokens
        if self.train_tokens is not None:
            if self.train_tokens < batch_tokens:
                raise ValueError(f"--train-tokens={self.train_tokens} is smaller than one global "
                                 f"batch ({batch_tokens} tokens)")
            if self.train_tokens % batch_tokens:
                lo = self.train_tokens // batch_tokens * batch_tokens
                raise ValueError(f"--train-tokens={self.train_tokens} is not a whole number of "
                                 f"global batches of {batch_tokens} tokens; use {lo} or "
                                 f"{lo + batch_tokens}")
            iters = self.train_tokens // batch_tokens
            if self.train_iters not in (None, iters):
                raise ValueError(f"--train-iters={self.train_iters} disagrees with --train-tokens="
                                 f"{self.train_tokens} ({iters} iterations of {batch_tokens} tokens)")
            self.train_iters = iters
        if self.train_iters is None or self.train_iters < 1:
            raise ValueError(f"set --train-iters or --train-tokens (got train_iters={self.train_iters})")
        self.train_tokens = self.train_iters * batch_tokens

    @property
    def num_microbatches(self) -> int:
        return self.global_batch_size // (self.micro_batch_size * self.data_parallel_size)


def validate(cfg: TrainConfig) -> None:
    """Choices and ranges; model-shape checks run in `validate_model_config`."""
    choices = (("objective", OBJECTIVES), ("beta_schedule", BETA_SCHEDULES),
               ("lr_decay_style", LR_DECAY_STYLES), ("wandb_mode", WANDB_MODES),
               ("cp_comm_type", CP_COMM_TYPES))
    for name, allowed in choices:
        if getattr(cfg, name) not in allowed:
            raise ValueError(f"--{name.replace('_', '-')}={getattr(cfg, name)!r}; expected one of {allowed}")
    if cfg.recompute_granularity not in (None, "selective", "full"):
        raise ValueError(f"--recompute-granularity={cfg.recompute_granularity!r}; expected "
                         "selective or full")
    if len(cfg.patch_size) != 3:
        raise ValueError(f"--patch-size needs 3 numbers (t h w), got {cfg.patch_size}")
    if not (cfg.lr > 0 and math.isfinite(cfg.lr)) or cfg.min_lr < 0 or cfg.min_lr > cfg.lr:
        raise ValueError(f"need 0 <= --min-lr ({cfg.min_lr}) <= --lr ({cfg.lr}) and --lr > 0")
    if not 0 < cfg.lr_wsd_decay_fraction <= 1:
        raise ValueError(f"--lr-wsd-decay-fraction={cfg.lr_wsd_decay_fraction} must be in (0, 1]")
    if cfg.eval_samples < 1 or cfg.eval_interval < 1 or cfg.log_interval < 1:
        raise ValueError(f"--eval-samples ({cfg.eval_samples}), --eval-interval "
                         f"({cfg.eval_interval}) and --log-interval ({cfg.log_interval}) must be >= 1")
    if cfg.save_interval is not None and cfg.save_interval < 1:
        raise ValueError(f"--save-interval={cfg.save_interval} must be >= 1")


def _parse_bool(text: str) -> bool:
    if text.lower() in ("1", "true", "yes", "on"):
        return True
    if text.lower() in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"not a boolean: {text!r}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m megatron_vdit.train",
        description="Train a video Cross-DiT. Flags follow Megatron-LM's names; a YAML "
                    "--config sets defaults that flags override.")
    parser.add_argument("--config", help="YAML file whose keys are TrainConfig field names")
    for field in dataclasses.fields(TrainConfig):
        if field.name == "data_parallel_size":
            continue
        flag = "--" + field.name.replace("_", "-")
        default = argparse.SUPPRESS
        if field.type in (bool, "bool"):
            parser.add_argument(flag, nargs="?", const=True, type=_parse_bool, default=default)
        elif field.name == "patch_size":
            parser.add_argument(flag, nargs=3, type=int, default=default, metavar=("T", "H", "W"))
        else:
            kind = {"int": int, "float": float}.get(str(field.type).replace("Optional[", "")
                                                    .rstrip("]"), str)
            parser.add_argument(flag, type=kind, default=default)
    return parser


def load_config(argv: list[str] | None = None) -> TrainConfig:
    """YAML (if --config) then CLI flags; unknown YAML keys are an error, not ignored."""
    args = vars(build_parser().parse_args(argv))
    values = {}
    if args.get("config"):
        with open(args.pop("config")) as f:
            values = yaml.safe_load(f) or {}
        known = {f.name for f in dataclasses.fields(TrainConfig)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown config keys {unknown} in the YAML file")
    args.pop("config", None)
    values.update(args)
    return TrainConfig(**values)
