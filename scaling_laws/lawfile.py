"""The law file (``law.json``): schema, the ``paper`` preset, save/load, evaluation.

Top-level keys: ``eta_opt`` and ``batch_opt`` (``{alpha, beta, gamma}`` for
``alpha * T^beta * N^gamma``), ``loss`` (``{T_c, alpha_T, N_c, alpha_N, L_inf}`` or
null), ``n_opt`` (``{k, a}`` for ``N_opt = k * C^a``), ``units``, ``ci95`` (the same
shape with ``[low, high]`` pairs, null where unknown), ``compute`` (how C maps to T),
``predictions``, ``diagnostics``, ``baselines``, ``extrapolation``, ``provenance``,
``caveats`` and ``bootstrap_samples`` (the resampled coefficients, so predictions made
later get intervals that respect the coefficients' correlations).
"""
from __future__ import annotations

import datetime
import json
import math
import pathlib

import numpy as np

from megatron_vdit.utils.atomic_io import write_text_atomic
from scaling_laws import hyperopt, loss_law
from scaling_laws.compute import BILLION, UNITS, ComputeModel

SCHEMA = "megatron_vdit.scaling_law/v1"
HP_KEYS = ("alpha", "beta", "gamma")
N_OPT_KEYS = ("k", "a")
REFERENCE_BUDGETS_FLOPS = (1e20, 5.85e20, 1e22, 1e24)

PAPER_CAVEATS = [
    "Published coefficients of Yin et al. (CVPR 2025); units inferred (N, T in billions, "
    "B in tokens) from the paper's 1.07B grid, not stated by the authors.",
    "Fitted on 0.017B-0.26B Cross-DiT models, 17x256x256 Panda-70M clips, DDPM "
    "noise prediction, constant LR; checked only up to about 4x the largest fitted model.",
    "N_opt uses the published 0.8705 * C^0.4294, which reproduces the paper's validation "
    "points; a second published fit, 1.5787 * C^0.4146, does not.",
    "The published loss-law coefficients (T_c=0.0373, alpha_T=0.2917, N_c=0.0082, "
    "alpha_N=0.3188, L_inf=0.4856) reproduce none of the paper's reported losses in any "
    "units, so this preset carries no loss law and predicts no loss.",
    "Validation loss is the only metric (no FVD); a different backbone, data set, "
    "resolution, clip length or LR schedule needs its own sweep.",
]


def paper_law() -> dict:
    """The ``paper`` preset: published hyperparameter and allocation laws, no loss law."""
    nulls = {"alpha": None, "beta": None, "gamma": None}
    return {
        "schema": SCHEMA, "kind": "preset", "name": "paper",
        "eta_opt": {"alpha": 2e-4, "beta": -0.0453, "gamma": -0.1619},
        "batch_opt": {"alpha": 2.1797e4, "beta": 0.8080, "gamma": 0.1906},
        "loss": None,
        "n_opt": {"k": 0.8705, "a": 0.4294},
        "units": dict(UNITS),
        "ci95": {"eta_opt": dict(nulls), "batch_opt": dict(nulls), "loss": None,
                 "n_opt": {"k": None, "a": None}},
        "compute": ComputeModel().to_json(),
        "diagnostics": {"published_loss_unverified": {
            "T_c": 0.0373, "alpha_T": 0.2917, "N_c": 0.0082, "alpha_N": 0.3188,
            "L_inf": 0.4856}},
        "provenance": {"source": "Yin et al., \"Towards Precise Scaling Laws for Video "
                                 "Diffusion Transformers\", CVPR 2025, arXiv 2411.17470"},
        "caveats": list(PAPER_CAVEATS),
    }


def load_law(spec) -> dict:
    """``"paper"`` or a path to a law.json, checked against the schema (:func:`check_law`)."""
    if isinstance(spec, dict):
        return spec
    if str(spec) == "paper":
        return paper_law()
    path = pathlib.Path(spec)
    if not path.exists():
        raise ValueError(f"law file not found: {path} (or use the preset 'paper')")
    if not path.is_file():
        raise ValueError(f"{path} is not a law file: not a regular file")
    try:
        law = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"{path} is not a law file: not valid JSON ({err})") from err
    if not isinstance(law, dict):
        raise ValueError(f"{path} is not a law file: top level is a {type(law).__name__}, "
                         "not an object")
    missing = [k for k in ("eta_opt", "batch_opt", "n_opt", "units") if k not in law]
    if missing:
        raise ValueError(f"{path} is not a law file: missing {missing}")
    check_law(law, str(path))
    return law


# Load-time schema: (key, test, what the test asks). Exponent ranges are wide enough for
# any fit a sweep gives and narrow enough to catch a typo or a sign flip.
_POSITIVE = (lambda x: x > 0, "> 0")
_HP_EXPONENT = (lambda x: -2 < x < 2, "in (-2, 2)")
_LAW_SCHEMA = {
    "eta_opt": {"alpha": _POSITIVE, "beta": _HP_EXPONENT, "gamma": _HP_EXPONENT},
    "batch_opt": {"alpha": _POSITIVE, "beta": _HP_EXPONENT, "gamma": _HP_EXPONENT},
    "n_opt": {"k": _POSITIVE, "a": (lambda x: 0 < x < 1, "in (0, 1)")},
    "loss": {"T_c": _POSITIVE, "alpha_T": (lambda x: 0 < x <= 5, "in (0, 5]"),
             "N_c": _POSITIVE, "alpha_N": (lambda x: 0 < x <= 5, "in (0, 5]"),
             "L_inf": (lambda x: x >= 0, ">= 0")},
}


# Parts that reports and the planner read; null or absent is fine.
_OPTIONAL_TYPES = {"units": dict, "ci95": dict, "compute": dict, "diagnostics": dict,
                   "baselines": dict, "extrapolation": dict, "provenance": dict,
                   "caveats": list, "predictions": list}


def _is_number(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def _check_part(law: dict, where: str, key: str) -> None:
    part = law[key]
    if not isinstance(part, dict):
        raise ValueError(f"{where}: law key {key!r} must be an object of "
                         f"{list(_LAW_SCHEMA[key])}, got {part!r}")
    for name, (test, need) in _LAW_SCHEMA[key].items():
        value = part.get(name)
        if not _is_number(value) or not test(value):
            raise ValueError(f"{where}: law key {key}.{name} = {value!r} must be a finite "
                             f"number {need}")


def _check_samples(law: dict, where: str) -> None:
    samples = law.get("bootstrap_samples") or {}
    if not isinstance(samples, dict):
        raise ValueError(f"{where}: law key 'bootstrap_samples' must be an object")
    for key, rows in samples.items():
        width = len(_LAW_SCHEMA.get(key, ()))
        if not width:
            continue  # samples of a part no consumer evaluates
        ok = isinstance(rows, list) and all(
            isinstance(r, list) and len(r) == width
            and all(v is None or _is_number(v) for v in r) for r in rows)
        if not ok:
            raise ValueError(f"{where}: law key bootstrap_samples.{key} must be a list of "
                             f"rows of {width} numbers (null where unknown)")


def check_law(law: dict, where: str = "law") -> None:
    """Refuse a law no consumer can use: each coefficient finite, of the right sign and in a
    plausible range, naming the key (``ValueError``). Fit-time quality gates are separate."""
    if law.get("schema", SCHEMA) != SCHEMA:
        raise ValueError(f"{where}: law key 'schema' = {law['schema']!r}, expected {SCHEMA!r}")
    if law.get("usable") is False:
        return  # a fit that failed its quality gates: reportable, and the planner refuses it
    for key in ("eta_opt", "batch_opt", "n_opt"):
        _check_part(law, where, key)
    if law.get("loss") is not None:
        _check_part(law, where, "loss")
    compute = law.get("compute")
    try:
        model = ComputeModel.from_json(compute)
        values = (model.tokens_per_sample, model.hidden_coef, model.hidden_exponent)
        good = (all(map(_is_number, values)) and model.tokens_per_sample > 0
                and model.hidden_coef > 0 and 0 < model.hidden_exponent < 1)
    except (KeyError, TypeError, ValueError):
        good = False
    if not good:
        raise ValueError(f"{where}: law key 'compute' = {compute!r} must hold tokens_per_sample "
                         "> 0 and hidden_size_rule {coef > 0, 0 < exponent < 1}")
    for key, kind in _OPTIONAL_TYPES.items():
        if law.get(key) is not None and not isinstance(law[key], kind):
            raise ValueError(f"{where}: law key {key!r} must be a JSON "
                             f"{'object' if kind is dict else 'list'}, got {law[key]!r:.60}")
    _check_samples(law, where)


def to_jsonable(obj):
    if isinstance(obj, dict):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return to_jsonable(obj.tolist())
    if isinstance(obj, (np.floating, float)):
        return None if not np.isfinite(obj) else float(f"{float(obj):.7g}")
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, np.bool_):
        return bool(obj)
    return obj


def save_law(law: dict, path) -> None:
    """Write ``law`` to ``path`` atomically (a reader sees the old file or the new one)."""
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(path, json.dumps(to_jsonable(law), indent=1, allow_nan=False))


def hp_value(part: dict, n_params, t_tokens):
    """``alpha * T^beta * N^gamma`` with N, T converted from raw counts to billions."""
    return hyperopt.predict_hp(part, np.asarray(n_params, float) / BILLION,
                               np.asarray(t_tokens, float) / BILLION)


def _rows(law: dict, key: str) -> np.ndarray | None:
    samples = (law.get("bootstrap_samples") or {}).get(key)
    if samples is None or len(samples) == 0:
        return None
    arr = np.array(samples, float)
    return arr[np.all(np.isfinite(arr), axis=1)]


def sample_dicts(law: dict, key: str, names):
    """Bootstrap coefficient rows as a dict of arrays, or None."""
    arr = _rows(law, key)
    return None if arr is None or len(arr) < 2 else {k: arr[:, i] for i, k in enumerate(names)}


def ci(values) -> list | None:
    values = np.asarray(values, float)
    values = values[np.isfinite(values)]
    return None if values.size < 2 else [float(v) for v in np.percentile(values, [2.5, 97.5])]


def predict_point(law: dict, n_params: float, t_tokens: float) -> dict:
    """eta, B (tokens), loss at one (N, T) in raw counts, with 95% intervals when known."""
    out = {}
    for key, name in (("eta_opt", "lr"), ("batch_opt", "batch_tokens")):
        out[name] = float(hp_value(law[key], n_params, t_tokens))
        rows = sample_dicts(law, key, HP_KEYS)
        out[name + "_ci95"] = ci(hp_value(rows, n_params, t_tokens)) if rows else None
    if law.get("loss"):
        out["loss"] = float(loss_law.predict_loss(law["loss"], n_params / BILLION,
                                                  t_tokens / BILLION))
        rows = sample_dicts(law, "loss", loss_law.LOSS_KEYS)
        out["loss_ci95"] = ci(loss_law.predict_loss(rows, n_params / BILLION,
                                                    t_tokens / BILLION)) if rows else None
    return out


def n_opt_params(law: dict, budget_flops: float) -> tuple[float, list | None]:
    part = law["n_opt"]
    rows = sample_dicts(law, "n_opt", N_OPT_KEYS)
    value = float(part["k"] * budget_flops ** part["a"])
    return value, (ci(rows["k"] * budget_flops ** rows["a"]) if rows else None)


def stamp(prov: dict) -> dict:
    return {**prov, "created_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(
        timespec="seconds")}
