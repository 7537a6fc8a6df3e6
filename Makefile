# Quick start:  make sweep   (set up + the main job: sweep, fit, held-out check, report, plan)
#               make test    (set up + run the whole suite)
#               make train   (a quick demo: set up + train the tiny default model)
# GPU cluster: run inside an NGC PyTorch image with VENV_FLAGS=--system-site-packages
# so the image's torch is kept (the install never replaces an importable torch).
PYTHON ?= python3
VENV ?= .venv
VENV_FLAGS ?=
PY := $(VENV)/bin/python
TORCH_CPU_VERSION ?= 2.13.0
PYTEST_ARGS ?=
# The suite runs on both cores of the development box (pytest-xdist); SLURM tests share
# one worker (xdist_group "slurm"). TEST_WORKERS=0 runs it in this process.
TEST_WORKERS ?= 2
SWEEP_ARGS ?=
# test: pytest and friends; quant: nvidia-modelopt (its tests skip without it)
EXTRAS ?= test,quant

.PHONY: venv train test sweep bench clean

venv: $(VENV)/.installed

# Keep an importable torch (NGC images); otherwise take the pinned CPU build, never an
# unpinned (multi-GB CUDA) one.
$(VENV)/.installed: setup.py Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV_FLAGS) $(VENV)
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install -q torch==$(TORCH_CPU_VERSION)
	$(PY) -m pip install -q -e '.[$(EXTRAS)]'
	touch $@

train: venv
	$(PY) -m megatron_vdit.train --config configs/tiny_natural.yaml --run-dir runs/default \
		--save runs/default/checkpoints

test: venv
	$(PY) -m pytest -q -n $(TEST_WORKERS) --dist loadgroup $(PYTEST_ARGS) tests

# The main job on CPU: sweep small models -> fit -> held-out check -> report -> plan.
# SWEEP_ARGS: --quick, --config FILE, --out DIR (see examples/run_sweep.sh).
sweep: venv
	PY=$(PY) bash examples/run_sweep.sh $(SWEEP_ARGS)

bench: venv
	$(PY) bench/cpu_throughput.py

clean:
	rm -rf $(VENV) runs build *.egg-info
