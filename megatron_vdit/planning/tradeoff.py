"""The inference-aware trade-off (0.5x .. 1x N_opt) and the conventional comparison.

Below N_opt a fixed budget buys a smaller model trained on more tokens: the loss rises
(slowly near the optimum) while every generated video gets cheaper. Inference cost is
``accounting.inference_flops_per_video`` of the concrete shape: ``sampling_steps``
model calls, doubled by classifier-free guidance.

The conventional comparison is the allocation law fitted with fixed, untuned
hyperparameters: a fitted law carries it as ``baselines.fixed_hp`` (``k``, ``a`` and
its own loss law); for the ``paper`` preset it is the power law through the two
fixed-hyperparameter recommendations the paper publishes (4.04B at 1e22 FLOPs and
30.05B at Movie Gen's budget, where the optimal-HP law gives 18.05B).
"""
from __future__ import annotations

import math

from ..models import accounting
from scaling_laws import loss_law
from scaling_laws.compute import BILLION

FRACTIONS = (0.5, 0.6, 0.7, 0.8, 0.9, 1.0)

# The paper's fixed-hyperparameter recommendations (C in FLOPs -> N in parameters).
_PAPER_MOVIEGEN_N_OPT = 18.05e9


def _paper_fixed_hp(law: dict) -> dict:
    k, a = law["n_opt"]["k"], law["n_opt"]["a"]
    moviegen_flops = (_PAPER_MOVIEGEN_N_OPT / k) ** (1 / a)
    points = ((1e22, 4.04e9), (moviegen_flops, 30.05e9))
    slope = math.log(points[1][1] / points[0][1]) / math.log(points[1][0] / points[0][0])
    return {"k": points[0][1] / points[0][0] ** slope, "a": slope, "law": None,
            "source": "power law through the paper's fixed-HP recommendations "
                      "(4.04B at 1e22 FLOPs, 30.05B at Movie Gen's budget)"}


def fixed_hp_law(law: dict) -> dict | None:
    """{k, a, law (loss coefficients or None), source} of the conventional allocation."""
    if law.get("name") == "paper" and law.get("kind") == "preset":
        return _paper_fixed_hp(law)
    fixed = (law.get("baselines") or {}).get("fixed_hp") or {}
    if fixed.get("k") is None or fixed.get("a") is None:
        return None
    return {"k": float(fixed["k"]), "a": float(fixed["a"]), "law": fixed.get("law"),
            "source": "baselines.fixed_hp of the law file"}


class Costing:
    """Shapes, tokens, loss and inference FLOPs of a model size at one budget."""

    def __init__(self, law, budget, tokens_per_sample, model_shape, sampling_steps,
                 guidance=True):
        self.law, self.budget, self.n_ctx = law, budget, int(tokens_per_sample)
        self.model_shape, self.calls, self.guidance = model_shape, sampling_steps, guidance

    def point(self, n: float) -> dict:
        shape = accounting.shape_for_params(n)
        per_token = accounting.paper_flops_per_token(n, self.n_ctx, shape["hidden_size"])
        tokens = self.budget / per_token
        full = self.model_shape(shape)
        out = {"params_nonembed": float(n), "shape": shape, "train_tokens": float(tokens),
               "inference_flops_per_video": accounting.inference_flops_per_video(
                   full, self.n_ctx, self.calls, self.guidance)}
        if self.law.get("loss"):
            out["loss"] = float(loss_law.predict_loss(self.law["loss"], n / BILLION,
                                                      tokens / BILLION))
        return out


def tradeoff_table(cost: Costing, n_opt: float, max_params: float | None) -> list[dict]:
    """One row per fraction of N_opt: loss penalty (when the law has a loss) and
    inference FLOPs per video relative to N_opt; ``within_max_params`` marks the rows
    an inference cap allows."""
    top = cost.point(n_opt)
    rows = []
    for frac in FRACTIONS:
        row = {"fraction": frac, **cost.point(frac * n_opt)}
        if "loss" in top:
            row["loss_penalty"] = row["loss"] - top["loss"]
            row["loss_penalty_rel"] = row["loss_penalty"] / top["loss"]
        row["inference_rel"] = row["inference_flops_per_video"] / top["inference_flops_per_video"]
        row["within_max_params"] = max_params is None or frac * n_opt <= max_params
        rows.append(row)
    return rows


def conventional(cost: Costing, law: dict, n_opt: float) -> dict | None:
    """The fixed-HP allocation's N at the same budget, its loss (its own law, when it has
    one) and how much inference the optimal-HP plan saves per video."""
    fixed = fixed_hp_law(law)
    if fixed is None:
        return None
    n_conv = fixed["k"] * cost.budget ** fixed["a"]
    ours, theirs = cost.point(n_opt), cost.point(n_conv)
    out = {"params_nonembed": float(n_conv), "shape": theirs["shape"],
           "train_tokens": theirs["train_tokens"], "source": fixed["source"],
           "params_ratio": float(n_conv / n_opt),
           "inference_flops_per_video": theirs["inference_flops_per_video"],
           "inference_saving": float(1 - ours["inference_flops_per_video"]
                                     / theirs["inference_flops_per_video"])}
    if fixed.get("law"):
        out["loss"] = float(loss_law.predict_loss(fixed["law"], n_conv / BILLION,
                                                  theirs["train_tokens"] / BILLION))
        if "loss" in ours:
            out["loss_difference"] = out["loss"] - ours["loss"]
    return out
