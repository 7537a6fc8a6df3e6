"""Run a small-model sweep over (model size, tokens, learning rate, batch size).

``vdit-sweep`` / ``python -m megatron_vdit.cli.sweep`` / ``python tools/run_sweep.py``.
Two ways to declare it:

  vdit-sweep --sweep configs/sweep.yaml [--quick] [--out DIR]
      the main job: one YAML file declares sizes, budgets and the (lr, batch) grid per
      size; the sweep brackets every optimum, measures seed noise, fits the law, checks
      it on a held-out larger size (validation.json), writes report.md and the plan.

  vdit-sweep --presets cpu-0.13m cpu-0.6m --train-tokens 393216 \\
      --lrs 5e-4 1e-3 --batch-sizes 8 16 --out runs/grid
      a plain grid of runs (constant LR, validation at --evals-per-run token counts),
      no fit; `python -m scaling_laws fit DIR` consumes the directory.

Every run is a subprocess writing `<run_dir>/run.json`. Resumable and SIGKILL-safe: a
rerun skips finished runs and resumes unfinished ones from their last checkpoint.
Exit codes: 0 ok, 1 failed runs, 2 bad input (checked before any run starts).
"""
from __future__ import annotations

import argparse
import functools
import math
import shlex
import sys
from pathlib import Path

from ..sweep import driver, grid
from ..sweep.jobs import Job, Result, is_finished, read_record, write_command
from ..sweep.local_executor import run_jobs
from ..utils.atomic_io import write_json_atomic

PROG = "run_sweep"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=PROG, description=__doc__.splitlines()[0])
    p.add_argument("--sweep", help="sweep YAML (sizes, budgets, grid; see configs/sweep.yaml)")
    p.add_argument("--quick", action="store_true", help="the sweep file's `quick:` overrides")
    p.add_argument("--config", default="configs/sweep_default.yaml",
                   help="plain-grid mode: base training config of every run")
    p.add_argument("--presets", nargs="+", help="plain-grid mode: model size presets")
    p.add_argument("--train-tokens", nargs="+", type=int, help="plain-grid mode: token budgets")
    p.add_argument("--lrs", nargs="+", type=float, help="plain-grid mode: learning rates")
    p.add_argument("--batch-sizes", nargs="+", type=int, help="plain-grid mode: batches, in samples")
    p.add_argument("--tokens-per-sample", type=int, default=192,
                   help="plain-grid mode: n_ctx of the base config (checked by each run)")
    p.add_argument("--micro-batch-size", type=int, default=16, help="plain-grid mode")
    p.add_argument("--evals-per-run", type=int, default=4, help="plain-grid mode")
    p.add_argument("--seed", type=int, default=1234, help="plain-grid mode: training seed")
    p.add_argument("--wandb-mode", default="disabled", choices=("disabled", "offline", "online"))
    p.add_argument("--out", default=None, help="sweep directory (default runs/sweep)")
    p.add_argument("--parallel", type=int, default=2, help="runs at once (2: measured best on 2 cores)")
    p.add_argument("--threads", type=int, default=1, help="intra-op threads per run")
    p.add_argument("--dry-run", action="store_true", help="validate and print the commands only")
    p.add_argument("--executor", choices=("local", "slurm"), default="local",
                   help="local: subprocesses on this machine (--parallel at once); slurm: one "
                        "job array per batch of runs, one task per grid point "
                        "(megatron_vdit.sweep.slurm_executor)")
    p.add_argument("--sbatch-args", default="",
                   help="slurm executor: sbatch flags for every task, e.g. "
                        "'--cpus-per-task=2 --time=60'")
    p.add_argument("--max-retries", type=int, default=2,
                   help="slurm executor: resubmit a failed task at most this many times")
    p.add_argument("extra", nargs=argparse.REMAINDER, help="plain-grid mode, after --: flags for every run")
    return p


def check_job(job: Job) -> None:
    """Resolve a run's training config in-process: a bad base config fails here, not in run 1."""
    from ..training.config import load_config
    from ..training.data import check_data_paths
    from ..training.resolved import model_config, resolve
    try:
        cfg = load_config(list(job.argv[3:]))
    except SystemExit:
        raise ValueError(f"run {job.run_id}: the training CLI rejects its flags "
                         f"{' '.join(job.argv[3:])}") from None
    model_config(cfg, resolve(cfg, 1))
    check_data_paths(cfg)


def _positive(values, flag):
    for v in values or []:
        if not (isinstance(v, (int, float)) and math.isfinite(v) and v > 0):
            raise ValueError(f"{flag} {v}: must be a positive finite number")


def plain_jobs(args) -> list[Job]:
    for flag, values in (("--presets", args.presets), ("--train-tokens", args.train_tokens),
                         ("--lrs", args.lrs), ("--batch-sizes", args.batch_sizes)):
        if not values:
            raise ValueError(f"{flag} is required (or pass --sweep FILE)")
    _positive(args.train_tokens, "--train-tokens")
    _positive(args.lrs, "--lrs")
    _positive(args.batch_sizes, "--batch-sizes")
    for flag, v in (("--tokens-per-sample", args.tokens_per_sample),
                    ("--evals-per-run", args.evals_per_run), ("--micro-batch-size", args.micro_batch_size)):
        if v < 1:
            raise ValueError(f"{flag} {v}: must be >= 1")
    if not Path(args.config).is_file():
        raise ValueError(f"--config {args.config}: no such file")
    from ..models.accounting import preset_shape
    out, jobs = Path(args.out or "runs/sweep"), []
    for preset in args.presets:
        try:
            preset_shape(preset)
        except ValueError as err:
            raise ValueError(f"--presets: {err}") from None
        for tokens in args.train_tokens:
            for lr in args.lrs:
                for batch in args.batch_sizes:
                    if tokens % (batch * args.tokens_per_sample):
                        raise ValueError(f"--train-tokens {tokens} is not a whole number of batches of "
                                         f"{batch} samples x {args.tokens_per_sample} tokens ({preset})")
                    iters = tokens // (batch * args.tokens_per_sample)
                    rid = f"{preset}_T{tokens}_lr{lr:g}_B{batch}"
                    argv = [sys.executable, "-m", "megatron_vdit.train", "--config", args.config,
                            "--model-size", preset, "--train-tokens", str(tokens), "--lr", f"{lr:g}",
                            "--global-batch-size", str(batch), "--micro-batch-size",
                            str(min(batch, args.micro_batch_size)), "--lr-decay-style", "constant",
                            "--eval-interval", str(max(1, iters // args.evals_per_run)),
                            "--save-interval", str(max(1, iters // grid.SAVES_PER_RUN)),
                            "--save-keep", "1", "--run-dir", str(out / rid), "--wandb-mode", args.wandb_mode,
                            "--seed", str(args.seed)] + [a for a in args.extra if a != "--"]
                    jobs.append(Job(rid, tuple(argv), out / rid))
    return jobs


def sweep_first_jobs(spec, out: Path) -> list[Job]:
    """The initial grid, plus one held-out run at the prior (to check its config too)."""
    jobs = [j for s in spec.sizes for j in grid.size_jobs(spec, out, s, *spec.grid(s))]
    lr, batch = spec.centre(spec.heldout)
    return jobs, grid.make_job(spec, out, "heldout", spec.heldout, float(f"{lr:.3g}"), batch)


def main_plain(args, executor) -> int:
    jobs = plain_jobs(args)
    for job in jobs:
        check_job(job)
    if args.dry_run:
        print("\n".join(" ".join(j.argv) for j in jobs))
        return 0
    progress = driver.Progress(len(jobs))
    executor(jobs, on_result=progress)
    progress.bar.close()
    out = args.out or "runs/sweep"
    if progress.failed:
        print(f"{PROG}: {len(progress.failed)} runs failed (see their stdout.log): "
              f"{progress.failed}", file=sys.stderr)
    print(f"sweep: {len(jobs)} runs in {out}; fit with: python -m scaling_laws fit {out} "
          f"--out {out}/law.json --plots {out}/plots")
    return 1 if progress.failed else 0


def main_sweep(args, executor) -> int:
    from ..sweep.report import headline, scaling_checks, write_report
    from ..sweep.spec import load_spec
    spec = load_spec(args.sweep, quick=args.quick)
    out = Path(args.out or ("runs/sweep_quick" if args.quick else "runs/sweep"))
    first, probe = sweep_first_jobs(spec, out)
    for job in first + [probe]:
        check_job(job)
    if args.dry_run:
        print("\n".join(" ".join(j.argv) for j in first))
        return 0
    progress = driver.Progress(len(first))
    levels, notes = driver.run_grid(spec, out, progress, executor)
    noise, noise_losses = driver.run_noise(spec, out, levels, progress, executor)
    rc, law, fit_text = driver.fit(spec, out, spec.fit_resamples)
    usable, reasons = driver.law_verdict(rc, law, fit_text)
    val = driver.run_heldout(spec, out, law, usable, reasons, noise, progress, executor)
    progress.bar.close()
    val["scaling_checks"] = scaling_checks(out, noise)[1]   # loss vs size (in noise sds), tokens
    write_json_atomic(out / "validation.json", val)
    plan_text = driver.plan(out, usable, spec.plan_budget_flops)
    report = write_report(out, spec, levels, notes, progress, val, law, plan_text, noise_losses)
    for note in notes:
        print(f"grid: {note}")
    if progress.failed:
        print(f"{PROG}: {len(progress.failed)} runs failed (see their stdout.log): "
              f"{progress.failed}", file=sys.stderr)
    print(f"report: {report}")
    for line in headline(val, law):
        print(f"  {line}")
    return 1 if progress.failed else 0


def run_on_slurm(jobs, on_result=None, *, max_retries: int = 2, sbatch_args=()) -> list[Result]:
    """The SLURM executor behind the same interface as the local one: finished runs come
    back as "skipped", the rest run as one job array (resubmitted up to `max_retries`)."""
    from ..sweep import slurm_executor
    results, todo = [], []
    for job in jobs:
        if is_finished(job):
            results.append(Result(job.run_id, 0, "skipped", read_record(job.run_dir)))
            if on_result:
                on_result(results[-1])
        else:
            write_command(job)
            todo.append(job)
    if not todo:
        return results
    done = slurm_executor.run_array([slurm_executor.Job(j.argv, j.run_dir) for j in todo],
                                    max_retries=max_retries, sbatch_args=sbatch_args,
                                    work_dir=todo[0].run_dir.parent / "slurm", progress=False)
    for job, res in zip(todo, done):
        code = {"completed": 0, "diverged": 3}.get(res.status, 1)
        results.append(Result(job.run_id, code, res.status, res.record))
        if on_result:
            on_result(results[-1])
    return results


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    args.extra = [a for a in args.extra if a != "--"]
    try:
        if args.parallel < 1 or args.threads < 1:
            raise ValueError(f"--parallel {args.parallel} / --threads {args.threads}: must be >= 1")
        if args.max_retries < 0:
            raise ValueError(f"--max-retries {args.max_retries}: must be >= 0")
        if args.executor == "slurm":
            executor = functools.partial(run_on_slurm, max_retries=args.max_retries,
                                         sbatch_args=tuple(shlex.split(args.sbatch_args)))
        else:
            executor = functools.partial(run_jobs, parallel=args.parallel, threads=args.threads)
        return main_sweep(args, executor) if args.sweep else main_plain(args, executor)
    except ValueError as err:
        print(f"{PROG}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
