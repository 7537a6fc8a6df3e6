"""Plan a training run from a law and a compute budget (pure: numpy only).

Given ``C`` FLOPs: ``N = N_opt(C) = k C^a`` (or ``max_params`` if smaller), ``T = C /
C_token(N)``, ``eta = eta_opt(N, T)``, ``B = B_opt(N, T)`` in tokens and in samples,
and, when the law has a loss part, the predicted loss, and with ``max_params`` what the
smaller model costs in loss. Intervals come from the law's bootstrap samples (none for
the ``paper`` preset, which publishes none).
"""
from __future__ import annotations

import dataclasses

from scaling_laws import gates, lawfile, loss_law
from scaling_laws.compute import BILLION, ComputeModel


def _compute_model(law: dict, tokens_per_sample, hidden_size_for_params):
    compute = ComputeModel.from_json(law["compute"])
    if tokens_per_sample is not None:
        if not tokens_per_sample > 0:
            raise ValueError(f"tokens_per_sample must be positive, got {tokens_per_sample}")
        compute = dataclasses.replace(compute, tokens_per_sample=float(tokens_per_sample))
    if hidden_size_for_params is None:
        return compute, compute.flops_per_token
    return compute, lambda n: compute.flops_per_token(n, hidden_size_for_params(n))


def _loss_cost(law, n_small, t_small, n_opt, t_opt):
    rows = lawfile.sample_dicts(law, "loss", loss_law.LOSS_KEYS)
    point = (loss_law.predict_loss(law["loss"], n_small / BILLION, t_small / BILLION)
             - loss_law.predict_loss(law["loss"], n_opt / BILLION, t_opt / BILLION))
    out = {"loss_increase": float(point)}
    if rows:
        diff = (loss_law.predict_loss(rows, n_small / BILLION, t_small / BILLION)
                - loss_law.predict_loss(rows, n_opt / BILLION, t_opt / BILLION))
        out["loss_increase_ci95"] = lawfile.ci(diff)
    return out


MAX_LAYERS = 500            # deeper than any trained transformer by far
DEFAULT_WARMUP_STEPS = 200  # a plan with fewer optimizer steps never leaves warm-up


def _refuse_unreasonable(out: dict, warmup_steps: int) -> None:
    """ValueError for plans no one would train, saying what to change."""
    layers = out["params_nonembed"] / (16 * out["hidden_size_used"] ** 2)
    if layers > MAX_LAYERS:
        raise ValueError(
            f"the plan is a model of about {layers:,.0f} layers (N = {out['params_nonembed']:.3g} "
            f"at hidden size {out['hidden_size_used']:.0f}, more than {MAX_LAYERS}); the law's "
            "N_opt(C) is off, check its unusable reasons and extrapolation factor "
            f"({out['extrapolation_params']:.3g}x the largest fitted size)")
    if out["train_steps"] < warmup_steps:
        raise ValueError(
            f"the plan trains for {out['train_steps']:.0f} optimizer steps, fewer than a "
            f"{warmup_steps}-step warm-up (batch {out['batch_samples']} samples, "
            f"{out['train_samples']:.3g} samples in all); raise the budget, cap the size with "
            "--max-params, or lower --warmup-steps if you mean it")


def _extrapolation(law: dict, n: float, budget_flops: float) -> dict:
    """How far the plan reaches beyond what the law was fitted on (1 = inside)."""
    sizes = (law.get("provenance") or {}).get("sizes_params")
    flops = (law.get("provenance") or {}).get("cell_flops_range")
    out = {}
    if sizes:
        out["extrapolation_params"] = float(max(1.0, n / max(sizes)))
    if flops:
        out["extrapolation_flops"] = float(max(1.0, budget_flops / flops[1]))
    return out


def plan(law, budget_flops: float, tokens_per_sample=None, max_params=None,
         hidden_size_for_params=None, warmup_steps: int = DEFAULT_WARMUP_STEPS) -> dict:
    """The recommended run for ``budget_flops``; all counts are raw (not billions).

    Refuses (ValueError) a law the fit marked unusable and plans no one would train.
    """
    law = lawfile.load_law(law)
    gates.require_usable(law)
    if not budget_flops > 0:
        raise ValueError(f"budget must be a positive number of FLOPs, got {budget_flops}")
    if max_params is not None and not max_params > 0:
        raise ValueError(f"max_params must be positive, got {max_params}")
    compute, flops_per_token = _compute_model(law, tokens_per_sample, hidden_size_for_params)
    n_opt, n_ci = lawfile.n_opt_params(law, budget_flops)
    t_opt = float(budget_flops / flops_per_token(n_opt))
    n = min(n_opt, max_params) if max_params else n_opt
    tokens = float(budget_flops / flops_per_token(n))
    point = lawfile.predict_point(law, n, tokens)
    batch_samples = max(1, int(round(point["batch_tokens"] / compute.tokens_per_sample)))
    out = {"law": law.get("name", "?"), "budget_flops": float(budget_flops),
           "n_opt_params": n_opt, "n_opt_params_ci95": n_ci, "params_nonembed": float(n),
           "train_tokens": tokens, "tokens_per_sample": compute.tokens_per_sample,
           "hidden_size_used": float(compute.hidden_size(n) if hidden_size_for_params is None
                                     else hidden_size_for_params(n)),
           "lr": point["lr"], "lr_ci95": point["lr_ci95"],
           "batch_tokens": point["batch_tokens"], "batch_tokens_ci95": point["batch_tokens_ci95"],
           "batch_samples": batch_samples, "train_samples": tokens / compute.tokens_per_sample,
           "train_steps": tokens / (batch_samples * compute.tokens_per_sample)}
    if "loss" in point:
        out["loss"], out["loss_ci95"] = point["loss"], point["loss_ci95"]
    else:
        out["loss_note"] = "this law has no loss part (the paper preset's is unverified)"
    if max_params and max_params < n_opt:
        out["capped_by_max_params"] = True
        out["inference_params_saving"] = float(1 - n / n_opt)
        if law.get("loss"):
            out.update(_loss_cost(law, n, tokens, n_opt, t_opt))
            out["loss_increase_rel"] = float(out["loss_increase"] / loss_law.predict_loss(
                law["loss"], n_opt / BILLION, t_opt / BILLION))
    out.update(_extrapolation(law, n, budget_flops))
    out["warnings"] = _warnings(law, n, tokens)
    _refuse_unreasonable({"extrapolation_params": 1.0, **out}, warmup_steps)
    return out


def _warnings(law, n, tokens) -> list[str]:
    notes = list(law.get("caveats", []))
    sizes = (law.get("provenance") or {}).get("sizes_params")
    if sizes and n > 4 * max(sizes):
        notes.append(f"N = {n / BILLION:.3g}B is {n / max(sizes):.0f}x the largest fitted size "
                     f"({max(sizes) / BILLION:.3g}B): a far extrapolation")
    return notes


def format_plan(result: dict, shape: dict | None = None, shape_note: str = "") -> str:
    def ci(key, fmt):
        rng = result.get(key + "_ci95")
        return f"  (95% CI {fmt(rng[0])} .. {fmt(rng[1])})" if rng else ""

    def b(x):
        return f"{x / BILLION:.3f}B"

    lines = [f"Plan for C = {result['budget_flops']:.3g} FLOPs (law: {result['law']})",
             f"  N_opt(C)              {b(result['n_opt_params'])}{ci('n_opt_params', b)}",
             f"  model size N          {b(result['params_nonembed'])} non-embedding params",
             f"  training tokens T     {b(result['train_tokens'])} "
             f"({result['train_samples']:.3g} samples of {result['tokens_per_sample']:.0f} tokens)",
             f"  learning rate         {result['lr']:.3g}{ci('lr', lambda x: f'{x:.3g}')}",
             f"  batch                 {result['batch_tokens']:.4g} tokens = "
             f"{result['batch_samples']} samples{ci('batch_tokens', lambda x: f'{x:.4g}')}",
             f"  optimizer steps       {result['train_steps']:.4g}"]
    if "extrapolation_params" in result:
        lines.append(f"  extrapolation         {result['extrapolation_params']:.3g}x the largest "
                     f"fitted size" + (f", {result['extrapolation_flops']:.3g}x the largest "
                                       "fitted compute" if "extrapolation_flops" in result
                                       else ""))
    if "loss" in result:
        lines.append(f"  predicted val loss    {result['loss']:.4f}"
                     f"{ci('loss', lambda x: f'{x:.4f}')}")
    else:
        lines.append(f"  predicted val loss    n/a: {result['loss_note']}")
    if result.get("capped_by_max_params"):
        lines.append(f"  capped by --max-params: {result['inference_params_saving']:.1%} fewer "
                     "params than N_opt")
        if "loss_increase" in result:
            lines.append(f"  loss cost vs N_opt    +{result['loss_increase']:.2e} "
                         f"({result['loss_increase_rel']:.3%})"
                         f"{ci('loss_increase', lambda x: f'{x:.2e}')}")
    if shape:
        lines.append(f"  suggested shape       {shape['num_layers']} layers x hidden "
                     f"{shape['hidden_size']}, {shape['num_attention_heads']} heads "
                     f"({shape.get('params_nonembed', 0) / BILLION:.3f}B)")
    elif shape_note:
        lines.append(f"  suggested shape       {shape_note}")
    if result["warnings"]:
        lines.append("Caveats:")
        lines += [f"  - {w}" for w in result["warnings"]]
    return "\n".join(lines)


def round_trip_check(law, budget_flops) -> float:
    """Relative gap between the law's N_opt and numerical minimisation of its loss law."""
    from scaling_laws import allocation
    law = lawfile.load_law(law)
    compute = ComputeModel.from_json(law["compute"])
    direct = allocation.optimal_params(
        lambda n, t: loss_law.predict_loss(law["loss"], n, t), compute, [budget_flops])[0]
    return float(lawfile.n_opt_params(law, budget_flops)[0] / direct - 1)

