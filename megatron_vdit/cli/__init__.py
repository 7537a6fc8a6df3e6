"""Command lines of the project, runnable from an installed package.

``vdit-precompute`` (``python -m megatron_vdit.cli.precompute_latents``),
``vdit-plan`` (``python -m megatron_vdit.cli.predict_config``), ``vdit-sweep``
(``python -m megatron_vdit.cli.sweep``) and ``vdit-sample`` (``python -m
megatron_vdit.cli.sample``); the scripts in ``tools/`` are thin wrappers over these.
``errors`` holds the error convention every CLI shares (docs/errors.md). Nothing here
imports torch at import time.
"""
