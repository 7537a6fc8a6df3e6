"""The plan as a picture (``--plot PNG``): the inference trade-off and the layout ranking.

Left: inference FLOPs per video against model size at the same budget (0.5x .. 1x
N_opt), the loss penalty on a second axis when the law has a loss part, the
conventional (fixed-HP) size and the ``--max-params`` cap marked. Right, with
``--gpus``: the fastest fitting layouts, days against memory per GPU.
"""
from __future__ import annotations

import pathlib

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from scaling_laws.compute import BILLION  # noqa: E402

from ..utils.atomic_io import save_figure_atomic  # noqa: E402


def _tradeoff(ax, plan: dict) -> None:
    rows = plan["tradeoff"]
    n = [r["params_nonembed"] / BILLION for r in rows]
    ax.plot(n, [r["inference_flops_per_video"] for r in rows], "o-", label="inference / video")
    ax.set_xscale("log")
    ax.set_xlabel("non-embedding params (B, log scale)")
    ax.set_ylabel("inference FLOPs per video")
    conv = plan.get("conventional")
    if conv:
        ax.axvline(conv["params_nonembed"] / BILLION, color="grey", ls="--",
                   label=f"fixed-HP law {conv['params_nonembed'] / BILLION:.3g}B")
        ax.plot([conv["params_nonembed"] / BILLION], [conv["inference_flops_per_video"]],
                "s", color="grey")
    if plan.get("capped_by_max_params"):
        ax.axvline(plan["params_nonembed"] / BILLION, color="red", ls=":", label="--max-params")
    if "loss_penalty" in rows[0]:
        twin = ax.twinx()
        twin.plot(n, [100 * r["loss_penalty_rel"] for r in rows], "^-", color="C1",
                  label="loss penalty")
        twin.set_ylabel("loss penalty vs N_opt (%)")
        twin.legend(loc="upper center", fontsize=8)
    ax.set_title(f"C = {plan['budget_flops']:.3g} FLOPs: size vs inference")
    ax.legend(loc="upper left", fontsize=8)


def _layouts(ax, plan: dict) -> None:
    ranked = plan["layouts_ranked"]
    labels = [r["layout"].replace(" recompute=", "\nrecompute=") for r in ranked]
    y = range(len(ranked))
    ax.barh(list(y), [r["est_days"] for r in ranked], color="C2")
    ax.set_yticks(list(y), labels, fontsize=6)
    ax.invert_yaxis()
    ax.set_xlabel("training days")
    for i, r in enumerate(ranked):
        ax.text(r["est_days"], i, f" {r['memory_gib']:.0f} GiB", va="center", fontsize=7)
    ax.set_title(f"fastest fitting layouts on {plan['num_gpus']} x {plan['gpu']}")


def write_plot(plan: dict, target: pathlib.Path) -> None:
    """Save atomically: a reader sees the old file or the whole new one."""
    with_layout = bool(plan.get("layouts_ranked"))
    fig, axes = plt.subplots(1, 2 if with_layout else 1, figsize=(13 if with_layout else 6.5, 4.5))
    axes = axes if with_layout else [axes]
    _tradeoff(axes[0], plan)
    if with_layout:
        _layouts(axes[1], plan)
    fig.tight_layout()
    try:
        save_figure_atomic(fig, target, dpi=90)
    finally:
        plt.close(fig)
