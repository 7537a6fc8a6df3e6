"""Planted-law sweeps: run records synthesised from known laws, for recovery tests.

The planted loss surface over (N, T, eta, B) is
``L = L*(N, T) * (1 + k_lr u^2 + k_batch v^2 + k_cross u v + skew u^3)`` with
``u = log(eta / eta_opt(N, T))`` and ``v = log(B / B_opt(N, T))``, so the optimum is
known exactly: ``eta_opt`` and ``B_opt`` follow the planted power laws and ``L*``
follows the planted loss law. Noise is multiplicative: one offset per run (seed to
seed variation, shared by its whole curve) and one per logged point (evaluation noise).

The sweep mimics the paper's: a grid of learning rates (x1.5 steps) and batch sizes
(x2 steps) per model size, centred near (not on) the optimum at the middle token
count, constant LR, and a validation curve per run so every run gives several T
points. Runs whose LR is far above the optimum diverge (status "diverged", NaN loss).
"""
from __future__ import annotations

import dataclasses

import numpy as np

from scaling_laws.compute import ComputeModel, flops_per_token, to_billions
from scaling_laws.hyperopt import predict_hp
from scaling_laws.loss_law import predict_loss

# A loss law with the paper's exponents whose constants reproduce the paper's reported
# validation losses (0.513 at 1.07B/10B tokens, 0.504 at 0.72B/140B tokens).
PLANTED_LOSS = {"T_c": 1.23e-5, "alpha_T": 0.2917, "N_c": 3.4e-7, "alpha_N": 0.3188,
                "L_inf": 0.4856}
PAPER_ETA = {"alpha": 2e-4, "beta": -0.0453, "gamma": -0.1619}
PAPER_BATCH = {"alpha": 2.1797e4, "beta": 0.8080, "gamma": 0.1906}


@dataclasses.dataclass
class PlantedSweep:
    """Truth and sweep design. Sizes in parameters, tokens in tokens."""

    eta_law: dict = dataclasses.field(default_factory=lambda: dict(PAPER_ETA))
    batch_law: dict = dataclasses.field(default_factory=lambda: dict(PAPER_BATCH))
    loss_law: dict = dataclasses.field(default_factory=lambda: dict(PLANTED_LOSS))
    sizes_params: tuple = (0.017e9, 0.057e9, 0.13e9, 0.26e9, 1.07e9)
    curve_tokens: tuple = (2e9, 3e9, 4e9, 6e9, 8e9, 12e9)
    lr_steps: tuple = (-3, -2, -1, 0, 1, 2, 3)      # powers of 1.5
    batch_steps: tuple = (-2, -1, 0, 1, 2)          # powers of 2
    grid_offset: tuple = (1.17, 0.83)               # grid centre / true optimum (eta, B)
    tokens_per_sample: int = 1280
    k_lr: float = 0.02
    k_batch: float = 0.01
    k_cross: float = 0.004
    skew: float = 0.0
    noise_run: float = 1e-3     # relative, per run
    noise_point: float = 3e-4   # relative, per logged point
    diverge_lr_factor: float = 4.0  # runs with eta > this x eta_opt(N, T_final) diverge
    compute: ComputeModel = dataclasses.field(default_factory=ComputeModel)
    # Realism (all off by default, so the symmetric recovery design is unchanged):
    lr_asymmetry: float = 0.0       # a of the Linex valley in u: high-lr side e^(a u) steeper
    batch_asymmetry: float = 0.0    # the same in v (large-batch side steeper for a > 0)
    lr_batch_coupling: float = 0.0  # c: the lr valley runs along u = c v (eta_opt grows with B)
    noise_df: float | None = None   # Student-t noise with this many degrees of freedom
    size_grid_offsets: tuple | None = None  # per-size (eta, B) grid centre / optimum

    @classmethod
    def recovery(cls, **overrides) -> "PlantedSweep":
        """The planted-law recovery design used by the tests and docs/scaling_laws.md:
        six sizes 0.017B..1.07B, curves from 1B to 16B tokens, 7 x 5 (eta, B) grid,
        noise 0.02% per run and 0.01% per logged point."""
        design = dict(sizes_params=(0.017e9, 0.036e9, 0.057e9, 0.13e9, 0.26e9, 1.07e9),
                      curve_tokens=(1e9, 1.5e9, 2e9, 3e9, 4e9, 6e9, 8e9, 12e9, 16e9),
                      noise_run=2e-4, noise_point=1e-4)
        return cls(**{**design, **overrides})

    @classmethod
    def realistic(cls, **overrides) -> "PlantedSweep":
        """A surface shaped like published LR x batch sweeps, not like the fitter's model.

        A Linex valley ``2 (e^(a u) - 1 - a u) / a^2`` (about u^2 near the optimum, the
        high-lr side e^(2u) times steeper, so ~4x steeper at 3x the optimal eta than at
        a third of it), divergence beyond 3x the optimal eta, an lr valley that moves
        with the batch (``u = log(eta / eta_opt) - 0.3 v``), Student-t noise (4 degrees
        of freedom) of 0.3% per run, and grids centred off the optimum by a different
        factor at every size (up to 1.6x in eta and 1.5x in B).
        """
        design = dict(k_lr=0.02, lr_asymmetry=2.0, k_batch=0.01, batch_asymmetry=0.7,
                      k_cross=0.0, lr_batch_coupling=0.3, diverge_lr_factor=3.0,
                      noise_run=3e-3, noise_point=3e-4, noise_df=4.0,
                      size_grid_offsets=((1.6, 0.7), (0.8, 1.4), (1.3, 1.0), (0.7, 0.67),
                                         (1.5, 1.5)))
        return cls(**{**design, **overrides})

    def truth_n_opt(self, compute, budgets_flops) -> tuple[float, float]:
        """(k, a) of the planted loss law's N_opt(C) over ``budgets_flops``."""
        from scaling_laws.allocation import fit_allocation, optimal_params
        n_opt = optimal_params(lambda n, t: predict_loss(self.loss_law, n, t), compute,
                               budgets_flops)
        k, a = fit_allocation(budgets_flops, n_opt)
        return float(k), float(a)

    def eta_opt(self, n_billion, t_billion):
        return predict_hp(self.eta_law, n_billion, t_billion)

    def batch_opt(self, n_billion, t_billion):
        return predict_hp(self.batch_law, n_billion, t_billion)

    def loss(self, n_billion, t_billion, lr, batch_tokens):
        """Noise-free planted loss."""
        u, v = self._uv(n_billion, t_billion, lr, batch_tokens)
        shape = (1 + self.k_lr * _linex(u, self.lr_asymmetry)
                 + self.k_batch * _linex(v, self.batch_asymmetry) + self.k_cross * u * v
                 + self.skew * u ** 3)
        return predict_loss(self.loss_law, n_billion, t_billion) * shape

    def _uv(self, n_billion, t_billion, lr, batch_tokens):
        v = np.log(batch_tokens / self.batch_opt(n_billion, t_billion))
        u = np.log(lr / self.eta_opt(n_billion, t_billion)) - self.lr_batch_coupling * v
        return u, v

    def _noise(self, rng, scale: float) -> float:
        if self.noise_df is None:
            return rng.normal(0.0, scale)
        # Unit-variance Student-t: heavy tails at the same standard deviation.
        df = self.noise_df
        return scale * rng.standard_t(df) * np.sqrt((df - 2) / df)

    def shape(self, params: float) -> tuple[int, int, int]:
        """(num_layers, hidden_size, params_nonembed) near ``params``, 16 L d^2 exact."""
        hidden = max(64, int(round(float(self.compute.hidden_size(params)) / 64)) * 64)
        layers = max(1, int(round(params / (16 * hidden ** 2))))
        return layers, hidden, 16 * layers * hidden ** 2

    def records(self, seed: int = 0) -> list[dict]:
        """One run record per (size, eta, B), with a val_loss_curve; field names as run.json."""
        rng = np.random.default_rng(seed)
        t_final = max(self.curve_tokens)
        t_mid = float(np.exp(np.mean(np.log(self.curve_tokens))))
        out = []
        for index, params in enumerate(self.sizes_params):
            layers, hidden, n_params = self.shape(params)
            n_b = float(to_billions(n_params))
            offset = (self.size_grid_offsets[index % len(self.size_grid_offsets)]
                      if self.size_grid_offsets else self.grid_offset)
            lr_centre = self.eta_opt(n_b, to_billions(t_mid)) * offset[0]
            b_centre = self.batch_opt(n_b, to_billions(t_mid)) * offset[1]
            for i in self.lr_steps:
                for j in self.batch_steps:
                    lr = float(lr_centre * 1.5 ** i)
                    samples = max(1, int(round(b_centre * 2.0 ** j / self.tokens_per_sample)))
                    out.append(self._one_run(rng, n_params, layers, hidden, lr, samples, t_final))
        return out

    def _one_run(self, rng, n_params, layers, hidden, lr, samples, t_final) -> dict:
        n_b = float(to_billions(n_params))
        batch_tokens = samples * self.tokens_per_sample
        run_noise = self._noise(rng, self.noise_run)
        curve = []
        for t in sorted(self.curve_tokens):
            clean = self.loss(n_b, float(to_billions(t)), lr, batch_tokens)
            noisy = clean * np.exp(run_noise + self._noise(rng, self.noise_point))
            curve.append({"tokens": int(t), "val_loss": float(noisy)})
        u_final, _ = self._uv(n_b, float(to_billions(t_final)), lr, batch_tokens)
        diverged = u_final > np.log(self.diverge_lr_factor)
        run_id = f"N{n_params:.3g}_lr{lr:.3g}_bs{samples}"
        return {
            "run_id": run_id, "params_nonembed": int(n_params),
            "params_total": int(n_params * 1.02), "hidden_size": hidden, "num_layers": layers,
            "tokens_per_sample": self.tokens_per_sample, "train_tokens": int(t_final),
            "batch_tokens": int(batch_tokens), "batch_samples": samples, "lr": lr,
            "val_loss": float("nan") if diverged else curve[-1]["val_loss"],
            "status": "diverged" if diverged else "completed",
            "val_loss_curve": [] if diverged else curve[:-1],
            "flops": float(flops_per_token(n_params, self.tokens_per_sample, hidden) * t_final),
        }


def _linex(u, a: float):
    """``2 (e^(a u) - 1 - a u) / a^2``: u^2 near 0, steeper on the side a points to."""
    if a == 0:
        return u ** 2
    return 2.0 * (np.expm1(a * u) - a * u) / a ** 2
