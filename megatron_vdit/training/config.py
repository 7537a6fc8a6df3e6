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
    """Initialisation and training noise. The data and the validation set do not
    depend on it (see data_seed, eval_seed), so runs with different seeds are comparable."""
    data_seed: int = 0
    eval_seed: int = 0
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
    ulysses_size: Optional[int] = None
    """Ulysses degree of a2a+p2p CP (default: the largest that divides heads and CP)."""
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
            self.num_layers = layers if self.num_layers is None else self.num_layers
            self.hidden_size = hidden if self.hidden_size is None else self.hidden_size
            self.num_attention_heads = heads if self.num_attention_heads is None else self.num_attention_heads
        for name in ("num_layers", "hidden_size", "num_attention_heads"):
            if getattr(self, name) is None:
                raise ValueError(f"--{name.replace('_', '-')} is not set and no --model-size "
                                 f"preset gives it (presets: {', '.join(PRESETS)})")
        check_ranges(self)
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


_POSITIVE_INTS = ("num_layers", "hidden_size", "num_attention_heads", "in_channels",
                  "latent_frames", "latent_height", "latent_width", "text_hidden_size",
                  "max_text_tokens", "micro_batch_size", "global_batch_size",
                  "global_batch_tokens", "train_iters", "train_tokens", "eval_interval",
                  "eval_samples", "eval_micro_batch_size", "log_interval", "save_interval",
                  "save_keep", "tensor_model_parallel_size", "pipeline_model_parallel_size",
                  "context_parallel_size", "num_layers_per_virtual_pipeline_stage",
                  "default_data_train_clips", "default_data_val_clips", "ulysses_size")
_NON_NEGATIVE_FLOATS = ("min_lr", "lr_warmup_samples", "weight_decay", "clip_grad", "adam_eps")


def check_ranges(cfg: TrainConfig) -> None:
    """Positivity and finiteness of every number, before anything divides by one."""
    for name in _POSITIVE_INTS:
        value = getattr(cfg, name)
        if value is not None and value < 1:
            raise ValueError(f"--{name.replace('_', '-')}={value} must be >= 1")
    for name in _NON_NEGATIVE_FLOATS:
        value = getattr(cfg, name)
        if not (math.isfinite(value) and value >= 0):
            raise ValueError(f"--{name.replace('_', '-')}={value} must be finite and >= 0")
    if len(cfg.patch_size) != 3 or min(cfg.patch_size) < 1:
        raise ValueError(f"--patch-size needs 3 positive numbers (t h w), got {cfg.patch_size}")
    for name in ("adam_beta1", "adam_beta2"):
        if not 0 <= getattr(cfg, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')}={getattr(cfg, name)} must be in [0, 1)")


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
    if not (cfg.lr > 0 and math.isfinite(cfg.lr)) or cfg.min_lr > cfg.lr:
        raise ValueError(f"need 0 <= --min-lr ({cfg.min_lr}) <= --lr ({cfg.lr}) and --lr > 0")
    total_samples = cfg.train_iters * cfg.global_batch_size
    if cfg.lr_warmup_samples >= total_samples:
        raise ValueError(f"--lr-warmup-samples={cfg.lr_warmup_samples} covers the whole run "
                         f"({total_samples} samples): the run would never reach --lr={cfg.lr}")
    if not 0 < cfg.lr_wsd_decay_fraction <= 1:
        raise ValueError(f"--lr-wsd-decay-fraction={cfg.lr_wsd_decay_fraction} must be in (0, 1]")


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


def _coerce(field: dataclasses.Field, value):
    """A YAML value as the field's type, or a ValueError naming the key."""
    kind = str(field.type).replace("Optional[", "").rstrip("]")
    if value is None:
        if "Optional" in str(field.type):
            return None
        raise ValueError(f"config key {field.name!r} may not be null")
    try:
        if field.name == "patch_size":
            if not isinstance(value, (list, tuple)):
                raise TypeError
            if len(value) != 3:
                raise ValueError
            return tuple(int(_exact(v, int)) for v in value)
        if kind == "bool":
            if isinstance(value, bool):
                return value
            return _parse_bool(str(value))
        if kind == "int":
            return int(_exact(value, int))
        if kind == "float":
            return float(value)  # YAML reads 1e-3 as a string; float() parses it
        return str(value)
    except (TypeError, ValueError, argparse.ArgumentTypeError):
        kind = "list of 3 ints" if field.name == "patch_size" else kind
        raise ValueError(f"config key {field.name!r}: {value!r} is not a valid {kind}") from None


def _exact(value, kind):
    """Reject silent truncation (2.5 -> 2) and bools posing as ints."""
    if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
        raise ValueError
    if isinstance(value, str):
        return kind(value)
    return value


def load_config(argv: list[str] | None = None) -> TrainConfig:
    """YAML (if --config) then CLI flags; unknown YAML keys are an error, not ignored."""
    args = vars(build_parser().parse_args(argv))
    values = {}
    config_path = args.pop("config", None)
    if config_path:
        with open(config_path) as f:
            raw = yaml.safe_load(f) or {}
        if not isinstance(raw, dict):
            raise ValueError(f"{config_path}: expected a mapping of config keys")
        fields = {f.name: f for f in dataclasses.fields(TrainConfig) if f.name != "data_parallel_size"}
        unknown = sorted(set(raw) - set(fields))
        if unknown:
            raise ValueError(f"unknown config keys {unknown} in {config_path}")
        values = {k: _coerce(fields[k], v) for k, v in raw.items()}
    values.update(args)
    if "patch_size" in values:
        values["patch_size"] = tuple(values["patch_size"])
    return TrainConfig(**values)
