"""`<out>/report.md` and the console headline of a sweep."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from ..utils.atomic_io import write_json_atomic, write_text_atomic
from .spec import SweepSpec


def _fmt(x, spec=".4g") -> str:
    return "-" if x is None else format(x, spec)


def interior_fraction(law: dict | None) -> tuple[int, int]:
    """(cells whose fitted optimum lies inside their grid, cells) from law.json's diagnostics."""
    cells = ((law or {}).get("diagnostics") or {}).get("cells") or []
    return sum(1 for c in cells if c.get("status") == "ok"), len(cells)


def headline(val: dict, law: dict | None) -> list[str]:
    inside, cells = interior_fraction(law)
    lines = [f"law usable: {val['law_usable']}"
             + ("" if val["law_usable"] else f" ({'; '.join(val['unusable_reasons'])})"),
             f"cells with an interior optimum: {inside}/{cells}" if law else
             "cells with an interior optimum: - (no law.json)",
             f"seed noise (rel sd): {_fmt(val['seed_noise_rel'], '.2%')}"]
    if val.get("measured_val_loss") is not None:
        lines += [f"held-out N={val['heldout_params_nonembed']:,} T={val['heldout_train_tokens']:,}: "
                  f"predicted loss {_fmt(val['predicted_val_loss'])}, measured "
                  f"{_fmt(val['measured_val_loss'])}, rel error {_fmt(val['loss_rel_error'], '+.2%')}",
                  f"lr steps off {val['lr_steps_off']}, batch steps off {val['batch_steps_off']}, "
                  f"loss cost of the predicted setting {_fmt(val['loss_cost_of_predicted'], '.2%')}"]
    return lines


def _law_text(out: Path) -> str:
    if not (out / "law.json").exists():
        return "(no law.json: the fit failed, see fit.log)"
    proc = subprocess.run([sys.executable, "-m", "scaling_laws", "report", str(out / "law.json")],
                          capture_output=True, text=True)
    return proc.stdout + proc.stderr


def best_runs(out: Path) -> list[str]:
    """Best completed grid run per model size: does the loss fall with size?"""
    best = {}
    for path in sorted((out / "runs").glob("*/run.json")):
        rec = json.loads(path.read_text())
        n, loss = rec.get("params_nonembed"), rec.get("val_loss")
        if rec.get("status") == "completed" and loss is not None and (n not in best or loss < best[n]["val_loss"]):
            best[n] = rec
    rows = ["| N (non-embedding) | best val loss | its lr | its batch (samples) | run |",
            "|---|---|---|---|---|"]
    rows += [f"| {n:,} | {r['val_loss']:.5f} | {r['lr']:g} | {r['batch_samples']} | {r['run_id']} |"
             for n, r in sorted(best.items())]
    return rows


def loss_by_size_and_tokens(out: Path) -> dict:
    """{N: {fraction of the run's tokens: best val loss over the size's grid runs}}, the
    fractions being each run's evaluation points (cooldown branches and the end) rounded
    to quarters."""
    best: dict = {}
    for path in sorted((out / "runs").glob("*/run.json")):
        rec = json.loads(path.read_text())
        if rec.get("status") != "completed" or not rec.get("train_tokens"):
            continue
        row = best.setdefault(rec["params_nonembed"], {})
        for point in rec.get("val_loss_curve") or []:
            if point.get("tokens") and point.get("val_loss") is not None:
                frac = round(4 * point["tokens"] / rec["train_tokens"]) / 4
                row[frac] = min(row.get(frac, float("inf")), point["val_loss"])
    return best


def scaling_checks(out: Path, noise: float | None) -> tuple[list[str], dict]:
    """Does the loss fall with size (by how many seed-noise sds) and with tokens?"""
    best = loss_by_size_and_tokens(out)
    sizes = sorted(best)
    fracs = sorted({f for row in best.values() for f in row})
    rows = ["| N (non-embedding) | " + " | ".join(f"best loss at {f:g} T" for f in fracs)
            + " | falls with tokens |", "|---" * (len(fracs) + 2) + "|"]
    falls = {}
    for n in sizes:
        values = [best[n].get(f) for f in fracs]
        known = [v for v in values if v is not None]
        falls[n] = all(b < a for a, b in zip(known, known[1:]))
        rows.append(f"| {n:,} | " + " | ".join(_fmt(v, ".5f") for v in values)
                    + f" | {'yes' if falls[n] else 'no'} |")
    finals = [min(best[n].values()) for n in sizes]
    drops = [a / b - 1 for a, b in zip(finals, finals[1:])]
    summary = {"loss_falls_with_tokens_at_every_size": bool(sizes) and all(falls.values()),
               "size_drops_rel": drops,
               "smallest_size_drop_over_noise": (min(drops) / noise) if drops and noise else None}
    rows += ["", "Best loss (any token point) from one size to the next: "
             + (", ".join(f"{d:+.2%}" for d in drops) or "-")
             + (f"; the smallest drop is {summary['smallest_size_drop_over_noise']:.1f}x the seed "
                f"noise ({noise:.2%})" if summary["smallest_size_drop_over_noise"] is not None else "")]
    return rows, summary


def _sizes_table(spec: SweepSpec, levels: dict) -> list[str]:
    rows = ["| size | N (non-embedding) | train tokens | lr levels | batch levels (samples) |",
            "|---|---|---|---|---|"]
    for s in spec.sizes:
        lrs, batches = levels[s.name]
        rows.append(f"| {s.name} | {s.params_nonembed(spec.base):,} | {s.train_tokens:,} | "
                    f"{', '.join(f'{x:g}' for x in lrs)} | {', '.join(map(str, batches))} |")
    h = spec.heldout
    rows.append(f"| {h.name} (held out) | {h.params_nonembed(spec.base):,} | {h.train_tokens:,} | "
                "predicted +- 1 step | predicted +- 1 step |")
    return rows


def write_report(out: Path, spec: SweepSpec, levels: dict, notes: list, progress, val: dict,
                 law: dict | None, plan_text: str, noise_losses: list) -> Path:
    plots = sorted((out / "plots").glob("*.png")) if (out / "plots").exists() else []
    lines = [f"# Sweep report: {out}", "", f"Sweep file: `{spec.source}`.", "", "## Headline", ""]
    lines += [f"- {x}" for x in headline(val, law)]
    lines += ["", "## Sizes and grids", ""] + _sizes_table(spec, levels)
    lines += ["", "## Best run per size", ""] + best_runs(out)
    lines += ["", "## Loss against size and tokens", ""]
    lines += scaling_checks(out, val.get("seed_noise_rel"))[0]
    lines += ["", "## Grid growth (bracketing)", ""]
    lines += [f"- {n}" for n in notes] or ["- every best run was interior: no point added"]
    lines += ["", "## Excluded runs", ""]
    lines += [f"- diverged (excluded from the fit): {', '.join(progress.diverged) or 'none'}",
              f"- failed (see their stdout.log): {', '.join(progress.failed) or 'none'}"]
    lines += ["", "## Seed noise", "",
              f"Centre run repeated with seeds {list(spec.noise_seeds)}: final val losses "
              f"{[_fmt(x, '.5f') for x in noise_losses]}, rel sd {_fmt(val['seed_noise_rel'], '.2%')}."]
    lines += ["", "## Held-out check (validation.json)", "", "| key | value |", "|---|---|"]
    lines += [f"| {k} | {v} |" for k, v in val.items() if k != "runs"]
    lines += ["", "## Fitted laws", "", "```", _law_text(out).rstrip(), "```"]
    lines += ["", "## Plots", ""] + [f"![{p.stem}](plots/{p.name})" for p in plots]
    lines += ["", "## Plan", "", "```", plan_text.rstrip(), "```", ""]
    path = out / "report.md"
    write_text_atomic(path, "\n".join(lines))
    write_json_atomic(out / "sweep_state.json",
                      {"levels": levels, "bracketing": notes, "diverged": progress.diverged,
                       "failed": progress.failed})
    return path
