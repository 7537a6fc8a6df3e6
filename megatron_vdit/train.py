"""CLI: `python -m megatron_vdit.train [--config cfg.yaml] [Megatron-LM style flags]`.

Runs as one process or under torchrun (the layout comes from the parallel flags; data
parallel size is what remains of the world size). Writes `<run-dir>/run.json`.
`--dry-run` validates the config and layout and prints the memory estimate, without
process groups, model or data.

Everything that needs no torch is checked first (flags, YAML, values, layout, run dir,
checkpoints, paths, manifest and shards: `training.prepare`); torch and megatron-core
are imported after that, so bad input is refused in a fraction of a second.

Exit status: 0 success, 1 crash, 2 bad input (flag, config file, data), 3 a run that
diverged on its own (its run.json says so). Bad input is one line `<prog>: error: ...`;
set VDIT_DEBUG=1 to see the traceback too.
"""
from __future__ import annotations

import os
import sys
import warnings

EXIT_BAD_INPUT = 2
EXIT_DIVERGED = 3
"""Exit status of a run that stopped on a non-finite loss (its run.json says so);
1 is left to crashes, 2 to bad input."""


def _fail(err: Exception, every_rank: bool = False) -> int:
    from .training.config import PROG
    if os.environ.get("VDIT_DEBUG"):
        import traceback
        traceback.print_exception(err)
    # Config errors are the same on every rank: one line, not one per rank.
    if every_rank or os.environ.get("RANK", "0") == "0":
        print(f"{PROG}: error: {err}", file=sys.stderr)
    return EXIT_BAD_INPUT


def main(argv: list[str] | None = None) -> int:
    warnings.filterwarnings("ignore", message=".*Transformer Engine.*")
    warnings.filterwarnings("ignore", message=".*Apex.*")
    from .data.shard_format import DataError
    from .training.config import parse_args

    try:  # user mistakes surface here, before training: one clear line, no traceback
        args = parse_args(argv)
        if args.dry_run:
            from .training.dry_run import dry_run
            print(dry_run(args.job, args.world_size))
            return 0
        from .training.prepare import prepare
        prepared = prepare(args.job)
        if prepared.start.finished_record is not None:
            record = prepared.start.finished_record
            print(f"{args.job.logging.run_dir} already holds this run (status "
                  f"{record.get('status')}); nothing to do")
            return 0 if record.get("status") == "completed" else EXIT_DIVERGED
        from .training.loop import Trainer  # torch and megatron-core: only for a valid job
        trainer = Trainer(prepared)
    except DataError as err:
        return _fail(err, every_rank=True)
    except ValueError as err:
        return _fail(err)
    try:
        record = trainer.run()
    except DataError as err:  # found while reading: bad data, not a diverged run
        return _fail(err, every_rank=True)
    import torch.distributed as dist
    if dist.get_rank() == 0:
        print(f"run {record['run_id']}: status={record['status']} "
              f"val_loss={record['val_loss']} (step 0: {record['val_loss_curve'][0]['val_loss']:.6f}) "
              f"train_tokens={record['train_tokens']} flops={record['flops']:.3e} "
              f"tokens/s={record['throughput']['tokens_per_s']:.0f} "
              f"GFLOP/s(paper)={record['throughput']['gflops_per_s_paper']:.2f}")
    dist.destroy_process_group()
    return 0 if record["status"] == "completed" else EXIT_DIVERGED


if __name__ == "__main__":
    sys.exit(main())
