"""Calibrate the planner's memory model: predicted vs measured per-rank bytes on CPU.

  python -m torch.distributed.run --nproc_per_node 2 bench/bench_memory_model.py [--out F]

For each row of a small grid (layout on two gloo ranks x hidden size x recompute, bf16
compute), rank 0 reports:
- activations per block: the bytes autograd keeps for backward after one sample's
  forward (saved-tensor hooks, each storage once, parameters left out), a 2-block model
  minus a 1-block model, against `memory.block_activation_bytes`;
- model states: the rank's fp32 parameter shards, gradients and AdamW moments after a
  real step (ZeRO-2: all sharded over DP x CP), against `memory.model_state_bytes`
  less the transient unsharded bf16 parameters (not alive after the step).
Prints a markdown table (docs/benchmarks.md, "Memory model calibration").
"""
from __future__ import annotations

import argparse
import itertools
import json
import sys

import torch
import torch.distributed as dist

from megatron_vdit.models import accounting
from megatron_vdit.models.config import VDiTConfig
from megatron_vdit.parallel.activation_memory import saved_activation_bytes
from megatron_vdit.parallel.engine import ParallelEngine
from megatron_vdit.parallel.layout import (ParallelLayout, build_parallel_groups,
                                           init_distributed)
from megatron_vdit.parallel.memory import (COMPUTE_BYTES, block_activation_bytes,
                                           model_state_bytes)

LAYOUTS = {  # name: ParallelLayout kwargs for two ranks
    "DP2": dict(data_parallel_size=2),
    "TP2+SP": dict(tensor_model_parallel_size=2, sequence_parallel=True),
    "CP2 a2a": dict(context_parallel_size=2, cp_comm_type="a2a"),
    "CP2 p2p": dict(context_parallel_size=2, cp_comm_type="p2p"),
}
HIDDEN = (128, 256)
RECOMPUTE = (None, "full")
LATENT = (4, 16, 16)  # patches 1x2x2 -> 256 tokens


def _config(layers: int, hidden: int) -> VDiTConfig:
    f, h, w = LATENT
    return VDiTConfig(num_layers=layers, hidden_size=hidden, num_attention_heads=4,
                      in_channels=4, latent_frames=f, latent_height=h, latent_width=w,
                      text_hidden_size=32, max_text_tokens=8, use_cpu_initialization=True)


def _inputs(cfg: VDiTConfig):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1, cfg.in_channels, *LATENT, generator=g)
    text = torch.randn(1, cfg.max_text_tokens, cfg.text_hidden_size, generator=g)
    return x, torch.tensor([500.0]), text, torch.ones(1, cfg.max_text_tokens, dtype=torch.bool)


def _engine(layout, groups, layers, hidden, recompute):
    return ParallelEngine(_config(layers, hidden), layout, groups, seed=0, zero_stage=2,
                          recompute=recompute, param_dtype=torch.bfloat16,
                          device=torch.device("cpu"))


def saved_bytes(engine) -> int:
    """Bytes autograd keeps after one sample's forward, parameters left out."""
    (model,) = engine.model_chunks
    return saved_activation_bytes(model, lambda: model(*_inputs(engine.config)))


def _local(t: torch.Tensor) -> torch.Tensor:
    return t.to_local() if hasattr(t, "to_local") else t


def state_bytes(engine) -> int:
    opt = torch.optim.AdamW(engine.parameters(), lr=1e-4)
    x, t, text, mask = _inputs(engine.config)
    engine.forward_backward(x, t, text, mask, torch.randn_like(x))
    opt.step()
    total = 0
    for p in engine.parameters():
        tensors = [p, p.grad, *opt.state[p].values()]
        total += sum(_local(v).numel() * _local(v).element_size() for v in tensors
                     if v is not None and v.dim() > 0)
    return total


def measure(name: str, hidden: int, recompute) -> dict:
    layout = ParallelLayout(**LAYOUTS[name])
    groups = build_parallel_groups(layout, "cpu", num_attention_heads=4)
    one, two = (saved_bytes(_engine(layout, groups, n, hidden, recompute)) for n in (1, 2))
    engine = _engine(layout, groups, 2, hidden, recompute)
    states = state_bytes(engine)
    tp, cp, dp = (layout.tensor_model_parallel_size, layout.context_parallel_size,
                  layout.data_parallel_size)
    tokens = LATENT[0] * LATENT[1] * LATENT[2] // 4
    shape = accounting.ModelShape.from_config(engine.config)
    total, replicated = accounting.params_total(shape), accounting.embedding_params(shape)
    local = (total - replicated) / tp + replicated
    predicted_states = (model_state_bytes(total, 2, tp=tp, pp=1, dp=dp, cp=cp, zero_stage=2,
                                          params_replicated=replicated)
                        - COMPUTE_BYTES * local)  # the gathered bf16 copy is transient
    return {"layout": name, "hidden": hidden, "recompute": recompute or "none",
            "act_measured": two - one,
            "act_predicted": block_activation_bytes(tokens / cp, hidden, tp, recompute),
            "states_measured": states, "states_predicted": predicted_states}


def table(rows: list[dict]) -> str:
    out = ["| layout | hidden | recompute | activations/block measured | predicted | error "
           "| states measured | predicted | error |", "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        ea = r["act_predicted"] / r["act_measured"] - 1
        es = r["states_predicted"] / r["states_measured"] - 1
        out.append(f"| {r['layout']} | {r['hidden']} | {r['recompute']} | "
                   f"{r['act_measured']:,} | {r['act_predicted']:,.0f} | {ea:+.1%} | "
                   f"{r['states_measured']:,} | {r['states_predicted']:,.0f} | {es:+.1%} |")
    return "\n".join(out)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=None, help="also write the rows as JSON here")
    parser.add_argument("--layouts", nargs="+", choices=list(LAYOUTS), default=list(LAYOUTS))
    parser.add_argument("--hidden", nargs="+", type=int, default=list(HIDDEN))
    args = parser.parse_args()
    torch.set_num_threads(1)
    rank, world = init_distributed("gloo")
    if world != 2:
        sys.exit("bench_memory_model.py: error: run under torchrun with --nproc_per_node 2")
    rows = [measure(*row) for row in itertools.product(args.layouts, args.hidden, RECOMPUTE)]
    if rank == 0:
        print(table(rows))
        if args.out:
            with open(args.out, "w") as handle:
                json.dump(rows, handle, indent=1)
    dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
