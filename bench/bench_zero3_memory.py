"""ZeRO-3 memory per rank under torchrun, against one process, with the same weights.

  python bench/bench_zero3_memory.py [--ranks 4] [--layers 18] [--hidden 1024]
                                     [--json OUT] [--smoke]

Launches `torchrun --standalone --nproc-per-node N` worlds of this file (gloo, CPU):
1. one process (the reference);
2. N ranks, ZeRO-3 over N data-parallel ranks, the engine as the trainer builds it
   (meta-device model, each rank drawing only its FSDP shard: models/init.py);
3. the same N ranks, but every rank first builds the whole model in memory, as the
   engine did before meta-device init (`VideoDiT` constructed on CPU, then freed).

Each rank trains one step (forward + backward of one sample per rank, the reference
accumulating N microbatches of one sample, so activations are the same; clip; AdamW
with the trainer's settings) and reports its peak resident memory (`ru_maxrss`) and
its resident memory after `init_process_group`, before any model exists (the Python +
torch + megatron floor, which no sharding can divide). The table gives, per world and
for its largest rank: the peak above the floor once the engine is built (the init's
own cost: where the whole-model build shows), the peak over the step, that above the
floor, and that as a fraction of the reference's (0.25 is a perfect quarter at N = 4).

Weights check: before the step every rank computes, per parameter, a position-weighted
float64 sum of its shard (weight of element (i, j) of the full tensor: 1 + ((131 i +
71 j) mod 97) / 97, so a shard drawn at the wrong offset changes it) and the sums are
all-reduced; the largest relative difference to the reference over all parameters is
reported (0 up to float64 summation order).

Default model: 18 layers, hidden 1024, 16 heads, 16 video and 8 text tokens per sample
(about 300M parameters: weights, gradients and two AdamW moments are about 4.8 GB in
one process). `--smoke`: 2 layers, hidden 64, worlds of 1 and 2 ranks (no third row).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import resource
import subprocess
import sys
import tempfile

SMOKE = dict(layers=2, hidden=64, heads=4, ranks=2)
FULL = dict(layers=18, hidden=1024, heads=16, ranks=4)
SEED = 1234


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2 ** 20


def _peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def _config(layers: int, hidden: int, heads: int):
    from megatron_vdit.models.config import VDiTConfig
    return VDiTConfig(num_layers=layers, hidden_size=hidden, num_attention_heads=heads,
                      in_channels=4, latent_frames=1, latent_height=8, latent_width=8,
                      text_hidden_size=64, max_text_tokens=8, timestep_embed_dim=256,
                      use_cpu_initialization=True)


def _fingerprint(engine, groups):
    """{name: position-weighted float64 sum of the full parameter} (collective)."""
    import torch
    import torch.distributed as dist
    from megatron_vdit.parallel.data_parallel import fsdp_local_rows
    assert groups.tp.size() == 1, "pure data parallel: rows are the only split"
    sums = {}
    for name, p in engine.named_parameters():
        local, row0 = fsdp_local_rows(p)
        m = local.detach().double().reshape(local.shape[0], math.prod(p.shape[1:]))
        i = torch.arange(row0, row0 + m.shape[0], dtype=torch.float64)[:, None]
        j = torch.arange(m.shape[1], dtype=torch.float64)[None, :]
        w = 1 + torch.remainder(131 * i + 71 * j, 97) / 97
        sums[name] = (m * w).sum()
    names = sorted(sums)
    flat = torch.stack([sums[n] for n in names])
    dist.all_reduce(flat, group=groups.dp_cp)
    return dict(zip(names, flat.tolist()))


def worker(args) -> None:
    import torch
    import torch.distributed as dist
    from megatron_vdit.parallel.engine import ParallelEngine
    from megatron_vdit.parallel.layout import (ParallelLayout, build_parallel_groups,
                                               init_distributed)
    torch.set_num_threads(1)
    rank, world = init_distributed("gloo")
    floor = _rss_mb()
    cfg = _config(args.layers, args.hidden, args.heads)
    layout = ParallelLayout.from_world_size(world)
    groups = build_parallel_groups(layout)
    if args.full_build:  # what every rank did before meta-device init
        from megatron_vdit.models.vdit import VideoDiT
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(SEED)
            VideoDiT(cfg, groups.tp)  # built in full, then freed: its peak stays
    engine = ParallelEngine(cfg, layout, groups, seed=SEED, zero_stage=3)
    init_peak = _peak_mb()
    prints = _fingerprint(engine, groups)
    params = sum(p.numel() for _, p in engine.named_parameters())  # FSDP: global numel
    opt = torch.optim.AdamW(engine.parameters(), lr=1e-4, foreach=True)
    b = args.ranks if world == 1 else 1  # the reference accumulates N microbatches of 1
    g = torch.Generator().manual_seed(rank)
    x = torch.randn(b, cfg.in_channels, cfg.latent_frames, cfg.latent_height,
                    cfg.latent_width, generator=g)
    text = torch.randn(b, cfg.max_text_tokens, cfg.text_hidden_size, generator=g)
    mask = torch.ones(b, cfg.max_text_tokens, dtype=torch.bool)
    loss = engine.forward_backward(x, torch.rand(b, generator=g) * 1000, text, mask,
                                   torch.randn(x.shape, generator=g),
                                   num_microbatches=b)
    engine.clip_grad_norm_(1.0)
    opt.step()
    out = {"rank": rank, "world": world, "floor_mb": floor, "init_peak_mb": init_peak,
           "peak_mb": _peak_mb(),
           "params": params, "loss": loss, "fingerprint": prints}
    with open(os.path.join(args.out_dir, f"rank{rank}.json"), "w") as f:
        json.dump(out, f)
    dist.barrier()
    dist.destroy_process_group()


def _launch(nproc: int, shape: dict, reference_ranks: int, full_build: bool) -> list[dict]:
    with tempfile.TemporaryDirectory(prefix="zero3_") as out_dir:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone",
               f"--nproc-per-node={nproc}", __file__, "--worker", "--out-dir", out_dir,
               "--layers", str(shape["layers"]), "--hidden", str(shape["hidden"]),
               "--heads", str(shape["heads"]), "--ranks", str(reference_ranks)]
        if full_build:
            cmd.append("--full-build")
        env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
        subprocess.run(cmd, check=True, env=env, stdout=subprocess.DEVNULL)
        return [json.load(open(os.path.join(out_dir, f"rank{r}.json"))) for r in range(nproc)]


def run(shape: dict, baseline: bool = True) -> list[dict]:
    """Rows of the table: reference, ZeRO-3 (meta init), ZeRO-3 after a full build
    (left out when not `baseline`)."""
    n = shape["ranks"]
    worlds = [("1 process", 1, False), (f"ZeRO-3, {n} ranks", n, False)]
    if baseline:
        worlds.append((f"ZeRO-3, {n} ranks, whole model built first", n, True))
    rows, ref = [], None
    for label, nproc, full in worlds:
        ranks = _launch(nproc, shape, n, full)
        peak = max(r["peak_mb"] for r in ranks)
        floor = max(r["floor_mb"] for r in ranks)
        row = {"world": label, "ranks": nproc, "params": ranks[0]["params"],
               "init_above_floor_mb": round(max(r["init_peak_mb"] - r["floor_mb"]
                                                for r in ranks), 1),
               "peak_mb": round(peak, 1), "floor_mb": round(floor, 1),
               "above_floor_mb": round(peak - floor, 1), "loss": ranks[0]["loss"]}
        if ref is None:
            ref = row | {"fingerprint": ranks[0]["fingerprint"]}
        prints = ranks[0]["fingerprint"]
        row["weights_max_rel_diff"] = max(
            abs(prints[k] - v) / max(abs(v), 1e-30) for k, v in ref["fingerprint"].items())
        row["above_floor_vs_single"] = round(row["above_floor_mb"] / ref["above_floor_mb"], 3)
        rows.append(row)
    return rows


def table(rows: list[dict]) -> list[str]:
    lines = ["| world | params | after init, above floor (MB) | peak RSS / rank (MB) "
             "| floor (MB) | peak above floor (MB) | above floor / 1 process "
             "| weights max rel. diff |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['world']} | {r['params'] / 1e6:.1f}M "
                     f"| {r['init_above_floor_mb']:.0f} | {r['peak_mb']:.0f} "
                     f"| {r['floor_mb']:.0f} | {r['above_floor_mb']:.0f} "
                     f"| {r['above_floor_vs_single']:.2f} | {r['weights_max_rel_diff']:.1e} |")
    return lines


def parse_args(argv):
    from megatron_vdit.cli.errors import integer_at_least, output_file
    p = argparse.ArgumentParser(prog="bench_zero3_memory.py", description=__doc__.splitlines()[0])
    p.add_argument("--ranks", type=integer_at_least(2), default=None,
                   help=f"ranks of the ZeRO-3 worlds (default {FULL['ranks']})")
    p.add_argument("--layers", type=integer_at_least(1), default=None)
    p.add_argument("--hidden", type=integer_at_least(8), default=None)
    p.add_argument("--heads", type=integer_at_least(1), default=None)
    p.add_argument("--json", type=output_file, default=None, help="also write the rows here")
    p.add_argument("--smoke", action="store_true", help="tiny model, 1 and 2 ranks")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--full-build", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--out-dir", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    base = SMOKE if args.smoke else FULL
    hidden, heads = args.hidden or base["hidden"], args.heads or base["heads"]
    if hidden % heads:
        p.error(f"--heads {heads} does not divide --hidden {hidden}")
    return args


def main(argv=None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    if args.worker:
        worker(args)
        return
    shape = dict(SMOKE if args.smoke else FULL)
    for key in ("ranks", "layers", "hidden", "heads"):
        if getattr(args, key) is not None:
            shape[key] = getattr(args, key)
    import torch
    from megatron_vdit.utils.machine import run_meta
    meta = run_meta([sys.argv[0], *argv], torch=torch.__version__)
    print(json.dumps(meta))
    rows = run(shape, baseline=not args.smoke)
    print("\n".join(table(rows)))
    if args.json:
        from megatron_vdit.utils.atomic_io import write_json_atomic
        write_json_atomic(args.json, {"meta": meta, "rows": rows})


if __name__ == "__main__":
    main()
