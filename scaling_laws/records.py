"""Run records: loading, validation, exclusion accounting, expansion into loss points.

A run record is the JSON object the training CLI writes to ``<run-dir>/run.json``
(field names carry their units). Sources accepted by :func:`load_records`:
a directory (searched recursively for ``run.json`` and wandb offline runs,
``wandb/offline-run-*/files/{run.json, wandb-summary.json}``; other ``*.jsonl`` such as
the trainer's ``metrics.jsonl`` are not records), a ``.jsonl`` file (one record a line)
or a ``.json`` file (one record or a list).

Contract of :func:`prepare`: failed, diverged or unfinished runs and non-finite losses
are *excluded and counted* (``RunSet.excluded``), never dropped silently. A run with a
``val_loss_curve`` contributes one point per logged token count (constant LR makes
every checkpoint a valid shorter run, as in the paper), plus its final point.
"""
from __future__ import annotations

import collections
import dataclasses
import json
import math
import pathlib

import numpy as np

REQUIRED = ("run_id", "params_nonembed", "params_total", "hidden_size", "num_layers",
            "tokens_per_sample", "train_tokens", "batch_tokens", "batch_samples", "lr",
            "val_loss", "status")
GOOD_STATUS = "completed"


SOURCE_KEY = "_source"
"""Set by :func:`load_records` on each record: the file (and line) it came from."""
_NUMERIC = ("params_nonembed", "params_total", "hidden_size", "num_layers",
            "tokens_per_sample", "train_tokens", "batch_tokens", "batch_samples", "lr")


def _tagged(obj, where: str) -> dict:
    if not isinstance(obj, dict):
        raise ValueError(f"{where}: a run record must be a JSON object, got "
                         f"{type(obj).__name__}")
    return {**obj, SOURCE_KEY: where}


def _read_json_file(path: pathlib.Path) -> list[dict]:
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise ValueError(f"{path}: not a UTF-8 text file ({err})") from err
    if path.suffix == ".jsonl":
        rows = []
        for line_no, line in enumerate(text.splitlines(), 1):
            if line.strip():
                try:
                    rows.append(_tagged(json.loads(line), f"{path}:{line_no}"))
                except json.JSONDecodeError as err:
                    raise ValueError(f"{path}:{line_no}: not valid JSON ({err})") from err
        return rows
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: not valid JSON ({err})") from err
    if isinstance(obj, list):
        return [_tagged(o, f"{path}[{i}]") for i, o in enumerate(obj)]
    return [_tagged(obj, str(path))]


def _wandb_record(files_dir: pathlib.Path) -> list[dict]:
    """A wandb offline run's record: its run.json, else its summary if it has the fields."""
    if (files_dir / "run.json").exists():
        return _read_json_file(files_dir / "run.json")
    summary = files_dir / "wandb-summary.json"
    if summary.exists():
        found = _read_json_file(summary)
        return [r for r in found if "run_id" in r or "val_loss" in r]
    return []


def where(rec: dict) -> str:
    """``run 'id' (file)`` for messages."""
    source = f" ({rec[SOURCE_KEY]})" if SOURCE_KEY in rec else ""
    return f"run {rec.get('run_id', '?')!r}{source}"


def load_records(source) -> list[dict]:
    """Read every run record under ``source`` (a path or a list of paths)."""
    if isinstance(source, (list, tuple)):
        return [r for s in source for r in load_records(s)]
    path = pathlib.Path(source)
    if not path.exists():
        raise ValueError(f"run records not found: {path}")
    if path.is_file():
        records = _read_json_file(path)
    else:
        records = []
        for f in sorted(path.rglob("*")):
            in_wandb = "wandb" in f.parts and any(p.startswith("offline-run-") for p in f.parts)
            if in_wandb:
                if f.is_dir() and f.name == "files" and f.parent.name.startswith("offline-run-"):
                    records += _wandb_record(f)
            elif f.is_file() and f.name == "run.json":
                records += _read_json_file(f)
    if not records:
        raise ValueError(f"no run records found under {path} (looked for run.json and "
                         "wandb/offline-run-*/files; pass .jsonl files explicitly)")
    return records


def _dedupe(records: list[dict]) -> list[dict]:
    """The same run may be read twice (run dir and wandb copy): keep one, refuse conflicts."""
    by_id: dict[str, dict] = {}
    for rec in records:
        rid = str(rec.get("run_id", ""))
        if rid in by_id:
            old = by_id[rid]
            same = (old.get("val_loss") == rec.get("val_loss") or
                    all(isinstance(v, float) and math.isnan(v)
                        for v in (old.get("val_loss"), rec.get("val_loss"))))
            if not same or old.get("status") != rec.get("status"):
                raise ValueError(f"run_id {rid!r} appears twice with different results "
                                 f"(val_loss {old.get('val_loss')} in {old.get(SOURCE_KEY)} vs "
                                 f"{rec.get('val_loss')} in {rec.get(SOURCE_KEY)})")
            continue
        by_id[rid] = rec
    return list(by_id.values())


def _check_fields(records: list[dict]) -> None:
    """Every field present (batch_tokens derivable), token bookkeeping reconcilable."""
    contexts = {r.get("tokens_per_sample") for r in records}
    mixed = len(contexts) > 1
    for rec in records:
        if "batch_tokens" not in rec and not mixed and None not in contexts \
                and "batch_samples" in rec:
            rec["batch_tokens"] = rec["batch_samples"] * rec["tokens_per_sample"]
        if rec.get("status", GOOD_STATUS) != GOOD_STATUS and "run_id" in rec:
            continue  # excluded by status later; a failed run may lack its loss (wandb)
        missing = [k for k in REQUIRED if k not in rec]
        if missing:
            hint = ""
            if mixed and "batch_tokens" in missing:
                hint = (" (tokens_per_sample differs between runs "
                        f"{sorted(map(str, contexts))}, so batch_tokens cannot be "
                        "derived from batch_samples)")
            raise ValueError(f"{where(rec)} lacks required fields {missing}{hint}")
        _check_types(rec)
    if mixed:
        bad = [r["run_id"] for r in records if r.get("status") == GOOD_STATUS
               and r["batch_tokens"] != r["batch_samples"] * r["tokens_per_sample"]]
        if bad:
            raise ValueError(
                f"runs mix tokens_per_sample {sorted(map(str, contexts))} and batch_tokens != "
                f"batch_samples * tokens_per_sample for {bad[:5]}: batch sizes in tokens "
                "cannot be reconciled")


def _check_types(rec: dict) -> None:
    """Wrong types are malformed records, not exclusions: name the file and the key."""
    for key in _NUMERIC:
        value = rec[key]
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError(f"{where(rec)}: {key} must be a number, got {value!r}")
    loss = rec["val_loss"]
    if loss is not None and (isinstance(loss, bool) or not isinstance(loss, (int, float))):
        raise ValueError(f"{where(rec)}: val_loss must be a number (or null/NaN for a run "
                         f"without one), got {loss!r}")
    if not isinstance(rec["status"], str) or not isinstance(rec["run_id"], (str, int)):
        raise ValueError(f"{where(rec)}: run_id and status must be strings, got "
                         f"{rec['run_id']!r} and {rec['status']!r}")
    curve = rec.get("val_loss_curve")
    if curve is not None and not (isinstance(curve, list)
                                  and all(isinstance(p, dict) for p in curve)):
        raise ValueError(f"{where(rec)}: val_loss_curve must be a list of "
                         "{tokens, val_loss} objects")


def _finite_positive(x) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x) and x > 0


@dataclasses.dataclass
class RunSet:
    """Usable runs as arrays (one row per run) and their loss points (one row per point).

    Run arrays: ``run_id, params_nonembed, hidden_size, tokens_per_sample, lr,
    batch_tokens, train_tokens``. Point arrays: ``point_run`` (row into the run
    arrays), ``point_tokens``, ``point_loss``. ``excluded`` maps reason -> run ids.
    """

    run_id: np.ndarray
    params_nonembed: np.ndarray
    hidden_size: np.ndarray
    tokens_per_sample: np.ndarray
    lr: np.ndarray
    batch_tokens: np.ndarray
    train_tokens: np.ndarray
    point_run: np.ndarray
    point_tokens: np.ndarray
    point_loss: np.ndarray
    excluded: dict
    dropped_curve_points: int = 0

    @property
    def num_runs(self) -> int:
        return len(self.run_id)

    def subset(self, keep_runs: np.ndarray) -> "RunSet":
        """Runs where ``keep_runs`` (bool per run) holds, with their points re-indexed."""
        keep_runs = np.asarray(keep_runs, bool)
        new_index = np.cumsum(keep_runs) - 1
        keep_pts = keep_runs[self.point_run]
        arrays = {f.name: getattr(self, f.name)[keep_runs] for f in dataclasses.fields(self)
                  if f.name in ("run_id", "params_nonembed", "hidden_size", "tokens_per_sample",
                                "lr", "batch_tokens", "train_tokens")}
        return RunSet(**arrays, point_run=new_index[self.point_run[keep_pts]],
                      point_tokens=self.point_tokens[keep_pts],
                      point_loss=self.point_loss[keep_pts], excluded=dict(self.excluded),
                      dropped_curve_points=self.dropped_curve_points)


def _curve_points(rec: dict, min_tokens: float) -> tuple[list, list, int]:
    tokens, losses, dropped = [], [], 0
    for pt in rec.get("val_loss_curve") or []:
        t, v = pt.get("tokens"), pt.get("val_loss")
        if t == 0:
            continue  # the evaluation before training: not a point of any (N, T) cell
        if not _finite_positive(t) or not _finite_positive(v):
            dropped += 1
            continue
        if t >= min_tokens and t < rec["train_tokens"]:
            tokens.append(float(t))
            losses.append(float(v))
    return tokens, losses, dropped


def prepare(records: list[dict], use_curves: bool = True, min_curve_tokens: float = 0.0) -> RunSet:
    """Validate records, exclude bad runs (counted), expand into loss points."""
    if not records:
        raise ValueError("no run records given")
    records = _dedupe(records)
    _check_fields(records)
    excluded: dict[str, list] = collections.defaultdict(list)
    runs, pts_run, pts_tok, pts_loss, dropped = [], [], [], [], 0
    for rec in records:
        status = str(rec.get("status"))
        if status != GOOD_STATUS:
            excluded[f"status={status}"].append(rec["run_id"])
            continue
        if not _finite_positive(rec["val_loss"]):
            excluded["non-finite or non-positive val_loss"].append(rec["run_id"])
            continue
        for key in ("params_nonembed", "hidden_size", "tokens_per_sample", "train_tokens",
                    "batch_tokens", "lr"):
            if not _finite_positive(rec[key]):
                raise ValueError(f"{where(rec)}: {key} must be a finite positive number, "
                                 f"got {rec[key]!r}")
        index = len(runs)
        runs.append(rec)
        tokens, losses, n_bad = _curve_points(rec, min_curve_tokens) if use_curves else ([], [], 0)
        dropped += n_bad
        tokens.append(float(rec["train_tokens"]))
        losses.append(float(rec["val_loss"]))
        pts_run += [index] * len(tokens)
        pts_tok += tokens
        pts_loss += losses
    if not runs:
        counts = {k: len(v) for k, v in excluded.items()}
        raise ValueError(f"all {len(records)} runs were excluded ({counts}); nothing to fit")

    def col(key):
        return np.array([r[key] for r in runs], dtype=float)

    return RunSet(run_id=np.array([str(r["run_id"]) for r in runs]),
                  params_nonembed=col("params_nonembed"), hidden_size=col("hidden_size"),
                  tokens_per_sample=col("tokens_per_sample"), lr=col("lr"),
                  batch_tokens=col("batch_tokens"), train_tokens=col("train_tokens"),
                  point_run=np.array(pts_run, dtype=int), point_tokens=np.array(pts_tok),
                  point_loss=np.array(pts_loss), excluded=dict(excluded),
                  dropped_curve_points=dropped)
