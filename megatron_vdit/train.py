"""CLI: `python -m megatron_vdit.train [--config cfg.yaml] [Megatron-LM style flags]`.

Runs as one process or under torchrun (the layout comes from the parallel flags; data
parallel size is what remains of the world size). Writes `<run-dir>/run.json`.
"""
from __future__ import annotations

import sys
import warnings


EXIT_DIVERGED = 3
"""Exit status of a run that stopped on a non-finite loss (its run.json says so);
1 is left to crashes, 2 to configuration errors."""


def main(argv: list[str] | None = None) -> int:
    warnings.filterwarnings("ignore", message=".*Transformer Engine.*")
    warnings.filterwarnings("ignore", message=".*Apex.*")
    from .training.config import load_config
    from .training.loop import Trainer

    try:  # user mistakes surface here, before training: one clear line, no traceback
        trainer = Trainer(load_config(argv))
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    record = trainer.run()
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
