"""CPU training step of our VideoDiT vs diffusers' WanTransformer3DModel at matched shapes.

For each preset both models get the same depth, width, heads, FFN width, patch size,
latent channels, text width and text length, and are fed the same latent batch. One
step is forward + MSE loss to a random target + backward + AdamW step + zero_grad, in
fp32 on the CPU. Steps are timed in one process, interleaved (ours, diffusers, ours,
...) after warm-up steps, so load changes on a shared machine hit both alike; the
table gives the median and min-max over the repeats.

Peak memory: each model is trained for a few steps in a fresh subprocess that imports
exactly what the timing process imports. Just before the model is built the probe
resets the kernel's peak-RSS mark (writing 5 to /proc/self/clear_refs) and reads its
resident set size; the number reported is the peak RSS after the steps (VmHWM) minus
that, i.e. what the model, its gradients, the AdamW state and the step's activations
add on top of the interpreter and libraries. RSS rather than tracemalloc, because
tracemalloc does not see torch's C++ allocations; the reset, because a plain
getrusage peak would still hold the import's transient peak. The probes run before
the timing, the two of a preset side by side (memory does not depend on speed), with
glibc's mmap threshold fixed at 64 KiB (MALLOC_MMAP_THRESHOLD_): large tensors then
come from mmap and go back on free, so RSS follows live memory; with glibc's default,
adaptive threshold the same probe varied by +-20 MiB from run to run at cpu-16m.

What differs by design (both count it in their parameters): Wan normalises q and k with
one RMSNorm across all heads (weight of width D), ours per head (width D / heads); Wan
embeds patches with a Conv3d, ours with a Linear over the same patch features (same
parameter count); ours masks padded text tokens in cross-attention (an all-ones mask
here), Wan takes no text mask.

Diagnostics: --profile TOP lists the ops whose torch.profiler self CPU time differs most
between the models; --saved TOP counts the bytes autograd saves for backward, by module.

    python bench/bench_vs_diffusers.py [--presets cpu-0.6m cpu-4.7m cpu-16m] [--repeats 15]
        [--profile 8] [--saved 12] [--json OUT]       # --smoke: the test suite's tiny run
"""
from __future__ import annotations

import argparse
import functools
import gc
import json
import os
import statistics
import subprocess
import sys
import time
import warnings

import torch
import torch.nn.functional as F

warnings.filterwarnings("ignore")

import diffusers  # noqa: E402
from diffusers import WanTransformer3DModel  # noqa: E402

from megatron_vdit.cli.errors import output_file  # noqa: E402
from megatron_vdit.models import accounting  # noqa: E402
from megatron_vdit.models.config import VDiTConfig  # noqa: E402
from megatron_vdit.models.vdit import VideoDiT  # noqa: E402
from megatron_vdit.utils.atomic_io import write_json_atomic  # noqa: E402
from megatron_vdit.utils.machine import run_meta  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import NON_NEG_INT, make_batch, model_bench_parser, our_config, stats, tp_group  # noqa: E402

MODELS = ("ours", "diffusers")
SMOKE = {"presets": ["cpu-0.13m"], "latent": [2, 8, 8], "text_len": 8, "batch": 2,
         "repeats": 2, "warmup": 1}
"""--smoke overrides: a 0.13M-parameter model on 32 video tokens, for the test suite."""


def wan_kwargs(cfg: VDiTConfig) -> dict:
    """WanTransformer3DModel's constructor arguments that match `cfg`'s shape."""
    return {"patch_size": (cfg.patch_size_t, cfg.patch_size_h, cfg.patch_size_w),
            "num_attention_heads": cfg.num_attention_heads, "attention_head_dim": cfg.head_dim,
            "in_channels": cfg.in_channels, "out_channels": cfg.in_channels,
            "text_dim": cfg.text_hidden_size, "freq_dim": cfg.timestep_embed_dim,
            "ffn_dim": cfg.ffn_hidden_size, "num_layers": cfg.num_layers,
            "cross_attn_norm": True, "eps": 1e-6}


def built_shape(which: str, model) -> dict:
    """Depth, width, heads, FFN width, patch, channels and text width read back from the
    built modules (not from the configs), so the JSON shows what was really compared."""
    if which == "ours":
        block = model.blocks["0"]
        return {"depth": len(model.blocks), "width": model.patch_embed.out_features,
                "heads": block.self_attention.heads, "ffn": block.mlp.linear_fc1.weight.shape[0],
                "patch": list(model.patch), "in_channels": model.config.in_channels,
                "text_dim": model.caption_projection.fc1.in_features}
    block = model.blocks[0]
    return {"depth": len(model.blocks), "width": block.attn1.inner_dim,
            "heads": block.attn1.heads, "ffn": block.ffn.net[0].proj.out_features,
            "patch": list(model.config.patch_size), "in_channels": model.config.in_channels,
            "text_dim": model.condition_embedder.text_embedder.linear_1.in_features}


def build(which: str, cfg: VDiTConfig):
    """The model `which` ("ours" or "diffusers") at `cfg`'s shape, fp32, seeded."""
    torch.manual_seed(0)
    if which == "ours":
        return VideoDiT(cfg, tp_group())
    if which == "diffusers":
        return WanTransformer3DModel(**wan_kwargs(cfg))
    raise ValueError(f"unknown model {which!r}; known: {', '.join(MODELS)}")


def make_forward(which: str, model, cfg: VDiTConfig, batch: int):
    """(forward closure, target) on a fixed random batch; the closure returns the output."""
    (latent, t, text, mask), target = make_batch(cfg, batch)
    if which == "ours":
        return (lambda: model(latent, t, text, mask)), target
    return (lambda: model(latent, t, text, return_dict=False)[0]), target


def make_step(which: str, model, cfg: VDiTConfig, batch: int):
    """A closure running one training step of `model` on a fixed random batch."""
    forward, target = make_forward(which, model, cfg, batch)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)

    def step():
        F.mse_loss(forward(), target).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    return step


def saved_mib(which: str, model, cfg: VDiTConfig, batch: int) -> dict[str, float]:
    """MiB autograd saves for backward in one forward, by the module saving it.

    Storages are counted once (at the first module that saves them) and parameters not
    at all; module paths drop layer indices, so "blocks.mlp" sums every block's MLP.
    """
    forward, _ = make_forward(which, model, cfg, batch)
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    stack, seen, by_module = [""], set(), {}

    def enter(module, inputs, name):
        stack.append(".".join(part for part in name.split(".") if not part.isdigit()))

    def leave(module, inputs, output):
        stack.pop()

    def pack(tensor):
        storage = tensor.untyped_storage()
        ptr = storage.data_ptr()
        if ptr not in seen and ptr not in params:
            seen.add(ptr)
            by_module[stack[-1]] = by_module.get(stack[-1], 0.0) + storage.nbytes() / 2 ** 20
        return tensor

    handles = [h for name, m in model.named_modules() for h in (
        m.register_forward_pre_hook(functools.partial(enter, name=name or "(top)")),
        m.register_forward_hook(leave))]
    try:
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
            forward()
    finally:
        for handle in handles:
            handle.remove()
    return by_module


def timed(step) -> float:
    start = time.perf_counter()
    step()
    return time.perf_counter() - start


def shape_args(args) -> list[str]:
    """The command-line flags that fix the model and batch shape (passed to probes)."""
    return ["--batch", str(args.batch), "--latent", *map(str, args.latent), "--channels",
            str(args.channels), "--text-dim", str(args.text_dim), "--text-len",
            str(args.text_len), "--threads", str(args.threads)]


def _proc_status_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {field} line; the memory probe needs Linux")


def memory_probe(which: str, preset: str, args) -> None:
    """Run in a fresh process: print {"peak_mib": ...} of `which` training `preset`."""
    cfg = our_config(preset, args)
    gc.collect()
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # reset VmHWM (peak RSS) to the current RSS
    except OSError as exc:
        raise RuntimeError(f"cannot reset the peak-RSS mark via /proc/self/clear_refs ({exc}); "
                           "the memory probe needs Linux") from exc
    before_kib = _proc_status_kib("VmRSS")
    step = make_step(which, build(which, cfg), cfg, args.batch)
    for _ in range(args.warmup + 1):  # AdamW state exists from the first step on
        step()
    print(json.dumps({"peak_mib": (_proc_status_kib("VmHWM") - before_kib) / 1024}))


def measure_memory(preset: str, args) -> dict[str, float]:
    """Peak MiB per model, each from its own subprocess (both run side by side)."""
    procs = {which: subprocess.Popen(
        [sys.executable, __file__, "--memory-probe", which, preset, "--warmup", str(args.warmup),
         *shape_args(args)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "MALLOC_MMAP_THRESHOLD_": str(64 * 1024)}) for which in MODELS}
    peaks = {}
    for which, proc in procs.items():
        out, err = proc.communicate()
        if proc.returncode != 0:
            raise RuntimeError(f"memory probe of {which} at {preset} failed "
                               f"(exit {proc.returncode}):\n{err[-2000:]}")
        peaks[which] = json.loads(out.strip().splitlines()[-1])["peak_mib"]
    return peaks


def bench_preset(preset: str, args) -> dict:
    cfg = our_config(preset, args)
    models = {which: build(which, cfg) for which in MODELS}
    shapes = {which: built_shape(which, m) for which, m in models.items()}
    steps = {which: make_step(which, m, cfg, args.batch) for which, m in models.items()}
    for _ in range(args.warmup):
        for step in steps.values():
            step()
    times = {which: [] for which in MODELS}
    for _ in range(args.repeats):  # interleaved: a load change hits both models alike
        for which, step in steps.items():
            times[which].append(timed(step))
    tokens = args.batch * cfg.tokens_per_sample
    profile = profile_ops(steps) if args.profile else None
    saved = ({which: saved_mib(which, m, cfg, args.batch) for which, m in models.items()}
             if args.saved else None)
    return {
        "preset": preset, "tokens_per_step": tokens, "shape": shapes,
        "params": {which: sum(p.numel() for p in m.parameters()) for which, m in models.items()},
        "step_s": (step_s := {which: stats(ts) for which, ts in times.items()}),
        "ratio_diffusers_over_ours": step_s["diffusers"]["median"] / step_s["ours"]["median"],
        "profile_self_cpu_ms": profile,
        "saved_for_backward_mib": saved,
    }


def profile_ops(steps: dict, rounds: int = 3) -> dict[str, dict[str, float]]:
    """Self CPU ms per op name of a warm step of each model, from torch.profiler: the
    median over `rounds` profiled steps per model, interleaved like the timing, so one
    load spike on a shared machine does not decide an op's number."""
    samples = {which: [] for which in steps}
    for _ in range(rounds):
        for which, step in steps.items():
            with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
                step()
            samples[which].append({e.key: e.self_cpu_time_total / 1e3 for e in prof.key_averages()})
    return {which: {name: statistics.median(r.get(name, 0.0) for r in runs)
                    for name in set().union(*runs)} for which, runs in samples.items()}


def profile_table(preset: str, ops: dict[str, dict[str, float]], top: int) -> str:
    """The `top` ops whose self CPU time differs most between the models, largest first."""
    names = set(ops["ours"]) | set(ops["diffusers"])
    diff = lambda n: ops["diffusers"].get(n, 0.0) - ops["ours"].get(n, 0.0)  # noqa: E731
    rows = [f"{preset}: self CPU ms per step, median of 3 profiled steps (sum ours "
            f"{sum(ops['ours'].values()):.1f}, diffusers {sum(ops['diffusers'].values()):.1f})", "",
            "| op | ours | diffusers | diffusers - ours |", "|---|---|---|---|"]
    for name in sorted(names, key=lambda n: -abs(diff(n)))[:top]:
        rows.append(f"| {name} | {ops['ours'].get(name, 0.0):.1f} "
                    f"| {ops['diffusers'].get(name, 0.0):.1f} | {diff(name):+.1f} |")
    return "\n".join(rows)


def saved_table(preset: str, saved: dict[str, dict[str, float]], top: int) -> str:
    """Each model's saved-for-backward MiB by module, the `top` largest per model."""
    rows = [f"{preset}: MiB saved for backward in one forward (total ours "
            f"{sum(saved['ours'].values()):.1f}, diffusers {sum(saved['diffusers'].values()):.1f})",
            "", "| ours module | MiB | diffusers module | MiB |", "|---|---|---|---|"]
    ranked = {w: sorted(saved[w].items(), key=lambda kv: -kv[1])[:top] for w in MODELS}
    for i in range(max(len(r) for r in ranked.values())):
        cells = [f"{r[i][0]} | {r[i][1]:.1f}" if i < len(r) else " | " for r in ranked.values()]
        rows.append(f"| {cells[0]} | {cells[1]} |")
    return "\n".join(rows)


def table(results: list[dict]) -> str:
    head = ("| preset | params ours | params diffusers | step ms ours (min-max) "
            "| step ms diffusers (min-max) | diffusers / ours | peak MiB ours | peak MiB diffusers |")
    rows = [head, "|" + "---|" * 8]
    for r in results:
        ms = {w: {k: 1e3 * v for k, v in r["step_s"][w].items() if k != "all"} for w in MODELS}
        cell = lambda w: f"{ms[w]['median']:.1f} ({ms[w]['min']:.1f}-{ms[w]['max']:.1f})"  # noqa: E731
        rows.append(f"| {r['preset']} | {r['params']['ours'] / 1e6:.3f}M "
                    f"| {r['params']['diffusers'] / 1e6:.3f}M | {cell('ours')} | {cell('diffusers')} "
                    f"| {r['ratio_diffusers_over_ours']:.2f} | {r['peak_mib']['ours']:.0f} "
                    f"| {r['peak_mib']['diffusers']:.0f} |")
    return "\n".join(rows)


def parse_args(argv=None):
    parser = model_bench_parser(__file__, __doc__, ["cpu-0.6m", "cpu-4.7m", "cpu-16m"],
                                repeats=7, repeats_help="timed steps per model",
                                warmup_help="untimed steps per model first", batch=4)
    parser.add_argument("--profile", type=NON_NEG_INT, default=0, metavar="TOP",
                        help="after timing, profile one step of each model and print the "
                             "TOP ops whose self CPU time differs most")
    parser.add_argument("--saved", type=NON_NEG_INT, default=0, metavar="TOP",
                        help="count the bytes autograd saves for backward in one forward, "
                             "by module, and print each model's TOP modules")
    parser.add_argument("--json", metavar="OUT", type=output_file,
                        help="also write the results as JSON here")
    parser.add_argument("--smoke", action="store_true",
                        help="tiny shapes and 2 repeats (the test suite's run)")
    parser.add_argument("--memory-probe", nargs=2, metavar=("MODEL", "PRESET"),
                        help=argparse.SUPPRESS)  # internal: one model's peak memory
    args = parser.parse_args(argv)
    if args.smoke:
        for key, value in SMOKE.items():
            setattr(args, key, value)
    probe_preset = [args.memory_probe[1]] if args.memory_probe else []
    for preset in args.presets + probe_preset:
        try:
            accounting.preset_shape(preset)
        except ValueError as exc:
            parser.error(str(exc))
    if args.memory_probe and args.memory_probe[0] not in MODELS:
        parser.error(f"--memory-probe {args.memory_probe[0]}: unknown model; known: "
                     f"{', '.join(MODELS)}")
    return args


def main(argv=None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.memory_probe:
        memory_probe(*args.memory_probe, args)
        return
    meta = {**run_meta(sys.argv, torch=torch.__version__, diffusers=diffusers.__version__),
            "threads": args.threads, "batch": args.batch, "latent": args.latent,
            "channels": args.channels, "text_dim": args.text_dim, "text_len": args.text_len,
            "repeats": args.repeats, "warmup": args.warmup, "dtype": "float32"}
    results = []
    for preset in args.presets:
        peaks = measure_memory(preset, args)
        result = bench_preset(preset, args)
        result["peak_mib"] = peaks
        results.append(result)
        print(f"{preset}: done", file=sys.stderr, flush=True)
    print(f"torch {torch.__version__}, diffusers {diffusers.__version__}, {args.threads} threads, "
          f"fp32, batch {args.batch}, latent {args.channels}x{'x'.join(map(str, args.latent))}, "
          f"text {args.text_len}x{args.text_dim}, {args.warmup} warm-up + {args.repeats} timed "
          f"steps per model, interleaved")
    print(table(results))
    for result in results:
        if result["profile_self_cpu_ms"]:
            print()
            print(profile_table(result["preset"], result["profile_self_cpu_ms"], args.profile))
        if result["saved_for_backward_mib"]:
            print()
            print(saved_table(result["preset"], result["saved_for_backward_mib"], args.saved))
    if args.json:
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        write_json_atomic(args.json, {"meta": meta, "results": results})


if __name__ == "__main__":
    main()
