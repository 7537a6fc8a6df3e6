"""Benchmark one training step of the parallel engine: step time, MFU, peak memory.

GPU (the point of the script): a ~1B Cross-DiT (preset 1.07b) at 8k-32k video tokens
per sample in bf16 (fp32 master weights), under any layout:
  torchrun --nproc-per-node=1 bench/bench_gpu_step.py --tokens 8192 16384 32768
  torchrun --nproc-per-node=8 bench/bench_gpu_step.py --tensor-model-parallel-size 2 \
      --context-parallel-size 4 --tokens 32768
CPU (so the script itself is tested): `python bench/bench_gpu_step.py --tiny`.

MFU = model FLOPs per step (`accounting.model_flops_per_sample`, attention scores and
values counted, 3x forward, recompute NOT counted) / step time / (peak FLOP/s x GPUs).
Peak is the dense bf16 number of the detected GPU (`--peak-tflops` overrides). One
JSON line per token count goes to stdout (and `--json-out`, appended) on rank 0.

Shape legend: B batch, C channels, F/H/W latent frames/height/width, X text tokens,
T text width.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import resource
import time
import warnings

import torch

warnings.filterwarnings("ignore")
from megatron_vdit.models import accounting  # noqa: E402
from megatron_vdit.models.config import VDiTConfig  # noqa: E402
from megatron_vdit.parallel.context_parallel import transformer_engine_problem  # noqa: E402
from megatron_vdit.parallel.engine import ParallelEngine  # noqa: E402
from megatron_vdit.parallel.layout import (ParallelLayout, build_parallel_groups,  # noqa: E402
                                           default_cp_comm_type, init_distributed)

# Dense bf16 tensor-core peaks (no sparsity), TFLOP/s per GPU.
PEAK_BF16_TFLOPS = {"H200": 989.0, "H100": 989.0, "A100": 312.0, "L40S": 362.0, "B200": 2250.0}
LATENT_SIDE = 64  # 64x64 latent (512x512 video after an 8x VAE) -> 32x32 tokens per frame


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model-size", default="1.07b", help="accounting preset")
    p.add_argument("--tokens", type=int, nargs="+", default=[8192, 16384, 32768],
                   help="video tokens per sample (multiples of 1024: frames of 32x32 tokens)")
    p.add_argument("--micro-batch-size", type=int, default=1)
    p.add_argument("--num-microbatches", type=int, default=1)
    p.add_argument("--steps", type=int, default=10, help="timed steps")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps first")
    p.add_argument("--fp32", action="store_true", help="no bf16 mixed precision")
    p.add_argument("--recompute-granularity", choices=["selective", "full"], default=None)
    p.add_argument("--zero-stage", type=int, choices=[1, 2, 3], default=2,
                   help="1: distributed optimizer (params + grads kept over microbatches); "
                        "2: grads reduce-scattered per microbatch; 3: params freed after forward")
    p.add_argument("--schedule", choices=["1f1b", "interleaved", "gpipe"], default=None)
    p.add_argument("--tensor-model-parallel-size", type=int, default=1)
    p.add_argument("--pipeline-model-parallel-size", type=int, default=1)
    p.add_argument("--num-layers-per-virtual-pipeline-stage", type=int, default=None)
    p.add_argument("--context-parallel-size", type=int, default=1)
    p.add_argument("--cp-comm-type", choices=["p2p", "a2a", "a2a+p2p"], default=None,
                   help="default: Ulysses (a2a) when the heads per TP rank divide over CP, "
                        "else the hybrid or the ring")
    p.add_argument("--cp-backend", choices=["native", "te"], default="native",
                   help="core attention under CP: ours (SDPA kernels) or TransformerEngine's")
    p.add_argument("--sequence-parallel", action="store_true")
    p.add_argument("--peak-tflops", type=float, default=None, help="override the GPU peak")
    p.add_argument("--tiny", action="store_true", help="CPU-sized model and tokens (for tests)")
    p.add_argument("--json-out", default=None, help="append result lines to this file")
    return p


def parse_args(argv=None) -> argparse.Namespace:
    parser = build_parser()
    args = parser.parse_args(argv)
    problem = transformer_engine_problem() if args.cp_backend == "te" else None
    if problem:
        parser.error(f"--cp-backend te: {problem}")
    return args


def model_config(args, tokens: int) -> VDiTConfig:
    """The benchmarked model: Wan-like latent (16 ch), UMT5-width captions."""
    if args.tiny:  # token grid 2 x 2 x (tokens / 4)
        if tokens % 4:
            raise ValueError(f"--tiny needs --tokens divisible by 4, got {tokens}")
        return VDiTConfig(num_layers=4, hidden_size=64, num_attention_heads=4, in_channels=4,
                          latent_frames=2, latent_height=4, latent_width=tokens // 2,
                          text_hidden_size=32, max_text_tokens=8, timestep_embed_dim=64,
                          use_cpu_initialization=True)
    if tokens % 1024:
        raise ValueError(f"--tokens {tokens} is not a multiple of 1024 (frames of 32x32 tokens)")
    layers, hidden, heads = accounting.preset_shape(args.model_size)
    return VDiTConfig(num_layers=layers, hidden_size=hidden, num_attention_heads=heads,
                      in_channels=16, latent_frames=tokens // 1024, latent_height=LATENT_SIDE,
                      latent_width=LATENT_SIDE, text_hidden_size=4096, max_text_tokens=128,
                      timestep_embed_dim=256, use_cpu_initialization=True)


def peak_flops_per_s(args) -> float | None:
    if args.peak_tflops is not None:
        return args.peak_tflops * 1e12
    if not torch.cuda.is_available():
        return None
    name = torch.cuda.get_device_name()
    for key, tflops in PEAK_BF16_TFLOPS.items():
        if key in name:
            return tflops * 1e12 * (0.5 if args.fp32 else 1.0)  # fp32 runs as tf32 at best
    return None


def make_batch(cfg: VDiTConfig, batch: int, device: torch.device):
    g = torch.Generator().manual_seed(0)
    shape = (batch, cfg.in_channels, cfg.latent_frames, cfg.latent_height, cfg.latent_width)
    x_t_BCFHW = torch.randn(shape, generator=g)
    timesteps_B = torch.rand(batch, generator=g) * 1000
    text_BXT = torch.randn(batch, cfg.max_text_tokens, cfg.text_hidden_size, generator=g)
    text_mask_BX = torch.ones(batch, cfg.max_text_tokens, dtype=torch.bool)
    target_BCFHW = torch.randn(shape, generator=g)
    return tuple(t.to(device) for t in (x_t_BCFHW, timesteps_B, text_BXT, text_mask_BX,
                                         target_BCFHW))


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _peak_memory_gib(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2 ** 30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20  # KiB -> GiB (RSS)


def _sdpa_kernels(device: torch.device) -> str:
    """Which fused SDPA kernels torch may pick here (ring blocks use the same ones)."""
    if device.type != "cuda":
        return "cpu flash"
    enabled = [name for name, on in (("flash", torch.backends.cuda.flash_sdp_enabled()),
                                     ("mem-efficient", torch.backends.cuda.mem_efficient_sdp_enabled()),
                                     ("cudnn", torch.backends.cuda.cudnn_sdp_enabled())) if on]
    return "/".join(enabled) or "math"


def bench_one(args, layout: ParallelLayout, groups, tokens: int) -> dict:
    cfg = model_config(args, tokens)
    bf16 = not args.fp32 and torch.cuda.is_available()
    engine = ParallelEngine(cfg, layout, groups, seed=0, zero_stage=args.zero_stage,
                            recompute=args.recompute_granularity, schedule=args.schedule,
                            param_dtype=torch.bfloat16 if bf16 else None,
                            cp_backend=args.cp_backend)
    device = engine.device
    opt = torch.optim.AdamW(engine.parameters(), lr=1e-4, fused=True)  # as the trainer
    batch_size = args.micro_batch_size * args.num_microbatches
    batch = make_batch(cfg, batch_size, device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    times = []
    for step in range(args.warmup + args.steps):
        _sync(device)
        start = time.perf_counter()
        loss = engine.forward_backward(*batch, num_microbatches=args.num_microbatches)
        engine.clip_grad_norm_(1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        _sync(device)
        if step >= args.warmup:
            times.append(time.perf_counter() - start)
    step_s = sorted(times)[len(times) // 2]  # median: robust to one slow step
    shape = accounting.ModelShape.from_config(cfg)
    global_samples = batch_size * layout.data_parallel_size
    flops = accounting.model_flops_per_sample(shape, cfg.tokens_per_sample) * global_samples
    peak = peak_flops_per_s(args)
    return {
        "model": "tiny" if args.tiny else args.model_size,
        "params_total": accounting.params_total(shape),
        "tokens_per_sample": cfg.tokens_per_sample, "global_batch_samples": global_samples,
        "layout": {"tp": layout.tensor_model_parallel_size, "pp": layout.pipeline_model_parallel_size,
                   "cp": layout.context_parallel_size, "dp": layout.data_parallel_size,
                   "cp_comm_type": layout.cp_comm_type, "sp": layout.sequence_parallel,
                   "vpp_layers": layout.num_layers_per_virtual_pipeline_stage},
        "schedule": engine.schedule_kind, "recompute": args.recompute_granularity,
        "zero_stage": args.zero_stage, "dtype": "bf16" if bf16 else "fp32",
        "attention_backend": ("transformer_engine" if args.cp_backend == "te"
                              else f"sdpa ({_sdpa_kernels(device)})"),
        "step_time_s": step_s, "step_times_s": times, "loss": loss,
        "model_flops_per_step": flops,
        "tokens_per_s": global_samples * cfg.tokens_per_sample / step_s,
        "mfu": None if peak is None else flops / step_s / (peak * layout.world_size),
        "peak_memory_gib": _peak_memory_gib(device),
        "peak_memory_kind": "cuda max_memory_allocated" if device.type == "cuda" else "process max RSS",
        "device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
        "world_size": layout.world_size, "torch": torch.__version__,
    }


def main(argv=None) -> list[dict]:
    args = parse_args(argv)
    if args.tiny:
        args.tokens = [t for t in args.tokens if t <= 64] or [12]
    if torch.cuda.is_available():  # before NCCL init, so each rank binds its own GPU
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    rank, world = init_distributed()
    layout = ParallelLayout.from_world_size(
        world, tensor_model_parallel_size=args.tensor_model_parallel_size,
        pipeline_model_parallel_size=args.pipeline_model_parallel_size,
        context_parallel_size=args.context_parallel_size)
    cfg0 = model_config(args, max(args.tokens))
    cp_comm_type = args.cp_comm_type or default_cp_comm_type(
        cfg0.num_attention_heads, args.tensor_model_parallel_size, args.context_parallel_size)
    layout = dataclasses.replace(
        layout, cp_comm_type=cp_comm_type, sequence_parallel=args.sequence_parallel,
        num_layers_per_virtual_pipeline_stage=args.num_layers_per_virtual_pipeline_stage)
    layout.validate(world, cfg0.num_layers, cfg0.num_attention_heads, cfg0.tokens_per_sample)
    groups = build_parallel_groups(layout, "cuda" if torch.cuda.is_available() else "cpu",
                                   num_attention_heads=cfg0.num_attention_heads)
    results = []
    for tokens in args.tokens:
        result = bench_one(args, layout, groups, tokens)
        results.append(result)
        if rank == 0:
            line = json.dumps(result)
            print(line, flush=True)
            if args.json_out:
                with open(args.json_out, "a") as f:
                    f.write(line + "\n")
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    return results


if __name__ == "__main__":
    main()
