"""The training job: config, validation, run directory, data, loop.

`config`, `resolved`, `prepare`, `rundir`, `records`, `checkpoint` and `dry_run` import
no torch: the CLI validates a job with them, then imports `loop` (torch, megatron-core).
"""
