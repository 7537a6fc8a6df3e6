"""A sweep declared in one YAML file: sizes, token budgets, the (lr, batch) grid per size.

Keys (configs/sweep.yaml is the commented default):

    base:            training config keys every run shares (data, latent shape, eval set)
    cooldown_fraction: each point is a run cooled down over this last fraction (0: none)
    evals_per_run:   token counts per run (cooldown branches + the final point)
    seed:            training seed of the grid runs
    noise_seeds:     extra seeds for the centre run of `noise_size` (seed noise)
    grid:            lr_factor (x1.5), batch_factor (x2), lr_points, batch_points (3),
                     bracket_limit (grid points a cell may add beyond an edge)
    prior:           the law the grid is centred on: lr(N) = lr * (N / reference_params)
                     ^ lr_exponent, batch (samples) likewise with batch_exponent
    sizes:           list of {name, preset | [num_layers, hidden_size, heads], train_tokens}
    heldout:         {name, preset | shape, train_tokens}: the size the fit never sees
    fit_resamples:   bootstrap resamples of the fit (1000)
    plan_budget_flops: the budget the planner is asked about with the fitted law
    quick:           overrides applied by --quick (same keys)

`load_spec` validates everything before any run: a bad value is a ValueError naming the
key, as the CLI turns into `run_sweep: error: ...`.
"""
from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import yaml

from ..models.accounting import ModelShape, PRESETS, params_nonembed, preset_shape


@dataclasses.dataclass(frozen=True)
class Size:
    name: str
    num_layers: int
    hidden_size: int
    num_attention_heads: int
    train_tokens: int

    def shape_flags(self) -> list[str]:
        return ["--num-layers", str(self.num_layers), "--hidden-size", str(self.hidden_size),
                "--num-attention-heads", str(self.num_attention_heads)]

    def params_nonembed(self, base: dict) -> int:
        patch = base.get("patch_size", (1, 2, 2))
        shape = ModelShape(self.num_layers, self.hidden_size, self.num_attention_heads,
                           int(base.get("in_channels", 4)), int(math.prod(patch)),
                           int(base.get("text_hidden_size", 64)), int(base.get("max_text_tokens", 32)))
        return params_nonembed(shape)


@dataclasses.dataclass(frozen=True)
class SweepSpec:
    base: dict
    sizes: tuple
    heldout: Size
    cooldown_fraction: float = 0.2
    evals_per_run: int = 4
    seed: int = 1234
    noise_seeds: tuple = (1235, 1236)
    noise_size: str | None = None
    lr_factor: float = 1.5
    batch_factor: int = 2
    lr_points: int = 3
    batch_points: int = 3
    bracket_limit: int = 2
    prior: dict = dataclasses.field(default_factory=dict)
    fit_resamples: int = 1000
    plan_budget_flops: float = 1e15
    source: str = ""

    @property
    def tokens_per_sample(self) -> int:
        pt, ph, pw = self.base.get("patch_size", (1, 2, 2))
        return ((int(self.base["latent_frames"]) // pt) * (int(self.base["latent_height"]) // ph)
                * (int(self.base["latent_width"]) // pw))

    def centre(self, size: Size) -> tuple[float, int]:
        """(lr, batch in samples) the prior law gives this size."""
        p = self.prior
        ratio = size.params_nonembed(self.base) / float(p.get("reference_params", 1e6))
        lr = self.on_lattice(float(p.get("lr", 1e-3)) * ratio ** float(p.get("lr_exponent", 0.0)))
        batch = float(p.get("batch_samples", 16)) * ratio ** float(p.get("batch_exponent", 0.0))
        return lr, max(1, 2 ** round(math.log2(batch)))

    def on_lattice(self, lr: float, steps: int = 0) -> float:
        """The lr level nearest ``lr``, moved ``steps`` levels. Levels are one lattice
        prior.lr * lr_factor^k shared by every size (3 significant figures): the sizes'
        heat maps line up, and a re-centred prior reuses the runs it already has."""
        lr0 = float(self.prior.get("lr", 1e-3))
        k = round(math.log(lr / lr0) / math.log(self.lr_factor)) + steps
        return float(f"{lr0 * self.lr_factor ** k:.3g}")

    def grid(self, size: Size) -> tuple[list[float], list[int]]:
        """The lr and batch levels of a size: log-spaced, centred on the prior."""
        lr, batch = self.centre(size)
        lrs = [self.on_lattice(lr, k - (self.lr_points - 1) // 2) for k in range(self.lr_points)]
        lo = -(self.batch_points // 2)
        batches = [int(batch * self.batch_factor ** (lo + k)) for k in range(self.batch_points)]
        return lrs, [b for b in batches if b >= 1]


def _size(entry, where: str, base_default_tokens=None) -> Size:
    if not isinstance(entry, dict) or "name" not in entry:
        raise ValueError(f"{where}: expected a mapping with name, preset (or shape) and train_tokens")
    if "preset" in entry:
        if str(entry["preset"]).lower() not in PRESETS:
            raise ValueError(f"{where}.preset: unknown preset {entry['preset']!r}; known: "
                             f"{', '.join(PRESETS)}")
        layers, hidden, heads = preset_shape(entry["preset"])
    elif isinstance(entry.get("shape"), list) and len(entry["shape"]) == 3:
        layers, hidden, heads = (int(v) for v in entry["shape"])
    else:
        raise ValueError(f"{where}: give preset: NAME or shape: [num_layers, hidden_size, heads]")
    tokens = entry.get("train_tokens", base_default_tokens)
    if not isinstance(tokens, (int, float)) or tokens < 1:
        raise ValueError(f"{where}.train_tokens: {tokens!r} must be a positive number of tokens")
    if min(layers, hidden, heads) < 1 or hidden % heads:
        raise ValueError(f"{where}.shape: {[layers, hidden, heads]} needs positive numbers and "
                         "hidden_size divisible by heads")
    return Size(str(entry["name"]), layers, hidden, heads, int(tokens))


def _number(raw: dict, key: str, kind, low, high=math.inf, section: str = ""):
    value = raw.get(key)
    if isinstance(value, str):  # YAML reads 1e-3 (no dot) as a string
        try:
            value = float(value)
        except ValueError:
            pass
    if (not isinstance(value, (int, float)) or isinstance(value, bool)
            or not math.isfinite(value) or not low <= value <= high
            or (kind is int and value != int(value))):
        raise ValueError(f"sweep key '{section}{key}': {value!r} must be a {kind.__name__} in "
                         f"[{low:g}, {high:g}]")
    return kind(value)


DEFAULTS = {"cooldown_fraction": 0.2, "evals_per_run": 4, "seed": 1234, "noise_seeds": [1235, 1236],
            "grid": {}, "prior": {}, "fit_resamples": 1000, "plan_budget_flops": 1e15}


def load_spec(path: str | Path, quick: bool = False) -> SweepSpec:
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"--config {path}: no such sweep file")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise ValueError(f"--config {path}: not valid YAML ({err})") from None
    if not isinstance(raw, dict):
        raise ValueError(f"--config {path}: expected a mapping of sweep keys")
    if quick:
        overrides = raw.get("quick") or {}
        raw = {**raw, **{k: v for k, v in overrides.items() if k not in ("base", "grid")},
               "base": {**raw.get("base", {}), **overrides.get("base", {})},
               "grid": {**raw.get("grid", {}), **overrides.get("grid", {})}}
    known = set(DEFAULTS) | {"base", "sizes", "heldout", "quick", "noise_size"}
    unknown = sorted(set(raw) - known)
    if unknown:
        raise ValueError(f"--config {path}: unknown sweep keys {unknown}")
    raw = {**DEFAULTS, **raw}
    if not isinstance(raw.get("base"), dict):
        raise ValueError(f"--config {path}: 'base' must be a mapping of training config keys")
    sizes = raw.get("sizes")
    if not isinstance(sizes, list) or len(sizes) < 2:
        raise ValueError(f"--config {path}: 'sizes' needs at least 2 model sizes to fit a law")
    grid = raw["grid"] if isinstance(raw["grid"], dict) else {}
    seeds = raw["noise_seeds"]
    if not isinstance(seeds, list) or not all(isinstance(s, int) for s in seeds):
        raise ValueError(f"sweep key 'noise_seeds': {seeds!r} must be a list of integers")
    spec = SweepSpec(
        base=dict(raw["base"]),
        sizes=tuple(_size(e, f"sizes[{i}]") for i, e in enumerate(sizes)),
        heldout=_size(raw.get("heldout"), "heldout"),
        cooldown_fraction=_number(raw, "cooldown_fraction", float, 0.0, 0.9),
        evals_per_run=_number(raw, "evals_per_run", int, 1, 64),
        seed=_number(raw, "seed", int, 0), noise_seeds=tuple(seeds),
        noise_size=raw.get("noise_size"),
        lr_factor=_number({**{"lr_factor": 1.5}, **grid}, "lr_factor", float, 1.01, 100, "grid."),
        batch_factor=_number({**{"batch_factor": 2}, **grid}, "batch_factor", int, 2, 16, "grid."),
        lr_points=_number({**{"lr_points": 3}, **grid}, "lr_points", int, 3, 15, "grid."),
        batch_points=_number({**{"batch_points": 3}, **grid}, "batch_points", int, 3, 15, "grid."),
        bracket_limit=_number({**{"bracket_limit": 2}, **grid}, "bracket_limit", int, 0, 10, "grid."),
        prior=dict(raw["prior"] or {}),
        fit_resamples=_number(raw, "fit_resamples", int, 0, 100000),
        plan_budget_flops=_number(raw, "plan_budget_flops", float, 1.0), source=str(path))
    prior_bounds = {"lr": 1e-12, "batch_samples": 1, "reference_params": 1,
                    "lr_exponent": -10, "batch_exponent": -10}
    for key in spec.prior:
        if key not in prior_bounds:
            raise ValueError(f"sweep key 'prior.{key}': unknown; expected {sorted(prior_bounds)}")
        spec.prior[key] = _number(spec.prior, key, float, prior_bounds[key], 1e30, "prior.")
    for key in ("latent_frames", "latent_height", "latent_width"):
        if not isinstance(spec.base.get(key), int) or spec.base[key] < 1:
            raise ValueError(f"--config {path}: base.{key} must be a positive integer")
    names = [s.name for s in spec.sizes] + [spec.heldout.name]
    if len(set(names)) != len(names):
        raise ValueError(f"--config {path}: size names must be distinct, got {names}")
    if spec.noise_size is not None and spec.noise_size not in names[:-1]:
        raise ValueError(f"sweep key 'noise_size': {spec.noise_size!r} is not one of {names[:-1]}")
    return spec
