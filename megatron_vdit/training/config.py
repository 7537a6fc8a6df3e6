"""The job config: one frozen dataclass of seven frozen sections, one CLI flag per field.

Every field is a Megatron-LM style flag (`micro_batch_size` -> `--micro-batch-size`); field
names are unique across sections, so a YAML file may list them flat (the historical form,
`lr: 1e-3`) or nested by section (`optimizer: {lr: 1e-3}`), or mix both. Flags override
the file. Field types come from the dataclass annotations (`typing.get_type_hints`);
help text, units and choices from each field's metadata, so adding a field is one line:

    ema_decay: Optional[float] = opt(None, "EMA of the weights; off when unset")

The config is what the user asked for and is never changed after loading: values that
depend on it and the world size (shape from a preset, batch in samples, iterations,
data-parallel size) live in `training.resolved.Resolved`.
"""
from __future__ import annotations

import argparse
import dataclasses
import difflib
import typing
from typing import Any, Optional

import yaml

from ..diffusion.names import BETA_SCHEDULES, OBJECTIVES
from ..models.accounting import PRESETS
from ..parallel.layout import CP_BACKENDS, CP_COMM_TYPES, ZERO_STAGES

LR_DECAY_STYLES = ("constant", "cosine", "wsd")
WANDB_MODES = ("offline", "online", "disabled")
RECOMPUTE_GRANULARITIES = ("selective", "full")
DATA_VERIFY = ("checksum", "size")
PROG = "megatron_vdit.train"


def opt(default, help: str, *, unit: str | None = None, choices: tuple | None = None,
        resume: bool = False, result: bool = True):
    """A config field with its flag's help. `resume`: a resumed run must keep the value
    (else it silently becomes another run); `result`: the value can change what a run
    computes (False for logging and bookkeeping: a finished run rerun with a different
    value is the same run)."""
    return dataclasses.field(default=default, metadata=dict(
        help=help, unit=unit, choices=choices, resume=resume, result=result))


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    model_size: Optional[str] = opt(None, "shape preset (layers, hidden, heads); explicit "
                                    "--num-layers/--hidden-size/--num-attention-heads win",
                                    choices=tuple(PRESETS))
    num_layers: Optional[int] = opt(None, "transformer blocks", resume=True)
    hidden_size: Optional[int] = opt(None, "model width", unit="channels", resume=True)
    num_attention_heads: Optional[int] = opt(None, "attention heads", resume=True)
    in_channels: int = opt(4, "latent channels of the VAE", resume=True)
    latent_frames: int = opt(3, "latent frames per sample", resume=True)
    latent_height: int = opt(8, "latent height per sample", unit="latent pixels", resume=True)
    latent_width: int = opt(8, "latent width per sample", unit="latent pixels", resume=True)
    patch_size: tuple[int, int, int] = opt((1, 2, 2), "patch size T H W", unit="latent pixels",
                                           resume=True)
    text_hidden_size: int = opt(64, "width of the text embeddings", resume=True)
    max_text_tokens: int = opt(32, "padded caption length", unit="tokens", resume=True)
    objective: str = opt("ddpm", "diffusion objective: noise prediction, v-prediction or "
                         "rectified flow", choices=OBJECTIVES, resume=True)
    beta_schedule: str = opt("linear", "DDPM/v noise schedule", choices=BETA_SCHEDULES,
                             resume=True)
    # The training side of inference (docs/inference.md).
    text_dropout: float = opt(0.0, "probability that a training caption is replaced by the "
                              "null caption (classifier-free guidance)", unit="probability",
                              resume=True)
    ema_decay: Optional[float] = opt(None, "EMA of the weights (e.g. 0.999), used for "
                                     "validation and sampling; off when unset", resume=True)
    flow_shift: float = opt(1.0, "flow objective: SD3/Wan timestep shift of the training "
                            "timesteps (1 = none)", resume=True)
    bf16: bool = opt(False, "bf16 compute with fp32 master weights and gradient reduction")


@dataclasses.dataclass(frozen=True)
class DataConfig:
    data: str = opt("default", "'default' (embedded procedural clips through the tiny VAE, "
                    "cached in --default-data-dir), 'natural' (photographs animated by a "
                    "moving camera, pixel-space latents: the sweep default), "
                    "'synthetic' (random-like latents in "
                    "memory, no VAE: for tests), or a directory made by "
                    "tools/precompute_latents.py", resume=True)
    default_data_dir: str = opt("runs/default_data", "cache directory of --data default",
                                result=False)
    natural_cache_dir: Optional[str] = opt(None, "directory where --data natural keeps its "
                                           "rendered clips for other runs to read (a sweep "
                                           "shares one); default: render in memory",
                                           result=False)
    default_data_train_clips: int = opt(256, "train clips of --data default", unit="clips")
    default_data_val_clips: int = opt(64, "validation clips of --data default", unit="clips")
    data_seed: int = opt(0, "data order; independent of --seed so runs stay comparable",
                         resume=True)
    data_verify: str = opt("checksum", "check of every shard against the manifest before "
                           "training: sha256 and size, or size only (cheaper on huge data)",
                           choices=DATA_VERIFY, result=False)


@dataclasses.dataclass(frozen=True)
class OptimizerConfig:
    lr: float = opt(1e-3, "peak learning rate (AdamW)", resume=True)
    min_lr: float = opt(0.0, "learning rate at the end of cosine/wsd decay", resume=True)
    weight_decay: float = opt(0.0, "AdamW weight decay", resume=True)
    adam_beta1: float = opt(0.9, "AdamW beta1")
    adam_beta2: float = opt(0.999, "AdamW beta2")
    adam_eps: float = opt(1e-8, "AdamW epsilon")
    clip_grad: float = opt(1.0, "global gradient-norm clip; 0 disables")


@dataclasses.dataclass(frozen=True)
class ScheduleConfig:
    micro_batch_size: int = opt(4, "per-rank micro-batch", unit="samples", result=False)
    global_batch_size: Optional[int] = opt(None, "samples per optimizer step (default: "
                                           "micro-batch x data-parallel size)",
                                           unit="samples", resume=True)
    global_batch_tokens: Optional[int] = opt(None, "sets --global-batch-size in tokens (a "
                                             "whole number of samples)", unit="tokens",
                                             resume=True)
    train_iters: Optional[int] = opt(None, "optimizer steps (or give --train-tokens)",
                                     unit="iterations")
    train_tokens: Optional[int] = opt(None, "training length, a whole number of global "
                                      "batches", unit="tokens")
    lr_decay_style: str = opt("constant", "LR after warmup", choices=LR_DECAY_STYLES,
                              resume=True)
    lr_warmup_samples: int = opt(0, "linear LR warmup", unit="samples", resume=True)
    lr_wsd_decay_fraction: float = opt(0.2, "wsd: fraction of the run spent decaying",
                                       unit="fraction of samples")
    eval_cooldown_fraction: float = opt(0.0, "> 0: take each intermediate validation through "
                                        "a cooldown branch (LR falls linearly to --min-lr over "
                                        "this fraction of the branch), then continue from "
                                        "before it; use with --lr-decay-style wsd",
                                        unit="fraction of samples")
    seed: int = opt(1234, "initialisation and training noise", resume=True)
    eval_interval: int = opt(50, "validate every N iterations", unit="iterations")
    eval_samples: int = opt(64, "fixed held-out set size", unit="samples", resume=True)
    eval_micro_batch_size: Optional[int] = opt(
        None, "validation batch per rank (default: --micro-batch-size x pipeline size, "
        "so each pipeline micro-batch holds training's activations)", unit="samples",
        result=False)
    eval_seed: int = opt(0, "noise of the deterministic validation examples", resume=True)


@dataclasses.dataclass(frozen=True)
class ParallelConfig:
    """Each degree lives here only; data-parallel size is what remains of the world. None
    changes what a run computes (the layouts are equivalent), so `result=False`."""

    tensor_model_parallel_size: int = opt(1, "tensor-parallel degree (within a node)",
                                          result=False)
    pipeline_model_parallel_size: int = opt(1, "pipeline stages", result=False)
    num_layers_per_virtual_pipeline_stage: Optional[int] = opt(
        None, "layers per model chunk: sets the interleaved 1F1B schedule", unit="layers",
        result=False)
    context_parallel_size: int = opt(1, "context-parallel degree (splits video tokens)",
                                     result=False)
    cp_comm_type: Optional[str] = opt(
        None, "CP flavour: ring (p2p), Ulysses (a2a) or Ulysses inside ring (a2a+p2p) "
        "(default: a2a when the heads per TP rank divide over CP, else a2a+p2p, else p2p)",
        choices=CP_COMM_TYPES, result=False)
    cp_backend: str = opt("native", "core attention under CP: ours (fused SDPA kernels) or "
                          "TransformerEngine's (te: GPU, TE installed)", choices=CP_BACKENDS,
                          result=False)
    ulysses_size: Optional[int] = opt(None, "Ulysses degree of a2a+p2p (default: the largest "
                                      "that divides heads and CP)", result=False)
    sequence_parallel: bool = opt(False, "shard activations over TP between blocks",
                                   result=False)
    recompute_granularity: Optional[str] = opt(None, "activation recomputation (default: "
                                               "none)", choices=RECOMPUTE_GRANULARITIES,
                                               result=False)
    zero_stage: int = opt(2, "FSDP2 over DP x CP: 1 = distributed optimizer (params and fp32 "
                          "grads kept over a step's micro-batches), 2 = grads sharded too, "
                          "3 = params sharded too (see docs/parallelism.md)",
                          choices=ZERO_STAGES, result=False)


@dataclasses.dataclass(frozen=True)
class CheckpointConfig:
    save: Optional[str] = opt(None, "checkpoint directory (default: RUN_DIR/checkpoints)",
                              result=False)
    load: Optional[str] = opt(None, "resume from the latest checkpoint here; empty or absent "
                              "starts fresh with a warning", result=False)
    save_interval: Optional[int] = opt(None, "checkpoint every N iterations (also resumes "
                                       "from --save)", unit="iterations", result=False)
    save_keep: int = opt(2, "checkpoints kept", result=False)
    exit_on_missing_checkpoint: bool = opt(False, "make an empty or absent --load an error",
                                           result=False)
    async_save: bool = opt(False, "write checkpoints in a background thread (DCP async "
                           "save; shards staged to CPU memory first): training goes on while "
                           "the files are written, and the checkpoint becomes `latest` once "
                           "every rank has finished (checked at log intervals)", result=False)
    exit_signal_handler: bool = opt(False, "on SIGTERM (sbatch --signal=TERM@s, scontrol "
                                    "requeue, preemption) save a checkpoint and exit with 4; "
                                    "resumes from --save (training/preemption.py)", result=False)


@dataclasses.dataclass(frozen=True)
class LoggingConfig:
    run_dir: str = opt("runs/default", "output directory (run.json, metrics.jsonl, loss.png)",
                       result=False)
    overwrite: bool = opt(False, "replace a finished run in --run-dir that used another "
                          "config", result=False)
    log_interval: int = opt(10, "log train loss every N iterations", unit="iterations",
                            result=False)
    wandb_mode: str = opt("offline", "wandb logging", choices=WANDB_MODES, result=False)
    wandb_project: str = opt("megatron_vdit", "wandb project", result=False)


@dataclasses.dataclass(frozen=True)
class JobConfig:
    model: ModelConfig = dataclasses.field(default_factory=ModelConfig)
    data: DataConfig = dataclasses.field(default_factory=DataConfig)
    optimizer: OptimizerConfig = dataclasses.field(default_factory=OptimizerConfig)
    schedule: ScheduleConfig = dataclasses.field(default_factory=ScheduleConfig)
    parallel: ParallelConfig = dataclasses.field(default_factory=ParallelConfig)
    checkpoint: CheckpointConfig = dataclasses.field(default_factory=CheckpointConfig)
    logging: LoggingConfig = dataclasses.field(default_factory=LoggingConfig)

    def flat(self) -> dict[str, Any]:
        """{field name: value}: the flat YAML form (loads back to an equal config)."""
        return {name: getattr(getattr(self, spec.section), name) for name, spec in FIELDS.items()}

    @classmethod
    def from_flat(cls, values: dict[str, Any]) -> "JobConfig":
        unknown = sorted(set(values) - set(FIELDS))
        if unknown:
            raise ValueError(f"unknown config fields {unknown}")
        sections = {name: {} for name in SECTIONS}
        for name, value in values.items():
            sections[FIELDS[name].section][name] = value
        return cls(**{name: SECTIONS[name](**kw) for name, kw in sections.items()})

    def replace(self, **flat) -> "JobConfig":
        """A copy with some fields changed, by flat name (`cfg.replace(lr=2e-3)`)."""
        return JobConfig.from_flat({**self.flat(), **flat})


SECTIONS: dict[str, type] = {f.name: typing.get_type_hints(JobConfig)[f.name]
                             for f in dataclasses.fields(JobConfig)}


@dataclasses.dataclass(frozen=True)
class FieldSpec:
    """One config field: where it lives, its real type and its flag's help."""

    section: str
    name: str
    kind: type
    """int, float, str, bool or tuple (of ints)."""
    optional: bool
    default: Any
    help: str
    unit: str | None
    choices: tuple | None
    resume: bool
    result: bool

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")


def _field_specs() -> dict[str, FieldSpec]:
    specs = {}
    for section, cls in SECTIONS.items():
        hints = typing.get_type_hints(cls)
        for field in dataclasses.fields(cls):
            kind, args = hints[field.name], ()
            optional = (typing.get_origin(kind) is typing.Union
                        and type(None) in typing.get_args(kind))
            if optional:
                (kind,) = [a for a in typing.get_args(kind) if a is not type(None)]
            if typing.get_origin(kind) is tuple:
                kind, args = tuple, typing.get_args(kind)
                assert all(a is int for a in args), f"{field.name}: only int tuples are supported"
            assert kind in (int, float, str, bool, tuple), f"{field.name}: unsupported type {kind}"
            assert field.name not in specs, f"config field {field.name!r} in two sections"
            specs[field.name] = FieldSpec(section, field.name, kind, optional, field.default,
                                          **field.metadata)
    return specs


FIELDS: dict[str, FieldSpec] = _field_specs()


# -- values from text (flags) and from YAML ----------------------------------------------
def parse_bool(text: str) -> bool:
    if text.lower() in ("1", "true", "yes", "on"):
        return True
    if text.lower() in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"not a boolean: {text!r}")


def _exact_int(value) -> int:
    """Reject silent truncation (2.5 -> 2) and bools posing as ints."""
    if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
        raise ValueError(value)
    return int(value)


def _type_name(spec: FieldSpec) -> str:
    return "list of 3 ints" if spec.kind is tuple else spec.kind.__name__


def coerce(spec: FieldSpec, value):
    """A YAML value as the field's type, or a ValueError naming the key."""
    if value is None:
        if spec.optional:
            return None
        raise ValueError(f"key {spec.name!r} may not be null")
    try:
        if spec.kind is tuple:
            if not isinstance(value, (list, tuple)) or len(value) != 3:
                raise TypeError
            return tuple(_exact_int(v) for v in value)
        if spec.kind is bool:
            return value if isinstance(value, bool) else parse_bool(str(value))
        if spec.kind is int:
            return _exact_int(value)
        if spec.kind is float:
            if isinstance(value, bool):
                raise TypeError
            return float(value)  # YAML 1.1 reads 1e-3 as a string; float() parses it
        if isinstance(value, (dict, list)):
            raise TypeError
        return str(value)
    except (TypeError, ValueError, argparse.ArgumentTypeError):
        raise ValueError(f"key {spec.name!r}: {value!r} is not a valid "
                         f"{_type_name(spec)}") from None


# -- the parser --------------------------------------------------------------------------
class ConfigError(ValueError):
    """Bad input found while reading flags or the --config file (exit 2)."""


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, no usage block: the contract for bad input
        raise ConfigError(message)


def _help(spec: FieldSpec) -> str:
    text = spec.help
    if spec.unit:
        text += f" [{spec.unit}]"
    if spec.choices:
        text += f"; choices: {', '.join(map(str, spec.choices))}"
    default = " ".join(map(str, spec.default)) if spec.kind is tuple else spec.default
    if "(default:" not in text:  # some fields explain their default themselves
        text += f" (default: {'unset' if default is None else default})"
    if spec.kind is bool:
        text += "; bare flag = true"
    return text.replace("%", "%%")


_METAVARS = {int: "N", float: "X", str: "STR"}


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog=PROG, usage="%(prog)s [--config PATH] [--dry-run] [FLAG VALUE ...]",
        description="Train a video Cross-DiT. Flags follow Megatron-LM's names; a YAML "
                    "--config (flat field names, or nested by section) sets values that "
                    "flags override.")
    parser.add_argument("--config", metavar="PATH",
                        help="YAML file of config fields, flat or nested by section")
    parser.add_argument("--dry-run", action="store_true",
                        help="build and validate config and layout, print the memory "
                             "estimate, then exit without training")
    parser.add_argument("--world-size", type=int, default=None, metavar="N",
                        help="with --dry-run: the world size to validate for (default: "
                             "$WORLD_SIZE, else TP x PP x CP)")
    groups = {name: parser.add_argument_group(f"{name} section") for name in SECTIONS}
    for spec in FIELDS.values():
        group, kw = groups[spec.section], dict(default=argparse.SUPPRESS, help=_help(spec))
        metavar = ("{" + ",".join(map(str, spec.choices)) + "}"
                   if spec.choices and len(spec.choices) <= 6 else _METAVARS.get(spec.kind))
        if spec.kind is bool:
            group.add_argument(spec.flag, nargs="?", const=True, type=parse_bool,
                               metavar="BOOL", **kw)
        elif spec.kind is tuple:
            group.add_argument(spec.flag, nargs=3, type=int, metavar=("T", "H", "W"), **kw)
        else:
            group.add_argument(spec.flag, type=spec.kind, metavar=metavar, **kw)
    return parser


@dataclasses.dataclass(frozen=True)
class CliArgs:
    """What the command line asks for: the job, and what to do with it."""

    job: JobConfig
    dry_run: bool = False
    world_size: int | None = None


def parse_args(argv: list[str] | None = None) -> CliArgs:
    """YAML (if --config) then flags; raises ConfigError (a ValueError) naming the offender."""
    args = vars(build_parser().parse_args(argv))
    config_path = args.pop("config", None)
    dry_run, world_size = args.pop("dry_run"), args.pop("world_size")
    if world_size is not None and not dry_run:
        raise ConfigError("--world-size applies to --dry-run only; a real launch takes its "
                          "world size from torchrun")
    values = read_config_file(config_path) if config_path else {}
    values.update({k: tuple(v) if FIELDS[k].kind is tuple else v for k, v in args.items()})
    return CliArgs(JobConfig.from_flat(values), dry_run, world_size)


def load_config(argv: list[str] | None = None) -> JobConfig:
    return parse_args(argv).job


def read_config_file(path: str) -> dict[str, Any]:
    """Flat {field: value} from a YAML file (flat, nested by section, or both)."""
    try:
        with open(path) as handle:
            text = handle.read()
    except OSError as err:
        raise ConfigError(f"--config {path}: {err.strerror or err}") from None
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
        raw = yaml.safe_load(text)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark is not None else ""
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise ConfigError(f"--config {path}{where}: YAML syntax error: {problem}") from None
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise ConfigError(f"--config {path}: expected a mapping of config keys, got "
                          f"{type(raw).__name__}")
    values: dict[str, Any] = {}
    for key_node, value_node in root.value:
        key, line = key_node.value, key_node.start_mark.line + 1
        value = raw.get(key)
        if key in SECTIONS and isinstance(value, dict):  # nested; flat `data: DIR` is a field
            for sub_key, sub_value in value_node.value:
                _put(values, path, sub_key.value, sub_key.start_mark.line + 1, value[sub_key.value],
                     section=key)
        else:
            _put(values, path, key, line, value)
    return values


def _put(values: dict, path: str, key: str, line: int, value, section: str | None = None) -> None:
    where = f"--config {path} line {line}"
    spec = FIELDS.get(key)
    if spec is None or (section is not None and spec.section != section):
        place = f" in section {section!r}" if section else ""
        if spec is not None:
            hint = f"it belongs in section {spec.section!r}"
        else:
            close = difflib.get_close_matches(key, list(FIELDS), n=3)
            hint = ((f"did you mean {' or '.join(map(repr, close))}? " if close else "")
                    + "keys are the flags' names with underscores (see --help)")
        raise ConfigError(f"{where}: unknown key {key!r}{place}; {hint}")
    if key in values:
        raise ConfigError(f"{where}: key {key!r} given twice")
    try:
        values[key] = coerce(spec, value)
    except ValueError as err:
        raise ConfigError(f"{where}: {err}") from None
