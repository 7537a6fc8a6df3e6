"""Exponential moving average of the weights, kept shard by shard.

The average lives next to each local parameter (the same TP slice and FSDP shard), so
it costs one extra copy of this rank's weights and no communication; checkpoints save
it in the same layout-free canonical form as the weights (`ema.<name>`), so it loads
at any layout.

Decay warms up as ``min(decay, (1 + n) / (10 + n))`` after n updates (the schedule
common to TensorFlow's EMA and DiT codebases): without it, a short run's average would
stay close to the random initialisation.
"""
from __future__ import annotations

import contextlib

import torch
from torch.distributed.tensor import DTensor


def _local(t: torch.Tensor) -> torch.Tensor:
    return t.to_local() if isinstance(t, DTensor) else t


class EMA:
    """Shadow weights for `named_params` [(name, param)]; duplicate names share one."""

    def __init__(self, named_params, decay: float):
        if not 0.0 < decay < 1.0:
            raise ValueError(f"--ema-decay={decay} must be in (0, 1)")
        self.decay = decay
        self.num_updates = 0
        self.params: dict[str, list[torch.nn.Parameter]] = {}
        for name, p in named_params:
            self.params.setdefault(name, []).append(p)
        self.shadow = {name: _local(ps[0]).detach().float().clone()
                       for name, ps in self.params.items()}

    def shaped_like(self, name: str) -> torch.Tensor:
        """The shadow of `name` laid out as its parameter (an FSDP DTensor if that is one)."""
        p, shadow = self.params[name][0], self.shadow[name]
        if isinstance(p, DTensor):
            return DTensor.from_local(shadow.to(p.dtype), p.device_mesh, p.placements,
                                      shape=p.shape, stride=p.stride())
        return shadow.to(p.dtype)

    def current_decay(self) -> float:
        return min(self.decay, (1 + self.num_updates) / (10 + self.num_updates))

    @torch.no_grad()
    def update(self) -> None:
        """After an optimizer step: shadow <- d * shadow + (1 - d) * param."""
        d = self.current_decay()
        for name, ps in self.params.items():
            self.shadow[name].lerp_(_local(ps[0]).detach().float(), 1.0 - d)
        self.num_updates += 1

    @contextlib.contextmanager
    @torch.no_grad()
    def applied(self):
        """Within the block the parameters hold the EMA weights; restored after."""
        saved = {name: _local(ps[0]).detach().clone() for name, ps in self.params.items()}
        try:
            for name, ps in self.params.items():
                for p in ps:
                    _local(p).copy_(self.shadow[name])
            yield
        finally:
            for name, ps in self.params.items():
                for p in ps:
                    _local(p).copy_(saved[name])

    def state_dict(self) -> dict:
        return {"num_updates": self.num_updates, "decay": self.decay}

    def load_state_dict(self, state: dict) -> None:
        self.num_updates = int(state["num_updates"])
