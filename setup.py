"""megatron_vdit: video diffusion transformers with Megatron-style 3D parallelism and
scaling-law planning.

Install:
  CPU machine:  pip install torch==2.13.0 && pip install -e .[test]
  GPU cluster (NGC PyTorch image): pip install -e .   (the image's torch satisfies the
  range below, so pip keeps it; never let pip replace an NGC torch build).
"""
from setuptools import find_packages, setup

# torch is a range, not a pin: NGC images ship their own build that must be kept.
# 2.9 is the floor (megatron_vdit/torch_floor.py says why and checks it at import):
# FSDP2's set_gradient_divide_factor / set_force_sum_reduction_for_comms and the
# pipeline schedules' eval() first shipped there. ".0a0" admits NGC's pre-release builds
# (NGC 25.12 ships 2.10.0a0+b4e4ee81d3), which a plain ">=2.9" would reject and pip would
# then replace. The Makefile installs the CPU build (2.13.0) first on machines without a GPU.
INSTALL_REQUIRES = [
    "torch>=2.9.0a0",
    "megatron-core==0.16.1",
    "numpy>=1.26",
    "scipy>=1.11",
    "pyyaml>=6.0",
    "tqdm>=4.66",
    "matplotlib>=3.8",
    "wandb>=0.17",
    "webdataset>=0.2.90",
    "av>=12.0",
    "diffusers>=0.32",
    "transformers>=4.46",
    # The sweep's default data: photographs bundled in its wheel (data/natural.py).
    "scikit-image>=0.24",
]

EXTRAS = {
    # pytest-random-order is opt-in (`pytest --random-order`): the default run keeps file order.
    # pytest-xdist: `make test` runs the suite on 2 workers.
    "test": ["pytest>=8.0", "pytest-timeout>=2.3", "pytest-random-order>=1.1",
             "pytest-xdist>=3.5", "scikit-video==1.1.11"],
    # Post-training quantization (megatron_vdit/inference/quantize.py); its tests skip
    # without it. INT8/FP8 fake-quant runs on CPU.
    "quant": ["nvidia-modelopt==0.47.0"],
}

setup(
    name="megatron-vdit",
    version="0.1.0",
    description="Video DiT training with 3D parallelism and scaling-law planning",
    python_requires=">=3.10",
    packages=find_packages(include=["megatron_vdit*", "scaling_laws*"]),
    install_requires=INSTALL_REQUIRES,
    extras_require=EXTRAS,
    entry_points={
        "console_scripts": [
            "vdit-train=megatron_vdit.train:main",
            "vdit-precompute=megatron_vdit.cli.precompute_latents:main",
            "vdit-plan=megatron_vdit.cli.predict_config:main",
            "vdit-sweep=megatron_vdit.cli.sweep:main",
            "vdit-sample=megatron_vdit.cli.sample:main",
        ]
    },
)
