"""Parallelism applied to the model: layout and groups, TP, CP, PP, FSDP2, the engine.

Importing the package needs no torch: `layout` (degrees and their validation) and
`memory` are torch-free, so the training CLI refuses a bad layout before loading torch.
The torch floor (`megatron_vdit.torch_floor`) is checked when `engine` is imported and
when process groups are built (`layout.init_distributed`, `layout.build_parallel_groups`).
"""
