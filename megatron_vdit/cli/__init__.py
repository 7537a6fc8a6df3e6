"""Command lines of the project, runnable from an installed package.

``vdit-precompute`` (``python -m megatron_vdit.cli.precompute_latents``) and
``vdit-plan`` (``python -m megatron_vdit.cli.predict_config``); the scripts in ``tools/``
are thin wrappers over these. ``errors`` holds the error convention every CLI shares
(docs/errors.md). Nothing here imports torch at import time.
"""
