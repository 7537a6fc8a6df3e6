"""megatron_vdit: video diffusion transformers with Megatron-style 3D parallelism.

Importing the package itself needs no torch: `scaling_laws` uses the torch-free
`megatron_vdit.models.accounting`, and the training CLI validates a job (flags, YAML,
layout, paths, manifest) before importing torch or megatron-core. The torch floor is
checked where the parallel machinery starts (`parallel.engine`, process groups).
"""
