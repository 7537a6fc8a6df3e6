"""megatron_vdit: video diffusion transformers with Megatron-style 3D parallelism.

Importing the package itself needs no torch: `scaling_laws` uses the torch-free
`megatron_vdit.models.accounting`. The torch floor is checked where torch is first
needed, when `megatron_vdit.parallel` or `megatron_vdit.training` is imported.
"""
