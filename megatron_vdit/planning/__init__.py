"""From a FLOP budget to a launchable flagship run (docs/planning.md).

Pure Python (no torch): `tools/predict_config.py` imports it before any heavy work.
"""
