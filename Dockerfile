# GPU image for clusters: NGC PyTorch (CUDA, cuDNN, NCCL, TransformerEngine, and a torch
# build NVIDIA tuned). We install this package on top WITHOUT touching that torch:
# setup.py asks for torch>=2.9.0a0; NGC 25.12 carries torch 2.10.0a0+b4e4ee81d3 (CUDA 13.1,
# so the host needs a driver for CUDA 13), and NGC's pip constraint file pins it. Build: docker build -t megatron-vdit .
# Run:   docker run --gpus all --ipc=host -v $PWD/runs:/workspace/megatron_vdit/runs \
#          megatron-vdit torchrun --nproc_per_node 8 -m megatron_vdit.train --config ...
FROM nvcr.io/nvidia/pytorch:25.12-py3

ENV PYTHONUNBUFFERED=1 \
    WANDB_MODE=offline
WORKDIR /workspace/megatron_vdit

# Dependencies first (cached layer), then the source.
COPY setup.py README.md ./
RUN mkdir -p megatron_vdit scaling_laws && touch megatron_vdit/__init__.py scaling_laws/__init__.py \
 && python -c "import torch; print('keeping NGC torch', torch.__version__)" \
 && pip install --no-cache-dir -e '.[test]' \
 && python -c "import torch; print('torch still', torch.__version__)"

COPY . .
RUN pip install --no-cache-dir --no-deps -e .

CMD ["python", "-m", "megatron_vdit.train", "--help"]
