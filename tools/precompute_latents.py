#!/usr/bin/env python
"""Same as ``vdit-precompute`` / ``python -m megatron_vdit.cli.precompute_latents``.

  python tools/precompute_latents.py --input videos/ --output shards/ --frames 9 \
      --height 64 --width 64 --vae-config tiny --text-encoder-config tiny
  torchrun --nproc_per_node 8 tools/precompute_latents.py --input raw-*.tar ...

See ``--help`` and docs/data.md.
"""
import sys

try:
    from megatron_vdit.cli.precompute_latents import main
except ModuleNotFoundError as err:  # run from a checkout without `pip install -e .`
    sys.exit(f"precompute_latents.py: error: {err}; install the package first: "
             "pip install -e .")

if __name__ == "__main__":
    sys.exit(main())
