"""CPU efficiency of our VideoDiT's training step against the machine's bare fp32 GEMM.

For each preset one process builds the model at bench/cpu_throughput.py's shape (batch
8, latents 4x3x16x16 = 192 video tokens per sample at patch 1x2x2, 32 caption tokens of
width 64) and times, interleaved after warm-up steps (so a load change on a shared
machine hits every column alike):

- the eager step: forward + MSE loss to a random target + backward + AdamW (foreach)
  step + zero_grad, fp32;
- the same step with `torch.compile` (CPU inductor) applied to each block (`--compile
  blocks`, the default) or to the whole model (`--compile model`); its compile time is
  the first compiled step's wall time less a median compiled step. A compile that
  raises is recorded with its error line, and the run goes on eagerly;
- a bare fp32 GEMM, `a @ b` at `--gemm-size`^2 (the machine's ceiling), and the three
  GEMMs of the model's largest linear at this batch (MLP fc1: [T, d] @ [d, 4d] forward,
  [T, 4d] @ [4d, d] and [4d, T] @ [T, d] backward; T video tokens per step), because
  small GEMMs run slower than big ones.

Achieved GFLOP/s use the exact model FLOPs, attention included
(`accounting.model_flops_per_sample` x batch: every matmul of the built model, training
= 3x forward). The script also counts the step with torch's FlopCounterMode (the math
SDPA kernel forced, so attention shows up as counted bmm's) and records that count; it
differs from the model FLOPs only by the per-sample conditioning matmuls and the input
gradients autograd skips (tests/models/test_bench_cpu_efficiency.py derives both).
Efficiency = achieved / bare GEMM, paired per repeat, median and min-max.

Breakdown (`--profile-steps N`, default 3): torch.profiler self CPU time of N eager
steps, median per category. Ops are attributed by what they are (matmul: mm/addmm/bmm;
attention: the SDPA kernels; optimizer: everything under AdamW.step) and, for norms and
RoPE, by where they come from: forward ops under an `nn.LayerNorm`/`nn.RMSNorm` or
`apply_rope` Python frame (the profiler's stack), backward ops whose autograd node was
made by such an op (linked by sequence number); then by name: copies/allocation
(copy_, empty, clone, cat, ...), reductions (sum, mean: bias and broadcast gradients),
elementwise/modulation (add, mul, addcmul, gelu, ...), other (views, Python, autograd
bookkeeping). Matmul-only GFLOP/s = the counted mm/addmm FLOPs / matmul self time: GEMM
speed at the model's shapes, apart from everything around the GEMMs; attention GFLOP/s
likewise, the counted bmm FLOPs of math SDPA / the fused kernels' self time. Profiled steps run
about twice as long as timed ones, and the profiler's own overhead lands mostly in
"other" (Python frames, dispatch), so the table gives each category's share of the timed
step, and what the timed step leaves after the categorized ops.

    python bench/bench_cpu_efficiency.py [--presets cpu-0.6m cpu-1.6m cpu-4.7m cpu-16m]
        [--repeats 9] [--compile blocks] [--json OUT]    # --smoke: the test suite's run
"""
from __future__ import annotations

import contextlib
import math
import os
import statistics
import sys
import tempfile
import time
import warnings

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

warnings.filterwarnings("ignore")

from megatron_vdit.cli.errors import output_file  # noqa: E402
from megatron_vdit.models import accounting  # noqa: E402
from megatron_vdit.models.config import VDiTConfig  # noqa: E402
from megatron_vdit.models.validation import validate_model_shape  # noqa: E402
from megatron_vdit.models.vdit import VideoDiT  # noqa: E402
from megatron_vdit.utils.atomic_io import write_json_atomic  # noqa: E402
from megatron_vdit.utils.machine import run_meta  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import (NON_NEG_INT, POS_INT, make_batch, model_bench_parser, our_config,  # noqa: E402
                    stats, tp_group)
COMPILE_MODES = ("blocks", "model", "none")
SMOKE = {"presets": ["cpu-0.13m"], "latent": [2, 8, 8], "text_len": 8, "batch": 2,
         "repeats": 2, "warmup": 1, "gemm_size": 128, "profile_steps": 1}
"""--smoke overrides: a 0.13M-parameter model on 32 video tokens, for the test suite;
it compiles only when --compile is given (inductor takes tens of seconds even here)."""
GEMM_FLOPS_PER_SAMPLE = 1e9
"""Each GEMM measurement repeats its matmuls until about this many FLOPs (one call of a
small GEMM is too short to time)."""
CATEGORIES = ("matmul", "attention", "norm", "rope", "elementwise", "reductions", "copies",
              "optimizer", "other")
MATMUL_OPS = {"aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm"}
COPY_OPS = {"aten::copy_", "aten::empty", "aten::empty_strided", "aten::empty_like",
            "aten::clone", "aten::contiguous", "aten::cat", "aten::stack", "aten::_to_copy",
            "aten::zeros", "aten::zeros_like", "aten::zero_", "aten::fill_", "aten::new_empty",
            "aten::new_empty_strided", "aten::resize_", "aten::index", "aten::_unsafe_view"}
REDUCTION_OPS = {"aten::sum", "aten::mean"}
ELEMENTWISE_OPS = {"aten::add", "aten::add_", "aten::mul", "aten::mul_", "aten::addcmul",
                   "aten::addcmul_", "aten::sub", "aten::sub_", "aten::div", "aten::div_",
                   "aten::neg", "aten::gelu", "aten::gelu_backward", "aten::silu",
                   "aten::silu_backward", "aten::pow", "aten::rsqrt", "aten::exp", "aten::cos",
                   "aten::sin", "aten::square", "aten::mse_loss", "aten::mse_loss_backward",
                   "aten::where", "aten::masked_fill", "aten::conj_physical",
                   "aten::_conj_physical", "aten::lerp_", "aten::sqrt"}


def make_step(model, forward, inputs, target):
    """A closure running one training step; it returns the loss (a float)."""
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, foreach=True)

    def step() -> float:
        loss = F.mse_loss(forward(*inputs), target)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss.item()
    return step


def build_model(cfg: VDiTConfig) -> VideoDiT:
    torch.manual_seed(0)
    return VideoDiT(cfg, tp_group())


def compiled_forward(model: VideoDiT, mode: str):
    """The model's forward under `torch.compile` as `mode` says (compiles lazily)."""
    if mode == "model":
        return torch.compile(model)
    for block in model.blocks.values():
        block.compile()
    return model


def counted_flops(model, inputs, target) -> dict[str, int]:
    """FLOPs of one forward + backward by FlopCounterMode, per op (math SDPA forced, so
    attention is counted as bmm's); gradients are dropped afterwards."""
    with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        F.mse_loss(model(*inputs), target).backward()
    model.zero_grad(set_to_none=True)
    return {str(op): int(n) for op, n in counter.get_flop_counts()["Global"].items()}


def gemm_runner(shapes: list[tuple[int, int, int]]):
    """(closure, FLOPs per call): the closure runs `a @ b` for each (m, k, n) in `shapes`,
    repeated to about GEMM_FLOPS_PER_SAMPLE FLOPs."""
    pairs = [(torch.randn(m, k), torch.randn(k, n)) for m, k, n in shapes]
    flops = sum(2 * m * k * n for m, k, n in shapes)
    calls = max(1, math.ceil(GEMM_FLOPS_PER_SAMPLE / flops))

    def run():
        for _ in range(calls):
            for a, b in pairs:
                a @ b
    return run, flops * calls


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def compile_step(model, mode: str, inputs, target) -> tuple[dict, object, object]:
    """(record, step, forward), step and forward None on failure: the compiled model's
    training step and forward, and its first (compiling) step's time; a compile error is
    recorded, not raised."""
    try:
        forward = compiled_forward(model, mode)
        step = make_step(model, forward, inputs, target)
        start = time.perf_counter()
        step()
        return ({"mode": mode, "first_step_s": time.perf_counter() - start, "error": None},
                step, forward)
    except Exception as exc:  # noqa: BLE001 - any compile failure is a result to report
        line = (str(exc).strip().splitlines() or [""])[0]
        return {"mode": mode, "error": f"{type(exc).__name__}: {line}"}, None, None


@contextlib.contextmanager
def fresh_inductor_cache():
    """An empty inductor cache for the duration (removed after): compile times are cold
    compiles, not hits of an earlier run's cache."""
    old = os.environ.get("TORCHINDUCTOR_CACHE_DIR")
    with tempfile.TemporaryDirectory(prefix="bench_cpu_efficiency_inductor_") as cache_dir:
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = cache_dir
        try:
            yield
        finally:
            if old is None:
                del os.environ["TORCHINDUCTOR_CACHE_DIR"]
            else:
                os.environ["TORCHINDUCTOR_CACHE_DIR"] = old


def output_rel_diff(forward_a, forward_b, inputs) -> float:
    """max |a - b| / max |a| of two models' predictions on `inputs` (grad mode on, as in
    training, so a compiled model runs the graph it was timed with)."""
    out_a, out_b = forward_a(*inputs).detach(), forward_b(*inputs).detach()
    return ((out_a - out_b).abs().max() / out_a.abs().max()).item()


def time_interleaved(runners: dict, repeats: int) -> dict[str, list[float]]:
    times = {name: [] for name in runners}
    for _ in range(repeats):  # interleaved: a load change hits every column alike
        for name, fn in runners.items():
            times[name].append(timed(fn))
    return times


def bench_preset(preset: str, args) -> dict:
    cfg = our_config(preset, args)
    layers, d, heads = accounting.preset_shape(preset)
    inputs, target = make_batch(cfg, args.batch)
    eager_model = build_model(cfg)
    by_op = counted_flops(eager_model, inputs, target)
    eager = make_step(eager_model, eager_model, inputs, target)
    eager()
    compiled, compiled_step = {"mode": "none"}, None
    if args.compile != "none":
        compiled, compiled_step, compiled_fwd = compile_step(build_model(cfg), args.compile,
                                                             inputs, target)
    tokens = args.batch * cfg.tokens_per_sample
    square, square_flops = gemm_runner([(args.gemm_size,) * 3])
    fc1, fc1_flops = gemm_runner([(tokens, d, 4 * d), (tokens, 4 * d, d), (4 * d, tokens, d)])
    runners = {"gemm_square": square, "gemm_model_shape": fc1, "eager": eager}
    if compiled_step is not None:
        runners["compiled"] = compiled_step
    for _ in range(args.warmup):
        for fn in runners.values():
            fn()
    times = time_interleaved(runners, args.repeats)
    if compiled_step is not None:  # both models have taken 1 + warmup + repeats steps
        compiled["output_rel_diff"] = output_rel_diff(eager_model, compiled_fwd, inputs)
        compiled["output_compared_after_steps"] = 1 + args.warmup + args.repeats
    model_flops = args.batch * accounting.model_flops_per_sample(
        accounting.ModelShape.from_config(cfg), cfg.tokens_per_sample)
    rates = {"gemm_square": [square_flops / t / 1e9 for t in times["gemm_square"]],
             "gemm_model_shape": [fc1_flops / t / 1e9 for t in times["gemm_model_shape"]]}
    result = {
        "preset": preset,
        "shape": {"num_layers": layers, "hidden_size": d, "num_attention_heads": heads,
                  "tokens_per_sample": cfg.tokens_per_sample, "text_tokens": cfg.max_text_tokens,
                  "batch": args.batch, "tokens_per_step": tokens},
        "flops": {"model_per_step": model_flops, "counted_per_step": sum(by_op.values()),
                  "counted_by_op": by_op},
        "gemm": {"square": {"shape": [args.gemm_size] * 3, "gflops": stats(rates["gemm_square"])},
                 "model_shape": {"shapes": [[tokens, d, 4 * d], [tokens, 4 * d, d],
                                            [4 * d, tokens, d]],
                                 "gflops": stats(rates["gemm_model_shape"])}},
        "eager": step_record(times["eager"], model_flops, rates),
        "compiled": compiled,
    }
    if compiled_step is not None:
        compiled.update(step_record(times["compiled"], model_flops, rates))
        compiled["compile_s"] = compiled["first_step_s"] - compiled["step_s"]["median"]
    if args.profile_steps:
        result["breakdown"] = breakdown(eager, args.profile_steps, by_op,
                                        result["eager"]["step_s"]["median"])
    return result


def step_record(step_times: list[float], model_flops: float, rates: dict) -> dict:
    """Step time, achieved GFLOP/s and efficiency against both GEMMs, paired per repeat."""
    achieved = [model_flops / t / 1e9 for t in step_times]
    return {"step_s": stats(step_times), "gflops": stats(achieved),
            "efficiency": stats([a / g for a, g in zip(achieved, rates["gemm_square"])]),
            "efficiency_vs_model_shape_gemm": stats(
                [a / g for a, g in zip(achieved, rates["gemm_model_shape"])])}


def _ancestors(event):
    parent = event.cpu_parent
    while parent is not None:
        yield parent
        parent = parent.cpu_parent


def _source(event) -> str | None:
    """"norm" or "rope" when a Python frame above `event` is a norm module or apply_rope."""
    for parent in _ancestors(event):
        name = parent.name
        if "apply_rope" in name:
            return "rope"
        if "nn/modules/normalization.py" in name or name.endswith((": rms_norm", ": layer_norm")):
            return "norm"
    return None


def categorize(events) -> dict[str, float]:
    """Self CPU ms per category of one profiled step (see the module docstring)."""
    def backward_node(event):
        for parent in [event, *_ancestors(event)]:
            if parent.name.startswith("autograd::engine::evaluate_function: "):
                return parent
        return None

    def in_optimizer(event):
        return any(p.name.startswith("Optimizer.step") for p in [event, *_ancestors(event)])

    forward_source, nodes = {}, {}
    for event in events:
        nodes[event.id] = backward_node(event)
        if nodes[event.id] is None and event.sequence_nr >= 0 and not in_optimizer(event):
            source = _source(event)
            if source is not None:
                forward_source.setdefault(event.sequence_nr, source)
    ms = dict.fromkeys(CATEGORIES, 0.0)
    for event in events:
        name, node = event.name, nodes[event.id]
        source = _source(event) if node is None else forward_source.get(node.sequence_nr)
        if in_optimizer(event) or name.startswith("aten::_foreach"):
            category = "optimizer"
        elif name in MATMUL_OPS:
            category = "matmul"
        elif "scaled_dot_product" in name:
            category = "attention"
        elif source is not None or "layer_norm" in name or "rms_norm" in name:
            category = source or "norm"
        elif name in COPY_OPS:
            category = "copies"
        elif name in REDUCTION_OPS:
            category = "reductions"
        elif name in ELEMENTWISE_OPS:
            category = "elementwise"
        else:
            category = "other"
        ms[category] += event.self_cpu_time_total / 1e3
    return ms


def breakdown(step, rounds: int, by_op: dict[str, int], step_s: float) -> dict:
    """Median self CPU ms per category over `rounds` profiled steps, and the matmuls'
    own GFLOP/s (counted mm/addmm FLOPs over matmul self time)."""
    samples = []
    for _ in range(rounds):
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU],
                                    with_stack=True) as prof:
            step()
        samples.append(categorize(prof.events()))
    ms = {c: statistics.median(s[c] for s in samples) for c in CATEGORIES}
    linear_flops = by_op.get("aten.mm", 0) + by_op.get("aten.addmm", 0)
    attention_flops = by_op.get("aten.bmm", 0)  # math SDPA's products, as counted
    categorized = sum(v for c, v in ms.items() if c != "other")
    return {"profiled_steps": rounds, "category_ms": ms, "profiled_total_ms": sum(ms.values()),
            "timed_step_ms": 1e3 * step_s, "uncategorized_ms": 1e3 * step_s - categorized,
            "matmul_flops_per_step": linear_flops,
            "matmul_gflops": linear_flops / (ms["matmul"] / 1e3) / 1e9 if ms["matmul"] else None,
            "attention_flops_per_step": attention_flops,
            "attention_gflops": (attention_flops / (ms["attention"] / 1e3) / 1e9
                                 if ms["attention"] else None)}


def _cell(s: dict, scale: float = 1.0, fmt: str = ".1f") -> str:
    return (f"{scale * s['median']:{fmt}} ({scale * s['min']:{fmt}}-"
            f"{scale * s['max']:{fmt}})")


def efficiency_table(results: list[dict]) -> str:
    rows = ["| preset (L, d) | tokens/step | model GFLOP/step | step ms (min-max) "
            "| GFLOP/s (min-max) | bare GEMM GFLOP/s (min-max) | efficiency (min-max) "
            "| fc1-shape GEMM GFLOP/s (min-max) | vs fc1-shape GEMM |", "|" + "---|" * 9]
    for r in results:
        s, e = r["shape"], r["eager"]
        rows.append(f"| {r['preset']} ({s['num_layers']}, {s['hidden_size']}) "
                    f"| {s['tokens_per_step']} | {r['flops']['model_per_step'] / 1e9:.2f} "
                    f"| {_cell(e['step_s'], 1e3)} | {_cell(e['gflops'])} "
                    f"| {_cell(r['gemm']['square']['gflops'])} "
                    f"| {_cell(e['efficiency'], 1, '.2f')} "
                    f"| {_cell(r['gemm']['model_shape']['gflops'])} "
                    f"| {e['efficiency_vs_model_shape_gemm']['median']:.2f} |")
    return "\n".join(rows)


def breakdown_table(results: list[dict]) -> str:
    """Categories as rows, presets as columns: self CPU ms of a profiled step and its share
    of the timed (unprofiled) step. "other" is shown without a share: it holds most of the
    profiler's own overhead, so the next row gives what the timed step leaves after the
    categorized ops instead. Then the matmuls' own GFLOP/s against both GEMMs."""
    done = [r for r in results if r.get("breakdown")]
    rows = ["| self CPU ms per step (share of timed step) | "
            + " | ".join(r["preset"] for r in done) + " |", "|" + "---|" * (len(done) + 1)]
    for category in CATEGORIES:
        cells = []
        for r in done:
            ms, step_ms = r["breakdown"]["category_ms"][category], r["breakdown"]["timed_step_ms"]
            cells.append(f"{ms:.1f}" if category == "other" else f"{ms:.1f} ({ms / step_ms:.0%})")
        rows.append(f"| {category} | " + " | ".join(cells) + " |")
    rows.append("| timed step - categorized ops | " + " | ".join(
        f"{r['breakdown']['uncategorized_ms']:.1f} "
        f"({r['breakdown']['uncategorized_ms'] / r['breakdown']['timed_step_ms']:.0%})"
        for r in done) + " |")
    rows.append("| timed step (profiled step) | " + " | ".join(
        f"{r['breakdown']['timed_step_ms']:.1f} ({r['breakdown']['profiled_total_ms']:.1f})"
        for r in done) + " |")
    cells = []
    for r in done:
        rate, gemm = r["breakdown"]["matmul_gflops"], r["gemm"]
        cells.append("-" if not rate else
                     f"{rate:.1f} ({rate / gemm['square']['gflops']['median']:.2f}, "
                     f"{rate / gemm['model_shape']['gflops']['median']:.2f})")
    rows.append("| matmul-only GFLOP/s (/ bare GEMM, / fc1-shape GEMM) | " + " | ".join(cells)
                + " |")
    rows.append("| attention GFLOP/s (/ bare GEMM) | " + " | ".join(
        "-" if not r["breakdown"]["attention_gflops"] else
        f"{r['breakdown']['attention_gflops']:.1f} "
        f"({r['breakdown']['attention_gflops'] / r['gemm']['square']['gflops']['median']:.2f})"
        for r in done) + " |")
    return "\n".join(rows)


def compile_table(results: list[dict]) -> str:
    rows = ["| preset | mode | compile s | step ms compiled (min-max) | step ms eager "
            "| GFLOP/s compiled | GFLOP/s eager | efficiency compiled | compiled / eager speed "
            "| prediction rel. diff |", "|" + "---|" * 10]
    for r in results:
        c, e = r["compiled"], r["eager"]
        if c.get("error"):
            rows.append(f"| {r['preset']} | {c['mode']} | failed: {c['error']} |" + " |" * 7)
            continue
        rows.append(f"| {r['preset']} | {c['mode']} | {c['compile_s']:.1f} "
                    f"| {_cell(c['step_s'], 1e3)} | {1e3 * e['step_s']['median']:.1f} "
                    f"| {c['gflops']['median']:.1f} | {e['gflops']['median']:.1f} "
                    f"| {c['efficiency']['median']:.2f} "
                    f"| {e['step_s']['median'] / c['step_s']['median']:.2f} "
                    f"| {c['output_rel_diff']:.1e} |")
    return "\n".join(rows)


def parse_args(argv=None):
    parser = model_bench_parser(
        __file__, __doc__, ["cpu-0.6m", "cpu-1.6m", "cpu-4.7m", "cpu-16m"], repeats=9,
        repeats_help="timed rounds (each: both GEMMs, eager step, compiled step)",
        warmup_help="untimed rounds first", batch=8)
    parser.add_argument("--gemm-size", type=POS_INT, default=1024,
                        help="side of the square bare fp32 GEMM (the ceiling)")
    parser.add_argument("--compile", choices=COMPILE_MODES,
                        help="torch.compile each block (default), the whole model, or "
                             "nothing (the default with --smoke)")
    parser.add_argument("--profile-steps", type=NON_NEG_INT, default=3, metavar="N",
                        help="profiled eager steps for the breakdown (0: none)")
    parser.add_argument("--json", metavar="OUT", type=output_file,
                        help="also write the results as JSON here")
    parser.add_argument("--smoke", action="store_true",
                        help="tiny shapes, 2 repeats, no compile unless --compile "
                             "(the test suite's run)")
    args = parser.parse_args(argv)
    if args.smoke:
        for key, value in SMOKE.items():
            setattr(args, key, value)
    if args.compile is None:
        args.compile = "none" if args.smoke else "blocks"
    for preset in args.presets:
        try:
            _, d, heads = accounting.preset_shape(preset)
            validate_model_shape(hidden_size=d, num_attention_heads=heads,
                                 latent=tuple(args.latent), patch=(1, 2, 2),
                                 max_text_tokens=args.text_len, text_hidden_size=args.text_dim)
        except ValueError as exc:
            parser.error(f"{preset}: {exc}" if "preset" not in str(exc) else str(exc))
    return args


def main(argv=None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    meta = {**run_meta(sys.argv, torch=torch.__version__), "threads": args.threads,
            "batch": args.batch, "latent": args.latent, "channels": args.channels,
            "text_dim": args.text_dim, "text_len": args.text_len, "repeats": args.repeats,
            "warmup": args.warmup, "gemm_size": args.gemm_size, "compile": args.compile,
            "profile_steps": args.profile_steps, "dtype": "float32"}
    print(meta, flush=True)
    results = []
    for preset in args.presets:
        with fresh_inductor_cache():
            results.append(bench_preset(preset, args))
        print(f"{preset}: done", file=sys.stderr, flush=True)
    meta["load_avg_end"] = [round(x, 1) for x in os.getloadavg()]
    print(f"torch {torch.__version__}, {args.threads} threads, fp32, batch {args.batch}, latent "
          f"{args.channels}x{'x'.join(map(str, args.latent))}, text {args.text_len}x"
          f"{args.text_dim}, {args.warmup} warm-up + {args.repeats} timed rounds, interleaved; "
          f"load average {meta['load_avg']} at the start, {meta['load_avg_end']} at the end")
    print(efficiency_table(results))
    if any(r.get("breakdown") for r in results):
        print()
        print(breakdown_table(results))
    if args.compile != "none":
        print()
        print(compile_table(results))
    if args.json:
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        write_json_atomic(args.json, {"meta": meta, "results": results})


if __name__ == "__main__":
    main()
