#!/usr/bin/env python
"""Same as ``vdit-sweep`` / ``python -m megatron_vdit.cli.sweep`` (see there).

  python tools/run_sweep.py --sweep configs/sweep.yaml [--quick] [--out DIR]
  python tools/run_sweep.py --presets cpu-0.13m cpu-0.6m --train-tokens 393216 \\
      --lrs 5e-4 1e-3 --batch-sizes 8 16 --out runs/grid
"""
import sys

try:
    from megatron_vdit.cli.sweep import main
except ModuleNotFoundError as err:  # run from a checkout without `pip install -e .`
    sys.exit(f"run_sweep.py: error: {err}; install the package first: pip install -e .")

if __name__ == "__main__":
    sys.exit(main())
