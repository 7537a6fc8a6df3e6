"""The main job: grid -> bracket -> seed noise -> fit -> held-out check -> report -> plan.

Layout of `<out>`: `runs/` (the grid the fit sees), `noise/` (the seed repeats),
`heldout/` (the held-out size), `law.json`, `plots/`, `validation.json`, `report.md`,
`plan.txt`, `sweep_state.json` (grid growth and diverged runs, for the report).
Every stage skips work already done, so rerunning after any interruption (SIGKILL
included) continues: finished runs are skipped, unfinished ones resume from their last
checkpoint.
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tqdm import tqdm

from ..utils.atomic_io import write_text_atomic
from . import grid, heldout
from .jobs import Job, Result
from .spec import SweepSpec


class Progress:
    """One overall bar (runs, with ETA) and one line per finished run."""

    def __init__(self, total: int):
        self.bar = tqdm(total=total, desc="sweep", unit="run", dynamic_ncols=True)
        self.failed, self.diverged = [], []

    def grow(self, extra: int) -> None:
        self.bar.total += extra
        self.bar.refresh()

    def __call__(self, result: Result) -> None:
        rec = result.record or {}
        loss = rec.get("val_loss")
        text = f"{loss:.5f}" if isinstance(loss, float) else "-"
        if result.status == "failed":
            self.failed.append(result.run_id)
        if result.status == "diverged":
            self.diverged.append(result.run_id)
        took = "finished before" if result.status == "skipped" else f"{result.wall_s:.0f}s"
        self.bar.write(f"{result.run_id}: {result.status} val_loss={text} ({took})")
        self.bar.update(1)


def _run(jobs: list[Job], progress: Progress, executor) -> dict:
    return {r.run_id: r for r in executor(jobs, on_result=progress)}


def _losses(results: dict, jobs: list[Job], key) -> dict:
    out = {}
    for job in jobs:
        rec = results[job.run_id].record or {}
        ok = results[job.run_id].status in ("completed", "skipped") and rec.get("status") == "completed"
        out[key(rec)] = rec.get("val_loss") if ok else None
    return out


def run_grid(spec: SweepSpec, out: Path, progress: Progress, executor) -> tuple[dict, list]:
    """All sizes' grids, grown at the edges until each best run is interior (or the limit)."""
    levels = {s.name: spec.grid(s) for s in spec.sizes}
    added = {s.name: {} for s in spec.sizes}
    results, notes = {}, []
    todo = [j for s in spec.sizes for j in grid.size_jobs(spec, out, s, *levels[s.name])]
    while todo:
        results.update(_run(todo, progress, executor))
        todo = []
        for size in spec.sizes:
            lrs, batches = levels[size.name]
            jobs = grid.size_jobs(spec, out, size, lrs, batches)
            losses = _losses(results, jobs, lambda r: (r.get("lr"), r.get("batch_samples")))
            new_lrs, new_b, size_notes = grid.bracket(spec, lrs, batches, losses, added[size.name])
            notes += [f"{size.name}: {n}" for n in size_notes]
            levels[size.name] = (new_lrs, new_b)
            todo += [j for j in grid.size_jobs(spec, out, size, new_lrs, new_b)
                     if j.run_id not in results]
        progress.grow(len(todo))
    return levels, notes


def run_noise(spec: SweepSpec, out: Path, levels: dict, progress: Progress, executor) -> tuple:
    """The noise size's centre run repeated with `noise_seeds`; returns (rel sd, losses)."""
    size = next(s for s in spec.sizes if s.name == spec.noise_size) if spec.noise_size \
        else spec.sizes[len(spec.sizes) // 2]
    lr, batch = spec.centre(size)
    lr = float(f"{lr:.3g}")
    jobs = [grid.make_job(spec, out, "runs", size, lr, batch)]
    jobs += [grid.make_job(spec, out, "noise", size, lr, batch, seed) for seed in spec.noise_seeds]
    progress.grow(len(jobs) - 1)  # the centre run itself is part of the grid
    results = _run(jobs, progress, executor)
    losses = [(results[j.run_id].record or {}).get("val_loss") for j in jobs]
    return heldout.seed_noise_rel(losses), losses


def fit(spec: SweepSpec, out: Path, resamples: int) -> tuple[int, dict | None, str]:
    """`python -m scaling_laws fit` on runs/; returns (exit code, law or None, its output)."""
    cmd = [sys.executable, "-m", "scaling_laws", "fit", str(out / "runs"), "--out",
           str(out / "law.json"), "--plots", str(out / "plots"), "--resamples", str(resamples)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    text = proc.stdout + proc.stderr
    write_text_atomic(out / "fit.log", text)
    law = json.loads((out / "law.json").read_text()) if (out / "law.json").exists() else None
    return proc.returncode, law, text


def law_verdict(rc: int, law: dict | None, fit_text: str) -> tuple[bool, list[str]]:
    """Usable? The fit's own gates decide (`usable`, `unusable_reasons`, exit code)."""
    if law is None or rc != 0:
        last = [line for line in fit_text.strip().splitlines() if line.strip()][-1:] or ["no output"]
        reasons = list((law or {}).get("unusable_reasons") or []) or last
        return False, reasons
    if law.get("usable") is False:
        return False, list(law.get("unusable_reasons") or ["marked unusable by the fit"])
    return True, []


def run_heldout(spec: SweepSpec, out: Path, law: dict | None, usable: bool, reasons: list,
                noise: float | None, progress: Progress, executor) -> dict:
    size = spec.heldout
    params = size.params_nonembed(spec.base)
    predicted, records = None, []
    if usable:
        predicted = heldout.predicted_setting(law, params, size.train_tokens, spec.tokens_per_sample)
        points = heldout.neighbours(predicted["lr"], predicted["batch_samples"], spec.lr_factor,
                                    spec.batch_factor)
        jobs = [grid.make_job(spec, out, "heldout", size, lr, b) for lr, b in points]
        progress.grow(len(jobs))
        results = _run(jobs, progress, executor)
        records = [results[j.run_id].record or {"run_id": j.run_id, "status": "failed"} for j in jobs]
    return heldout.validation_record(
        params=params, tokens=grid.run_tokens(spec, size, predicted["batch_samples"])
        if predicted else size.train_tokens, predicted=predicted, runs=records,
        lr_factor=spec.lr_factor, batch_factor=spec.batch_factor, noise=noise,
        law_usable=usable, reasons=reasons)


def plan(out: Path, law_usable: bool, budget: float) -> str:
    if not law_usable:
        text = "no plan: the fitted law is not usable (see validation.json unusable_reasons)\n"
    else:
        proc = subprocess.run([sys.executable, "tools/predict_config.py", "--budget", f"{budget:g}",
                               "--law", str(out / "law.json")], capture_output=True, text=True,
                              cwd=Path(__file__).resolve().parents[2])
        text = proc.stdout + proc.stderr
    write_text_atomic(out / "plan.txt", text)
    return text
