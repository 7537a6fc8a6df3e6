"""Run a small-model sweep over (model size, tokens, learning rate, batch size).

Each grid point is one training run (a subprocess, so one failure cannot take the sweep
down) writing `<out>/<run_id>/run.json`; `python -m scaling_laws fit <out>` consumes the
directory. The sweep is resumable: runs whose record says `completed` or `diverged`
are skipped on a rerun. LR is constant after warmup (the paper's protocol), and
validation runs at `--evals-per-run` evenly spaced token counts, so each run also
contributes intermediate T points through `val_loss_curve`.

    python tools/run_sweep.py --presets cpu-0.13m cpu-0.6m cpu-1.6m \
        --train-tokens 393216 --lrs 3e-4 1e-3 3e-3 --batch-sizes 8 16 32 --out runs/sweep
"""
from __future__ import annotations

import argparse
import itertools
import json
import os
import subprocess
import sys
from pathlib import Path

from tqdm import tqdm


def run_id(preset: str, tokens: int, lr: float, batch: int) -> str:
    return f"{preset}_T{tokens}_lr{lr:g}_B{batch}"


def build_command(args, preset: str, tokens: int, lr: float, batch: int, run_dir: Path) -> list[str]:
    batch_tokens = batch * args.tokens_per_sample
    iters = tokens // batch_tokens
    eval_interval = max(1, iters // args.evals_per_run)
    cmd = [sys.executable, "-m", "megatron_vdit.train", "--config", args.config,
           "--model-size", preset, "--train-tokens", str(tokens), "--lr", f"{lr:g}",
           "--global-batch-size", str(batch), "--micro-batch-size", str(min(batch, args.micro_batch_size)),
           "--lr-decay-style", "constant", "--eval-interval", str(eval_interval),
           "--run-dir", str(run_dir), "--wandb-mode", args.wandb_mode, "--seed", str(args.seed)]
    return cmd + list(args.extra)


def plan(args) -> list[tuple[str, int, float, int]]:
    grid = list(itertools.product(args.presets, args.train_tokens, args.lrs, args.batch_sizes))
    for preset, tokens, _, batch in grid:
        if tokens % (batch * args.tokens_per_sample):
            raise ValueError(f"--train-tokens {tokens} is not a whole number of batches of "
                             f"{batch} samples x {args.tokens_per_sample} tokens ({preset})")
    return grid


def finished(run_dir: Path, cmd: list[str]) -> bool:
    """Done with the same command line (a changed grid point or flag reruns it)."""
    record, used = run_dir / "run.json", run_dir / "command.json"
    return (record.exists() and used.exists() and json.loads(used.read_text()) == cmd[1:]
            and json.loads(record.read_text()).get("status") in ("completed", "diverged"))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="configs/sweep_default.yaml",
                        help="base training config (data, latent shape, eval set)")
    parser.add_argument("--presets", nargs="+", required=True)
    parser.add_argument("--train-tokens", nargs="+", type=int, required=True)
    parser.add_argument("--lrs", nargs="+", type=float, required=True)
    parser.add_argument("--batch-sizes", nargs="+", type=int, required=True, help="in samples")
    parser.add_argument("--tokens-per-sample", type=int, default=192,
                        help="n_ctx of the base config (checked by each run)")
    parser.add_argument("--micro-batch-size", type=int, default=16)
    parser.add_argument("--evals-per-run", type=int, default=4)
    parser.add_argument("--seed", type=int, default=1234)
    parser.add_argument("--wandb-mode", default="disabled")
    parser.add_argument("--out", default="runs/sweep")
    parser.add_argument("--dry-run", action="store_true", help="print the commands only")
    parser.add_argument("--executor", choices=("local", "slurm"), default="local",
                        help="local: one subprocess after another; slurm: one job array, one "
                             "task per grid point (megatron_vdit.sweep.slurm_executor)")
    parser.add_argument("--sbatch-args", default="",
                        help="slurm executor: sbatch flags for every task, e.g. "
                             "'--cpus-per-task=2 --time=60'")
    parser.add_argument("--max-retries", type=int, default=2,
                        help="slurm executor: resubmit a failed task at most this many times")
    parser.add_argument("extra", nargs=argparse.REMAINDER, help="after --: flags for every run")
    args = parser.parse_args(argv)
    args.extra = [a for a in args.extra if a != "--"]
    try:
        grid = plan(args)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    out = Path(args.out)
    if args.executor == "slurm" and not args.dry_run:
        failures = run_on_slurm(args, grid, out)
        return _report(failures, grid, out)
    failures = []
    for preset, tokens, lr, batch in tqdm(grid, desc="sweep", unit="run", disable=args.dry_run):
        run_dir = out / run_id(preset, tokens, lr, batch)
        cmd = build_command(args, preset, tokens, lr, batch, run_dir)
        if args.dry_run:
            print(" ".join(cmd))
            continue
        if finished(run_dir, cmd):
            continue
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "command.json").write_text(json.dumps(cmd[1:]))
        with open(run_dir / "stdout.log", "w") as log:
            proc = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT,
                                  env={**os.environ, "PYTHONUNBUFFERED": "1"})
        if proc.returncode not in (0, 3):  # 3 = diverged, recorded in run.json
            failures.append((run_dir.name, proc.returncode))
    return _report(failures, grid, out)


def run_on_slurm(args, grid, out: Path) -> list[tuple[str, str]]:
    import shlex

    from megatron_vdit.sweep.slurm_executor import Job, run_array
    jobs = []
    for preset, tokens, lr, batch in grid:
        run_dir = out / run_id(preset, tokens, lr, batch)
        cmd = build_command(args, preset, tokens, lr, batch, run_dir)
        if not finished(run_dir, cmd):
            run_dir.mkdir(parents=True, exist_ok=True)
            (run_dir / "command.json").write_text(json.dumps(cmd[1:]))
            jobs.append(Job(cmd, run_dir))
    results = run_array(jobs, max_retries=args.max_retries, sbatch_args=shlex.split(args.sbatch_args),
                        work_dir=out / "slurm")
    return [(r.job.run_dir.name, r.task_ids[-1]) for r in results if r.status == "failed"]


def _report(failures, grid, out: Path) -> int:
    if failures:
        print(f"{len(failures)} runs failed (see their stdout.log): {failures}", file=sys.stderr)
    print(f"sweep: {len(grid)} runs in {out}; fit with: python -m scaling_laws fit {out} "
          f"--out {out}/law.json --plots {out}/plots")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
