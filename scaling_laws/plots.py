"""PNG plots of a fit: per-cell heat maps, hyperparameter laws, loss vs T, IsoFLOPs, N_opt(C).

Matplotlib with the Agg backend (no display needed). ``write_all`` takes the law dict
and the raw fit (``pipeline.fit_law(..., return_core=True)``), which holds the cells.
"""
from __future__ import annotations

import pathlib

import matplotlib
import matplotlib.ticker

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from scaling_laws import lawfile, loss_law  # noqa: E402
from scaling_laws.compute import BILLION  # noqa: E402

from megatron_vdit.utils.atomic_io import save_figure_atomic  # noqa: E402



def _save(fig, ax, path: pathlib.Path) -> pathlib.Path:
    """Legend, layout, PNG, close: how every plot here ends."""
    ax.legend(fontsize=8)
    fig.tight_layout()
    save_figure_atomic(fig, path, dpi=90)
    plt.close(fig)
    return path

def _heatmaps(law, core, out: pathlib.Path) -> list:
    paths = []
    sizes = sorted({c.params_nonembed for c in core["cells"]})
    for size in sizes:
        pairs = [(c, s) for c, s in zip(core["cells"], core["surfaces"]) if c.params_nonembed == size]
        pairs.sort(key=lambda p: p[0].tokens)
        cols = min(3, len(pairs))
        nrows = -(-len(pairs) // cols)
        fig, axes = plt.subplots(nrows, cols, figsize=(4.2 * cols, 3.6 * nrows), squeeze=False)
        for ax in axes.flat[len(pairs):]:
            ax.axis("off")
        for ax, (cell, surf) in zip(axes.flat, pairs):
            rel = np.exp(cell.log_loss - cell.log_loss.min()) - 1
            sc = ax.scatter(np.exp(cell.log_lr), np.exp(cell.log_batch), c=100 * rel, s=140,
                            marker="s", cmap="viridis_r", vmin=0, vmax=max(1e-3, 100 * np.percentile(rel, 80)))
            if surf["valid"][0]:
                ax.plot(np.exp(surf["log_lr"][0]), np.exp(surf["log_batch"][0]), "w*", ms=14,
                        mec="k", label="fitted optimum")
            ax.plot(lawfile.hp_value(law["eta_opt"], size, cell.tokens),
                    lawfile.hp_value(law["batch_opt"], size, cell.tokens), "rx", ms=10, mew=2,
                    label="law")
            ax.set(xscale="log", yscale="log", xlabel="eta", title=f"T = {cell.tokens / BILLION:.3g}B")
            ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
            fig.colorbar(sc, ax=ax, label="loss above best [%]")
        for row in axes:
            row[0].set_ylabel("B [tokens]")
        axes[0][0].legend(fontsize=7, loc="lower left")
        fig.suptitle(f"N = {size / BILLION:.4g}B: loss over the (eta, B) grid")
        fig.tight_layout()
        path = out / f"heatmap_N{size / BILLION:.4g}B.png"
        save_figure_atomic(fig, path, dpi=90)
        plt.close(fig)
        paths.append(path)
    return paths


def _hp_laws(law, core, out: pathlib.Path):
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    ok = core["stack"]["valid"][0]
    colors = plt.cm.plasma(np.linspace(0, 0.85, len(np.unique(core["n_C"]))))
    for color, n_b in zip(colors, np.unique(core["n_C"])):
        sel = ok & (core["n_C"] == n_b)
        t_line = np.geomspace(core["t_C"].min(), core["t_C"].max(), 50)
        for ax, key, name in ((axes[0], "eta_opt", "log_lr"), (axes[1], "batch_opt", "log_batch")):
            ax.plot(core["t_C"][sel], np.exp(core["stack"][name][0, sel]), "o", color=color,
                    label=f"N = {n_b:.3g}B")
            ax.plot(t_line, lawfile.hp_value(law[key], n_b * BILLION, t_line * BILLION), "-",
                    color=color)
    for ax, key, ylab in ((axes[0], "eta_opt", "eta_opt"), (axes[1], "batch_opt", "B_opt [tokens]")):
        c = law[key]
        ax.set(xscale="log", yscale="log", xlabel="T [billion tokens]", ylabel=ylab,
               title=f"{c['alpha']:.4g} T^{c['beta']:.4f} N^{c['gamma']:.4f}")
    return _save(fig, axes[0], out / "hp_laws.png")


def _loss_vs_tokens(law, core, out: pathlib.Path):
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    ok = core["stack"]["valid"][0]
    sizes = np.unique(core["n_C"])
    colors = plt.cm.plasma(np.linspace(0, 0.85, len(sizes)))
    t_line = np.geomspace(core["t_C"].min() / 2, core["t_C"].max() * 4, 80)
    fixed = (law.get("baselines") or {}).get("fixed_hp", {}).get("law")
    for color, n_b in zip(colors, sizes):
        sel = ok & (core["n_C"] == n_b)
        ax.plot(core["t_C"][sel], np.exp(core["stack"]["log_loss"][0, sel]), "o", color=color,
                label=f"N = {n_b:.3g}B")
        ax.plot(t_line, loss_law.predict_loss(law["loss"], n_b, t_line), "-", color=color)
        if fixed:
            ax.plot(t_line, loss_law.predict_loss(fixed, n_b, t_line), ":", color=color, lw=1)
    ax.set(xscale="log", xlabel="T [billion tokens]", ylabel="validation loss at optimal (eta, B)",
           title="L(N, T) fit (solid); fixed-HP law (dotted)")
    return _save(fig, ax, out / "loss_vs_tokens.png")


def _isoflop(law, core, out: pathlib.Path):
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    compute = core["compute"]
    budgets = np.geomspace(core["budgets"].min(), core["budgets"].min() * 1e4, 5)
    n_line = np.geomspace(core["n_C"].min() * BILLION / 30, core["n_C"].max() * BILLION * 300, 200)
    for budget, color in zip(budgets, plt.cm.viridis(np.linspace(0, 0.9, len(budgets)))):
        t_line = compute.tokens_for_budget(n_line, budget)
        loss = loss_law.predict_loss(law["loss"], n_line / BILLION, t_line / BILLION)
        ax.plot(n_line, loss, color=color, label=f"C = {budget:.2g}")
        best = np.argmin(loss)
        ax.plot(n_line[best], loss[best], "o", color=color)
    ax.set(xscale="log", xlabel="N [params]", ylabel="predicted loss", title="IsoFLOP curves")
    ax.set_ylim(None, float(np.percentile(ax.get_ylim(), 60)) + 0.02)
    return _save(fig, ax, out / "isoflop.png")


def _n_opt(law, core, out: pathlib.Path):
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    budgets = core["budgets"]
    rows = core["n_opt_RK"]
    lo, hi = np.nanpercentile(rows[1:], [2.5, 97.5], axis=0) if len(rows) > 2 else (None, None)
    if lo is not None:
        ax.fill_between(budgets, lo, hi, alpha=0.3, label="95% bootstrap band")
    ax.plot(budgets, rows[0], "-", label=f"optimal HP: {law['n_opt']['k']:.3g} C^{law['n_opt']['a']:.3f}")
    fixed = (law.get("baselines") or {}).get("fixed_hp", {})
    if fixed.get("k"):
        ax.plot(budgets, fixed["k"] * budgets ** fixed["a"], "--",
                label=f"fixed HP: {fixed['k']:.3g} C^{fixed['a']:.3f}")
    paper = lawfile.paper_law()["n_opt"]
    ax.plot(budgets, paper["k"] * budgets ** paper["a"], ":", color="gray",
            label="paper: 0.8705 C^0.4294")
    ax.set(xscale="log", yscale="log", xlabel="C [FLOPs]", ylabel="N_opt [params]",
           title="compute-optimal model size")
    return _save(fig, ax, out / "n_opt.png")


def write_all(law: dict, core: dict, out_dir) -> list:
    out = pathlib.Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = _heatmaps(law, core, out)
    paths += [_hp_laws(law, core, out), _loss_vs_tokens(law, core, out), _isoflop(law, core, out),
              _n_opt(law, core, out)]
    return paths





def estimator_study(summaries: dict, sizes_billion, path) -> pathlib.Path:
    """``python -m scaling_laws.hp_study --png``: per estimator, the median eta_opt and
    B_opt level over the truth at each size (left, middle) and the median signed error
    of each law exponent (right)."""
    path = pathlib.Path(path)
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    labels = ("eta.gamma", "eta.beta", "batch.gamma", "batch.beta")
    width = 0.8 / max(len(summaries), 1)
    for i, (name, s) in enumerate(summaries.items()):
        for ax, key in zip(axes[:2], ("eta", "batch")):
            ax.plot(sizes_billion, s[f"{key}.level"]["median_ratio_per_size"], "o-", label=name)
        errs = [100 * s[label]["median_rel_error"] for label in labels]
        axes[2].bar(np.arange(len(labels)) + (i - (len(summaries) - 1) / 2) * width,
                    np.clip(errs, -25, 25), width, label=name)
    for ax, key in zip(axes[:2], ("eta_opt", "B_opt")):
        ax.axhline(1.0, color="k", lw=0.8)
        ax.axhspan(0.9, 1.1, color="0.9", zorder=0)
        ax.set_xscale("log")
        ax.set_xlabel("model size N (billion non-embedding parameters)")
        ax.set_ylabel(f"{key} law / truth (median over sweeps)")
    axes[2].axhspan(-3, 3, color="0.9", zorder=0)
    axes[2].set_xticks(np.arange(len(labels)), labels)
    axes[2].set_ylabel("median exponent error, % (clip +-25)")
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    save_figure_atomic(fig, path, dpi=90)
    plt.close(fig)
    return path
