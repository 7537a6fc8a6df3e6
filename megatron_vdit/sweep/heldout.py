"""Held-out validation: does the law predict a model it never saw? (`validation.json`)

After the fit, one size at least 2x larger than the largest fitted size is trained at
the law's predicted (lr, batch) and at the four neighbouring grid points (one grid step
each way in lr and in batch). Everything in `validation.json` is judged from these
measured runs, never from a fitted surface:

- `measured_val_loss`: the best of the held-out runs; `best_lr`, `best_batch_tokens`: its
  setting; `lr_steps_off`, `batch_steps_off`: grid steps from the predicted setting to it;
- `loss_rel_error` = predicted / measured - 1 (the law predicts the loss at the optimum);
- `loss_cost_of_predicted` = loss of the run at the predicted setting / best - 1;
- `seed_noise_rel`: the sample standard deviation over mean of one grid cell's runs
  repeated with other seeds (`noise_seeds`), the noise every comparison here sits in.
"""
from __future__ import annotations

import math

import numpy as np

KEYS = ("heldout_params_nonembed", "heldout_train_tokens", "predicted_val_loss",
        "measured_val_loss", "loss_rel_error", "predicted_lr", "best_lr",
        "predicted_batch_tokens", "best_batch_tokens", "lr_steps_off", "batch_steps_off",
        "loss_cost_of_predicted", "seed_noise_rel")


def predicted_setting(law: dict, params: float, tokens: float, tokens_per_sample: int) -> dict:
    """The law's lr, batch and loss at (N, T); the batch as a power-of-two sample count."""
    from scaling_laws import lawfile
    point = lawfile.predict_point(law, params, tokens)
    samples = max(1, 2 ** round(math.log2(max(point["batch_tokens"] / tokens_per_sample, 1))))
    return {"lr": float(f"{point['lr']:.3g}"), "batch_tokens": point["batch_tokens"],
            "batch_samples": samples, "loss": point.get("loss")}


def neighbours(lr: float, batch: int, lr_factor: float, batch_factor: int) -> list[tuple]:
    """The predicted setting and one grid step each way in lr and in batch."""
    points = [(lr, batch), (float(f"{lr / lr_factor:.3g}"), batch),
              (float(f"{lr * lr_factor:.3g}"), batch), (lr, batch * batch_factor)]
    if batch // batch_factor >= 1:
        points.append((lr, batch // batch_factor))
    return points


def seed_noise_rel(losses: list[float]) -> float | None:
    values = np.array([v for v in losses if v is not None and math.isfinite(v)])
    if len(values) < 2:
        return None
    return float(values.std(ddof=1) / values.mean())


def validation_record(*, params: int, tokens: int, predicted: dict | None, runs: list[dict],
                      lr_factor: float, batch_factor: int, noise: float | None,
                      law_usable: bool, reasons: list[str]) -> dict:
    """validation.json from the held-out runs' records (each: lr, batch_tokens, val_loss)."""
    out = {k: None for k in KEYS}
    out.update(heldout_params_nonembed=params, heldout_train_tokens=tokens, seed_noise_rel=noise,
               law_usable=law_usable, unusable_reasons=reasons,
               runs=[{k: r.get(k) for k in ("run_id", "lr", "batch_tokens", "val_loss", "status")}
                     for r in runs])
    if predicted is None:
        return out
    out.update(predicted_val_loss=predicted.get("loss"), predicted_lr=predicted["lr"],
               predicted_batch_tokens=predicted["batch_tokens"])
    done = [r for r in runs if r.get("status") == "completed" and r.get("val_loss") is not None]
    if not done:
        return out
    best = min(done, key=lambda r: r["val_loss"])
    at_pred = [r for r in done if math.isclose(r["lr"], predicted["lr"], rel_tol=1e-6)
               and r["batch_samples"] == predicted["batch_samples"]]
    out.update(measured_val_loss=best["val_loss"], best_lr=best["lr"],
               best_batch_tokens=best["batch_tokens"],
               lr_steps_off=round(math.log(best["lr"] / predicted["lr"]) / math.log(lr_factor)),
               batch_steps_off=round(math.log(best["batch_samples"] / predicted["batch_samples"])
                                     / math.log(batch_factor)))
    if predicted.get("loss") is not None:
        out["loss_rel_error"] = predicted["loss"] / best["val_loss"] - 1
    if at_pred:
        out["loss_cost_of_predicted"] = at_pred[0]["val_loss"] / best["val_loss"] - 1
    return out
