#!/usr/bin/env python
"""Same as ``vdit-plan`` / ``python -m megatron_vdit.cli.predict_config`` (see there).

  python tools/predict_config.py --budget 1e22                    # paper preset
  python tools/predict_config.py --budget 1e21 --law law.json --max-params 5e8 --json
"""
import sys

try:
    from megatron_vdit.cli.predict_config import main
except ModuleNotFoundError as err:  # run from a checkout without `pip install -e .`
    sys.exit(f"predict_config.py: error: {err}; install the package first: pip install -e .")

if __name__ == "__main__":
    sys.exit(main())
