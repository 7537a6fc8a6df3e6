"""Sequence-length scaling with context parallelism on gloo/CPU: time, memory, bytes moved.

  python bench/bench_cp_scaling.py [--ranks 1 2 4] [--tokens 128 256 512]
                                   [--comm a2a p2p] [--dtype fp32|bf16] [--repeats 5]
                                   [--json OUT] [--smoke]

For every CP size (one gloo world of that many ranks, CP = world size, forked here),
CP flavour (`a2a` Ulysses, `p2p` ring) and tokens per sample (more latent frames), a
model of 2 layers, hidden 128, 4 heads (`--smoke`: hidden 64, 32 and 64 tokens, CP 1
and 2) in float32 or bf16 compute, trained through `ParallelEngine` (FSDP2 over the CP
ranks, ZeRO-2) on one sample, reports per rank:
- step time: `forward_backward`, median of `--repeats` after one warm-up step;
- saved activations: bytes autograd keeps for backward after the forward
  (`parallel/activation_memory.saved_activation_bytes`: each storage once, parameters
  left out), for the whole model and per block (the 2-layer model minus a 1-layer one);
  x CP against CP = 1 at the same length (1.0 when memory falls exactly as 1/CP);
- bytes sent per step by the CP attention (`parallel/context_parallel.py`): its
  `torch.distributed` is replaced, in the ranks only, by a counter that forwards every
  call. Counted is what this rank sends to other ranks: for `all_to_all_single`, the
  input minus the chunk addressed to itself; for `batch_isend_irecv`, every `isend`
  tensor. The model's other collectives (FSDP, gathering the prediction) are not
  counted. The count is compared with the formula of docs/parallelism.md ("Bytes
  moved by context parallelism"), which `planning/step_time.py` charges too.

Step times on gloo/CPU with more ranks than cores measure scheduling, not speed; the
memory and byte columns are exact. Prints a markdown table (docs/benchmarks.md,
"Sequence-length scaling with context parallelism").
"""
from __future__ import annotations

import argparse
import math
import multiprocessing as mp
import os
import platform
import queue
import statistics
import sys
import tempfile
import time
import traceback

import torch
import torch.distributed as dist

from megatron_vdit.cli.errors import integer_at_least, output_file
from megatron_vdit.models.config import VDiTConfig
from megatron_vdit.parallel import context_parallel
from megatron_vdit.parallel.activation_memory import saved_activation_bytes
from megatron_vdit.parallel.engine import ParallelEngine
from megatron_vdit.parallel.layout import ParallelLayout, build_parallel_groups
from megatron_vdit.utils.atomic_io import write_json_atomic
from megatron_vdit.utils.machine import cpu_model, run_meta

# Model shapes: full run and --smoke. Tokens per frame = (height / 2) x (width / 2).
FULL = dict(hidden=128, heads=4, layers=2, height=16, width=16, tokens=(128, 256, 512),
            ranks=(1, 2, 4), repeats=5)
SMOKE = dict(hidden=64, heads=4, layers=2, height=8, width=8, tokens=(32, 64),
             ranks=(1, 2), repeats=2)
TEXT_TOKENS, TEXT_HIDDEN, CHANNELS, BATCH = 8, 32, 4, 1
# --dtype: (compute dtype or None for float32 throughout, its bytes, the ring's
# accumulator bytes: dK/dV accumulate in float32, or the compute dtype when wider).
DTYPES = {"fp32": (None, 4, 4), "bf16": (torch.bfloat16, 2, 4)}
WORLD_TIMEOUT_S = 600
# torch.distributed calls that move data; the counter refuses any it does not count.
_UNCOUNTED_COLLECTIVES = {
    "all_reduce", "all_gather", "all_gather_into_tensor", "all_gather_object", "all_to_all",
    "broadcast", "gather", "reduce", "reduce_scatter", "reduce_scatter_tensor", "scatter",
    "send", "recv"}


class CountingDist:
    """Stands in for `torch.distributed` inside `parallel/context_parallel.py`.

    Forwards everything; counts the bytes this rank sends to other ranks through
    `all_to_all_single` (equal splits: the input less the chunk for itself) and
    `batch_isend_irecv` (each `isend` tensor). The collectives it does not count raise,
    so a new one in the CP code cannot go unmeasured; `isend` / `irecv` themselves are
    handed out unwrapped, as `P2POp` requires (the CP code posts them only in batches).
    """

    def __init__(self):
        self.a2a_sent = 0
        self.p2p_sent = 0

    def __getattr__(self, name):
        if name in _UNCOUNTED_COLLECTIVES:
            raise RuntimeError(f"context_parallel calls torch.distributed.{name}, which "
                               "bench_cp_scaling.CountingDist does not count: add it")
        return getattr(dist, name)

    def all_to_all_single(self, output, input, output_split_sizes=None,
                          input_split_sizes=None, group=None, async_op=False):
        if output_split_sizes is not None or input_split_sizes is not None:
            raise RuntimeError("CountingDist counts equal-split all_to_all_single only; "
                               f"got split sizes {input_split_sizes} / {output_split_sizes}")
        size = dist.get_world_size(group)
        self.a2a_sent += input.nbytes - input.nbytes // size
        return dist.all_to_all_single(output, input, group=group, async_op=async_op)

    def batch_isend_irecv(self, p2p_op_list):
        self.p2p_sent += sum(op.tensor.nbytes for op in p2p_op_list if op.op is dist.isend)
        return dist.batch_isend_irecv(p2p_op_list)


def formula_bytes(comm: str, cp: int, layers: int, tokens: int, hidden: int,
                  elem: int, acc_elem: int) -> int:
    """Bytes one rank sends per training step (docs/parallelism.md, "Bytes moved by
    context parallelism"): X = batch x ceil(tokens / CP) x hidden x elem per layer;
    Ulysses 8 X (CP - 1) / CP, ring 4 X (CP - 1) + 2 CP X acc_elem / elem."""
    if cp == 1:
        return 0
    shard = BATCH * math.ceil(tokens / cp) * hidden * elem
    if comm == "a2a":
        per_layer = 8 * shard * (cp - 1) // cp
    else:
        per_layer = 4 * shard * (cp - 1) + 2 * cp * shard * acc_elem // elem
    return layers * per_layer


def _config(shape: dict, layers: int, tokens: int) -> VDiTConfig:
    per_frame = (shape["height"] // 2) * (shape["width"] // 2)
    if tokens % per_frame:
        raise ValueError(f"--tokens {tokens} is not a multiple of the {per_frame} tokens of "
                         f"one {shape['height']}x{shape['width']} latent frame")
    return VDiTConfig(num_layers=layers, hidden_size=shape["hidden"],
                      num_attention_heads=shape["heads"], in_channels=CHANNELS,
                      latent_frames=tokens // per_frame, latent_height=shape["height"],
                      latent_width=shape["width"], text_hidden_size=TEXT_HIDDEN,
                      max_text_tokens=TEXT_TOKENS, use_cpu_initialization=True)


def _inputs(cfg: VDiTConfig):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(BATCH, cfg.in_channels, cfg.latent_frames, cfg.latent_height,
                    cfg.latent_width, generator=g)
    text = torch.randn(BATCH, cfg.max_text_tokens, cfg.text_hidden_size, generator=g)
    mask = torch.ones(BATCH, cfg.max_text_tokens, dtype=torch.bool)
    return x, torch.full((BATCH,), 500.0), text, mask, torch.randn(x.shape, generator=g)


def _engine(layout, groups, shape, layers, tokens, dtype) -> ParallelEngine:
    return ParallelEngine(_config(shape, layers, tokens), layout, groups, seed=0,
                          param_dtype=DTYPES[dtype][0], device=torch.device("cpu"))


def _saved(layout, groups, shape, layers, tokens, dtype) -> int:
    engine = _engine(layout, groups, shape, layers, tokens, dtype)
    (model,) = engine.model_chunks
    x, t, text, mask, _ = _inputs(engine.config)
    return saved_activation_bytes(model, lambda: model(x, t, text, mask))


def _measure_world(comm: str | None, shape: dict, tokens_list, repeats: int,
                   dtype: str) -> list[dict]:
    """One rank's rows for every length (runs inside a forked gloo rank)."""
    cp = dist.get_world_size()
    layout = ParallelLayout(context_parallel_size=cp, cp_comm_type=comm or "p2p")
    groups = build_parallel_groups(layout, "cpu", num_attention_heads=shape["heads"])
    counter = CountingDist()
    context_parallel.dist = counter  # this forked rank only
    try:
        return [dict(cp=cp, comm=comm if cp > 1 else "-", tokens=tokens,
                     **_measure_length(layout, groups, counter, shape, tokens, repeats,
                                       dtype))
                for tokens in tokens_list]
    finally:
        context_parallel.dist = dist


def _measure_length(layout, groups, counter: CountingDist, shape: dict, tokens: int,
                    repeats: int, dtype: str) -> dict:
    """Step times, saved bytes and bytes sent at one length (inside a rank)."""
    layers = shape["layers"]
    total = _saved(layout, groups, shape, layers, tokens, dtype)
    one_layer = _saved(layout, groups, shape, 1, tokens, dtype)
    engine = _engine(layout, groups, shape, layers, tokens, dtype)
    inputs = _inputs(engine.config)
    counter.a2a_sent = counter.p2p_sent = 0
    engine.forward_backward(*inputs)  # warm-up step, the one whose bytes are counted
    a2a, p2p = counter.a2a_sent, counter.p2p_sent
    times = []
    for _ in range(repeats):
        dist.barrier()
        start = time.perf_counter()
        engine.forward_backward(*inputs)
        times.append(time.perf_counter() - start)
    return dict(step_time_s=statistics.median(times), step_times_s=times,
                saved_total_bytes=total,
                saved_per_block_bytes=(total - one_layer) // (layers - 1),
                a2a_sent_bytes=a2a, p2p_sent_bytes=p2p, sent_bytes=a2a + p2p)


def _rank_main(rank, world, store_path, results, comm, shape, tokens_list, repeats, dtype):
    os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
    torch.set_num_threads(1)
    try:
        store = dist.FileStore(store_path, world)
        dist.init_process_group("gloo", store=store, rank=rank, world_size=world)
        rows = _measure_world(comm, shape, tokens_list, repeats, dtype)
        results.put((rank, "ok", rows))
    except BaseException:  # noqa: BLE001 - reported by the parent with the traceback
        results.put((rank, "error", traceback.format_exc()))
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def run_world(world: int, comm: str | None, shape: dict, tokens_list, repeats: int,
              dtype: str):
    """Fork `world` gloo ranks; return every rank's rows, by rank."""
    ctx = mp.get_context("fork")
    results = ctx.Queue()
    with tempfile.TemporaryDirectory(prefix="bench_cp_") as tmp:
        procs = [ctx.Process(target=_rank_main, daemon=True,
                             args=(r, world, os.path.join(tmp, "store"), results, comm, shape,
                                   tokens_list, repeats, dtype)) for r in range(world)]
        for p in procs:
            p.start()
        by_rank, errors = {}, []
        deadline = time.monotonic() + WORLD_TIMEOUT_S
        try:
            for _ in range(world):
                rank, status, value = results.get(timeout=max(1.0, deadline - time.monotonic()))
                if status == "ok":
                    by_rank[rank] = value
                else:
                    errors.append(f"rank {rank}:\n{value}")
        except queue.Empty:
            errors.append(f"CP{world} {comm}: ranks {sorted(set(range(world)) - set(by_rank))} "
                          f"gave no result within {WORLD_TIMEOUT_S}s")
        for p in procs:
            p.join(5)
            if p.is_alive():
                p.kill()
                p.join()
    if errors:
        raise RuntimeError("bench_cp_scaling: a rank failed\n" + "\n".join(errors))
    return [by_rank[r] for r in range(world)]


def _merge(per_rank: list[list[dict]]) -> list[dict]:
    """Rank 0's step time; the largest memory and byte counts of any rank."""
    rows = []
    for ranks_rows in zip(*per_rank):
        row = dict(ranks_rows[0])
        for key in ("saved_total_bytes", "saved_per_block_bytes", "a2a_sent_bytes",
                    "p2p_sent_bytes", "sent_bytes"):
            row[key] = max(r[key] for r in ranks_rows)
        rows.append(row)
    return rows


def measure(ranks, tokens_list, comms, shape: dict, repeats: int, dtype: str) -> list[dict]:
    """All rows, with the formula and the memory-vs-CP=1 columns filled in."""
    rows = []
    for cp in ranks:
        for comm in (comms if cp > 1 else [None]):
            rows += _merge(run_world(cp, comm, shape, tokens_list, repeats, dtype))
    _, elem, acc_elem = DTYPES[dtype]
    base = {r["tokens"]: r for r in rows if r["cp"] == 1}
    for r in rows:
        args = (r["cp"], shape["layers"], r["tokens"], shape["hidden"])
        r["formula_bytes"] = formula_bytes(r["comm"], *args, elem=elem, acc_elem=acc_elem)
        r["bytes_ratio"] = r["sent_bytes"] / r["formula_bytes"] if r["formula_bytes"] else None
        one = base.get(r["tokens"])
        r["total_x_cp_vs_cp1"] = (r["saved_total_bytes"] * r["cp"] / one["saved_total_bytes"]
                                  if one else None)
        r["block_x_cp_vs_cp1"] = (r["saved_per_block_bytes"] * r["cp"]
                                  / one["saved_per_block_bytes"] if one else None)
    return rows


def _fmt(value, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def table(rows: list[dict]) -> str:
    out = ["| CP | comm | tokens | step ms (median) | saved/rank, model | x CP / CP1 "
           "| saved/rank, per block | x CP / CP1 | sent bytes/rank/step | formula | measured "
           "/ formula |",
           "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        out.append(
            f"| {r['cp']} | {r['comm']} | {r['tokens']} | {r['step_time_s'] * 1e3:.1f} | "
            f"{r['saved_total_bytes']:,} | {_fmt(r['total_x_cp_vs_cp1'], '.3f')} | "
            f"{r['saved_per_block_bytes']:,} | {_fmt(r['block_x_cp_vs_cp1'], '.3f')} | "
            f"{r['sent_bytes']:,} | {r['formula_bytes']:,} | {_fmt(r['bytes_ratio'], '.4f')} |")
    return "\n".join(out)


def _machine() -> str:
    return f"{cpu_model()}, {os.cpu_count()} CPUs, {platform.system()} {platform.release()}"


def parse_args(argv=None):
    """Flags checked before any world is forked (bad values: exit 2, one line)."""
    parser = argparse.ArgumentParser(prog=os.path.basename(__file__),
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--ranks", nargs="+", type=integer_at_least(1),
                        help="CP sizes (world sizes)")
    parser.add_argument("--tokens", nargs="+", type=integer_at_least(1),
                        help="video tokens per sample")
    parser.add_argument("--comm", nargs="+", choices=("a2a", "p2p"), default=["a2a", "p2p"])
    parser.add_argument("--repeats", type=integer_at_least(1),
                        help="timed steps per configuration")
    parser.add_argument("--dtype", choices=list(DTYPES), default="fp32",
                        help="compute dtype (bf16: FSDP2 mixed precision, fp32 master weights)")
    parser.add_argument("--json", type=output_file,
                        help="also write the rows and the run's metadata here")
    parser.add_argument("--smoke", action="store_true",
                        help="tiny model and sequences, CP 1 and 2 (a few seconds)")
    args = parser.parse_args(argv)
    shape = dict(SMOKE if args.smoke else FULL)
    args.ranks = args.ranks or list(shape["ranks"])
    args.tokens = args.tokens or list(shape["tokens"])
    args.repeats = args.repeats or shape["repeats"]
    for cp in args.ranks:
        if shape["heads"] % cp and "a2a" in args.comm:
            parser.error(f"--ranks {cp}: Ulysses needs CP to divide the {shape['heads']} heads")
    for tokens in args.tokens:
        try:
            _config(shape, shape["layers"], tokens)
        except ValueError as exc:
            parser.error(str(exc))
    if dist.is_initialized():
        parser.error("run as a plain process: it forks its own gloo worlds")
    return args, shape


def main(argv=None) -> int:
    args, shape = parse_args(argv)
    rows = measure(args.ranks, args.tokens, args.comm, shape, args.repeats, args.dtype)
    print(table(rows))
    if args.json:
        meta = dict(run_meta([os.path.relpath(sys.argv[0])] + (argv or sys.argv[1:]),
                             torch=torch.__version__),
                    machine=_machine(), shape=shape, dtype=args.dtype, batch=BATCH, text_tokens=TEXT_TOKENS)
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        write_json_atomic(args.json, dict(meta, rows=rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
