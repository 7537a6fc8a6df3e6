"""The plan as text: the run, the trade-off, the layout, the wall-clock."""
from __future__ import annotations

from scaling_laws.compute import BILLION


def _b(x: float) -> str:
    return f"{x / BILLION:.3f}B"


def _ci(rng, fmt) -> str:
    return f" (95% CI {fmt(rng[0])} .. {fmt(rng[1])})" if rng else ""


def run_section(p: dict) -> list[str]:
    frames, height, width = p["latent_shape"]
    lines = [f"1. The run (C = {p['budget_flops']:.3g} FLOPs, law: {p['law']})",
             f"  N_opt(C)            {_b(p['n_opt_params'])}{_ci(p['n_opt_params_ci95'], _b)}",
             f"  model               {_b(p['params_nonembed'])} non-embedding params: "
             f"{p['num_layers']} layers x hidden {p['hidden_size']}, "
             f"{p['num_attention_heads']} heads (shape {_b(p['model_shape']['params_nonembed'])})",
             f"  video tokens        {p['tokens_per_sample']} per sample (latent {frames}x"
             f"{height}x{width}, patch {'x'.join(map(str, p['patch_size']))})",
             f"  training tokens     {_b(p['train_tokens'])} = "
             f"{p['train_tokens'] / p['tokens_per_sample']:.4g} videos",
             f"  learning rate       {p['lr']:.3g}{_ci(p['lr_ci95'], lambda x: f'{x:.3g}')}",
             f"  batch               {p['batch_tokens']:.4g} tokens = {p['batch_samples']} "
             f"videos (law: {p['batch_samples_law']:.1f} videos"
             f"{_ci(p['batch_tokens_ci95'], lambda x: f'{x:.3g} tokens')})",
             f"  optimizer steps     {p['train_steps']:,}"]
    if p.get("predicted_val_loss") is not None:
        lines.append(f"  predicted val loss  {p['predicted_val_loss']:.4f}"
                     f"{_ci(p.get('predicted_val_loss_ci95'), lambda x: f'{x:.4f}')}")
    else:
        lines.append(f"  predicted val loss  n/a: {p.get('loss_note', 'no loss law')}")
    return lines


def tradeoff_section(p: dict) -> list[str]:
    lines = ["2. Inference-aware trade-off (same budget; inference = FLOPs per generated video)",
             "  x N_opt   N        shape          tokens      loss penalty   inference"]
    for r in p["tradeoff"]:
        s = r["shape"]
        penalty = (f"{r['loss_penalty']:+.2e} ({r['loss_penalty_rel']:+.2%})"
                   if "loss_penalty" in r else "n/a (no loss law)")
        mark = "" if r["within_max_params"] else "  > --max-params"
        lines.append(f"  {r['fraction']:.1f}      {_b(r['params_nonembed']):8s} "
                     f"{s['num_layers']:3d}x{s['hidden_size']:<6d}   "
                     f"{_b(r['train_tokens']):10s}  {penalty:16s} "
                     f"{r['inference_flops_per_video']:.3g} ({r['inference_rel']:.0%}){mark}")
    if p.get("capped_by_max_params"):
        lines.append(f"  best under --max-params: {_b(p['params_nonembed'])} "
                     f"({p['inference_params_saving']:.1%} fewer params than N_opt)")
    conv = p.get("conventional")
    if conv:
        loss = (f", its loss {conv['loss']:.4f}" if "loss" in conv else "")
        diff = (f" ({conv['loss_difference']:+.2e} vs this plan)"
                if "loss_difference" in conv else "")
        lines.append(f"  conventional (fixed-HP) law: N = {_b(conv['params_nonembed'])} "
                     f"({conv['params_ratio']:.2f}x){loss}{diff}; this plan needs "
                     f"{conv['inference_saving']:.1%} less inference per video "
                     f"[{conv['source']}]")
    else:
        lines.append("  conventional comparison: n/a (the law has no fixed-HP baseline)")
    return lines


def layout_section(p: dict) -> list[str]:
    if not p.get("layout"):
        return ["3. Layout: give --gpus (and --gpu) to choose one"]
    lines = [f"3. Layout: {p['layouts_ranked'][0]['layout']}",
             f"  flags: {p['parallel_layout']['flags']}"]
    lines += [f"  why: {w}" for w in p["layout_why"]]
    lines.append("  ranked (fitting layouts, fastest first):")
    for i, r in enumerate(p["layouts_ranked"], 1):
        lines.append(f"   {i}. {r['layout']:60s} {r['est_days']:8.2f} days  "
                     f"{r['step_time_s']:.3g} s/step  {r['memory_gib']:.1f} GiB")
    return lines


def format_plan(p: dict) -> str:
    lines = run_section(p) + tradeoff_section(p) + layout_section(p)
    if p.get("est_days") is not None:
        lines.append(f"4. Wall-clock: {p['est_days']:.3g} days on {p['num_gpus']} x "
                     f"{p['gpu']} at MFU {p['mfu']:.0%} = {p['gpu_hours']:,.4g} GPU-hours")
    else:
        lines.append("4. Wall-clock: needs --gpus")
    if p["warnings"]:
        lines.append("Caveats:")
        lines += [f"  - {w}" for w in p["warnings"]]
    return "\n".join(lines)
