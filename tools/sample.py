#!/usr/bin/env python
"""Same as ``vdit-sample`` / ``python -m megatron_vdit.cli.sample`` (see there).

  python tools/sample.py --run-dir runs/default --prompt "a red square moving right" \\
      --out samples/red.mp4 --num-steps 50 --sampler ddim --guidance-scale 3 --seed 0
  torchrun --nproc-per-node 2 tools/sample.py ... --tensor-model-parallel-size 2
"""
import sys

try:
    from megatron_vdit.cli.sample import main
except ModuleNotFoundError as err:  # run from a checkout without `pip install -e .`
    sys.exit(f"sample.py: error: {err}; install the package first: pip install -e .")

if __name__ == "__main__":
    sys.exit(main())
