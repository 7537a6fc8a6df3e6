"""From a sweep spec to training jobs, and the bracketing rule that grows a grid.

Every run is `python -m megatron_vdit.train` on the spec's base config (written once to
`<out>/base-<hash>.yaml`, so a changed base is a new run) plus its grid point. Runs use
a `wsd` schedule cooled down over the last `cooldown_fraction`, and take their
intermediate validations through cooldown branches (`--eval-cooldown-fraction`), so one
run gives `evals_per_run` token counts that are each a cooled-down run. They checkpoint
four times, so a rerun resumes instead of restarting.
"""
from __future__ import annotations

import hashlib
import math
import sys
from pathlib import Path

import yaml

from ..utils.atomic_io import write_text_atomic
from .jobs import Job
from .spec import Size, SweepSpec

SAVES_PER_RUN = 4


def base_config_path(spec: SweepSpec, out: Path) -> Path:
    text = yaml.safe_dump(spec.base, sort_keys=True)
    path = out / f"base-{hashlib.sha1(text.encode()).hexdigest()[:8]}.yaml"
    if not path.exists():
        out.mkdir(parents=True, exist_ok=True)
        write_text_atomic(path, text)
    return path


def run_tokens(spec: SweepSpec, size: Size, batch: int) -> int:
    """The size's budget in whole batches (rounded down)."""
    batch_tokens = batch * spec.tokens_per_sample
    return max(1, size.train_tokens // batch_tokens) * batch_tokens


def run_id(size: Size, tokens: int, lr: float, batch: int, seed: int | None = None) -> str:
    rid = f"{size.name}_T{tokens}_lr{lr:g}_B{batch}"
    return rid if seed is None else f"{rid}_seed{seed}"


def make_job(spec: SweepSpec, out: Path, group: str, size: Size, lr: float, batch: int,
             seed: int | None = None) -> Job:
    tokens = run_tokens(spec, size, batch)
    iters = tokens // (batch * spec.tokens_per_sample)
    f = spec.cooldown_fraction
    stable = iters * (1 - f)
    eval_interval = max(1, math.floor(stable / spec.evals_per_run)) if f else \
        max(1, iters // spec.evals_per_run)
    rid = run_id(size, tokens, lr, batch, seed)
    run_dir = out / group / rid
    micro = min(batch, int(spec.base.get("micro_batch_size", 16)))
    while batch % micro:
        micro -= 1
    argv = [sys.executable, "-m", "megatron_vdit.train", "--config",
            str(base_config_path(spec, out)), *size.shape_flags(), "--train-tokens", str(tokens),
            "--lr", f"{lr:g}", "--global-batch-size", str(batch), "--micro-batch-size", str(micro),
            "--eval-interval", str(eval_interval), "--save-interval",
            str(max(1, iters // SAVES_PER_RUN)), "--save-keep", "1", "--run-dir", str(run_dir),
            "--seed", str(spec.seed if seed is None else seed), "--wandb-mode", "disabled"]
    if spec.base.get("data") == "natural":
        argv += ["--natural-cache-dir", str(out / "data_cache")]   # rendered once per sweep
    if f:
        argv += ["--lr-decay-style", "wsd", "--lr-wsd-decay-fraction", f"{f:g}",
                 "--eval-cooldown-fraction", f"{f:g}"]
    else:
        argv += ["--lr-decay-style", "constant"]
    return Job(rid, tuple(argv), run_dir)


def size_jobs(spec: SweepSpec, out: Path, size: Size, lrs, batches) -> list[Job]:
    return [make_job(spec, out, "runs", size, lr, b) for lr in lrs for b in batches]


def bracket(spec: SweepSpec, lrs: list, batches: list, results: dict, added: dict) -> tuple:
    """Grow a size's grid when its best run sits on an edge; returns (lrs, batches, notes).

    `results` maps (lr, batch) -> final val loss of the size's finished runs; `added`
    counts points already added per edge (at most `bracket_limit` each).
    """
    finite = {k: v for k, v in results.items() if v is not None and math.isfinite(v)}
    if not finite:
        return lrs, batches, []
    best_lr, best_b = min(finite, key=finite.get)
    notes = []
    rules = (("lr", lrs, best_lr, lambda x: spec.on_lattice(x, -1),
              lambda x: spec.on_lattice(x, 1)),
             ("batch", batches, best_b, lambda x: x // spec.batch_factor,
              lambda x: x * spec.batch_factor))
    new = {"lr": list(lrs), "batch": list(batches)}
    for axis, levels, best, down, up in rules:
        for edge, value, step in (("low", min(levels), down), ("high", max(levels), up)):
            key = f"{axis}_{edge}"
            if best != value:
                continue
            if added.get(key, 0) >= spec.bracket_limit:
                notes.append(f"best {axis} {best:g} still on the {edge} edge after "
                             f"{spec.bracket_limit} added points (bracket_limit): optimum not bracketed")
                continue
            nxt = step(value)
            if axis == "batch" and nxt < 1:
                notes.append(f"best batch {best} on the low edge: no smaller batch exists")
                continue
            added[key] = added.get(key, 0) + 1
            new[axis].append(nxt)
            notes.append(f"best {axis} {best:g} on the {edge} edge: added {axis} {nxt:g}")
    return sorted(new["lr"]), sorted(new["batch"]), notes
