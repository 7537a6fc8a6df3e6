"""Compute accounting and units: the one place scaling_laws defines them.

Units used throughout the package (docs/scaling_laws.md, "Units"):
- hyperparameter and loss laws take ``N`` in **billions of non-embedding parameters**
  and ``T`` in **billions of training tokens**; ``B`` is in **tokens per batch**,
  ``eta`` is absolute;
- the allocation law ``N_opt = k * C^a`` takes ``C`` in **FLOPs** and returns ``N`` in
  **parameters** (not billions);
- run records carry raw counts (``params_nonembed``, ``train_tokens``,
  ``batch_tokens``); conversion to billions happens only at the boundary, through
  :func:`to_billions`.

Training compute per token is one of two accountings (``ACCOUNTINGS``), both defined
in ``megatron_vdit.models.accounting`` (pure Python, no torch), which this module only
vectorises: ``"video"`` (the default), the video-DiT paper's
``C_token = 3/4 * N * (7 + n_ctx / d)`` with ``N`` the non-embedding parameter count,
``n_ctx`` the video tokens per sample and ``d`` the hidden size; and ``"6n"``,
``C_token = 6 N`` (C = 6ND), the language-model convention, so that language-model
sweeps and published allocations can be compared.
"""
from __future__ import annotations

import dataclasses

import numpy as np

from megatron_vdit.models import accounting as _accounting

BILLION = 1e9
ACCOUNTINGS = {"video": "3/4 * N * (7 + tokens_per_sample / hidden_size)", "6n": "6 * N"}

UNITS = {
    "N": "billions of non-embedding parameters (params_nonembed / 1e9)",
    "T": "billions of training tokens (train_tokens / 1e9)",
    "B": "tokens per optimizer step (batch_tokens)",
    "eta": "absolute learning rate",
    "C": "training FLOPs, C = C_token * train_tokens, C_token = 3/4 N (7 + n_ctx/d) "
         "(or 6 N with --compute 6n: compute.accounting)",
    "n_opt_N": "non-embedding parameters (not billions)",
    "loss": "validation loss as logged by the trainer",
}


def to_billions(count):
    """Raw count (parameters or tokens) -> billions, the unit of the N,T laws."""
    return np.asarray(count, dtype=float) / BILLION


def check_accounting(name: str) -> str:
    if name not in ACCOUNTINGS:
        raise ValueError(f"unknown compute accounting {name!r}; choose from {list(ACCOUNTINGS)}")
    return name


def flops_per_token(params_nonembed, tokens_per_sample, hidden_size, accounting="video"):
    """Training FLOPs per token under ``accounting`` (vectorised over numpy arrays).

    ``params_nonembed`` in parameters (not billions), ``tokens_per_sample`` = n_ctx,
    ``hidden_size`` = d (both unused by ``"6n"``).
    """
    n = np.asarray(params_nonembed, dtype=float)
    if check_accounting(accounting) == "6n":
        return _accounting.lm_flops_per_token(n)
    return _accounting.paper_flops_per_token(n, np.asarray(tokens_per_sample, dtype=float),
                                             np.asarray(hidden_size, dtype=float))


def training_flops(params_nonembed, tokens_per_sample, hidden_size, train_tokens,
                   accounting="video"):
    """Total training FLOPs ``C = C_token * T`` (T in tokens)."""
    return flops_per_token(params_nonembed, tokens_per_sample, hidden_size,
                           accounting) * np.asarray(train_tokens, dtype=float)


@dataclasses.dataclass(frozen=True)
class ComputeModel:
    """How compute maps to (N, T) when only N is chosen: ``d = coef * N^exponent``.

    The allocation ``N_opt(C)`` needs ``C_token(N)``, which depends on the hidden size
    through ``n_ctx / d``; this rule supplies ``d`` for a parameter count (N in
    parameters). Fitted laws take it from their run records; the default follows the
    aspect rule ``d/L = 10 (N/1e6)^0.33`` of megatron_vdit's model-shape presets.
    """

    tokens_per_sample: float = 1280.0
    hidden_coef: float = 0.1870
    hidden_exponent: float = 0.4433
    accounting: str = "video"

    def hidden_size(self, params_nonembed):
        return self.hidden_coef * np.asarray(params_nonembed, dtype=float) ** self.hidden_exponent

    def flops_per_token(self, params_nonembed, hidden_size=None):
        """C_token(N); ``hidden_size`` overrides the d(N) rule (a concrete shape's d)."""
        d = self.hidden_size(params_nonembed) if hidden_size is None else hidden_size
        return flops_per_token(params_nonembed, self.tokens_per_sample, d, self.accounting)

    def tokens_for_budget(self, params_nonembed, budget_flops):
        """Training tokens that spend ``budget_flops`` on a model of that size."""
        return np.asarray(budget_flops, dtype=float) / self.flops_per_token(params_nonembed)

    def to_json(self) -> dict:
        return {"tokens_per_sample": self.tokens_per_sample,
                "hidden_size_rule": {"coef": self.hidden_coef, "exponent": self.hidden_exponent,
                                     "form": "hidden_size = coef * params_nonembed^exponent"},
                "accounting": self.accounting, "flops_per_token": ACCOUNTINGS[self.accounting]}

    @classmethod
    def from_json(cls, obj: dict) -> "ComputeModel":
        rule = obj["hidden_size_rule"]
        # Law files written before "accounting" existed used the video formula.
        return cls(float(obj["tokens_per_sample"]), float(rule["coef"]), float(rule["exponent"]),
                   check_accounting(obj.get("accounting", "video")))

    @classmethod
    def fit(cls, params_nonembed, hidden_size, tokens_per_sample,
            accounting: str = "video") -> "ComputeModel":
        """Log-log fit of hidden size on parameter count over the distinct model shapes."""
        shapes = np.unique(np.stack([np.asarray(params_nonembed, float),
                                     np.asarray(hidden_size, float)], axis=1), axis=0)
        n_ctx = float(np.median(np.asarray(tokens_per_sample, float)))
        if len(shapes) < 2 or np.ptp(np.log(shapes[:, 0])) == 0:
            # One shape: keep the default exponent, match its width exactly.
            exponent = cls.hidden_exponent
            coef = float(shapes[0, 1] / shapes[0, 0] ** exponent)
            return cls(n_ctx, coef, exponent, accounting)
        slope, intercept = np.polyfit(np.log(shapes[:, 0]), np.log(shapes[:, 1]), 1)
        return cls(n_ctx, float(np.exp(intercept)), float(slope), accounting)
