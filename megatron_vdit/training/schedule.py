"""Learning-rate schedules, as a pure function of the number of samples consumed.

`samples_consumed` counts the samples seen once the current step is done (the trainer
passes (iteration + 1) x global batch), so linear warmup reaches `lr` exactly at
`warmup_samples`. Samples (not iterations) drive the schedule, as in Megatron-LM, so changing the batch
size keeps warmup measured in data seen. Styles: `constant` after linear warmup (the
paper's choice), `cosine` decay to `min_lr`, and `wsd` (warmup, stable, then a linear
decay to `min_lr` over the last `decay_fraction` of training).
"""
from __future__ import annotations

import math


def learning_rate(samples_consumed: int, *, lr: float, min_lr: float, style: str,
                  warmup_samples: int, total_samples: int, decay_fraction: float = 0.2) -> float:
    if warmup_samples > 0 and samples_consumed < warmup_samples:
        return lr * samples_consumed / warmup_samples
    if style == "constant":
        return lr
    if style == "cosine":
        span = max(total_samples - warmup_samples, 1)
        progress = min(max(samples_consumed - warmup_samples, 0) / span, 1.0)
        return min_lr + 0.5 * (lr - min_lr) * (1 + math.cos(math.pi * progress))
    if style == "wsd":
        decay_start = total_samples * (1 - decay_fraction)
        if samples_consumed < decay_start:
            return lr
        progress = min((samples_consumed - decay_start) / max(total_samples - decay_start, 1), 1.0)
        return lr + (min_lr - lr) * progress
    raise ValueError(f"unknown lr decay style {style!r}")
