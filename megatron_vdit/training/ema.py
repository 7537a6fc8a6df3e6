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
        self.params: dict[str, list[torch.nn.Parameter]] = {}
        for name, p in named_params:
            self.params.setdefault(name, []).append(p)
        self.shadow = {name: _local(ps[0]).detach().float().clone()
                       for name, ps in self.params.items()}
        # Counted on the device, so a step decides on the device whether it counts.
        device = next(iter(self.shadow.values())).device
        self._num_updates = torch.zeros((), dtype=torch.float64, device=device)

    @property
    def num_updates(self) -> int:
        """Updates applied so far (a host read)."""
        return int(self._num_updates.item())

    @num_updates.setter
    def num_updates(self, value) -> None:
        self._num_updates = torch.as_tensor(value, dtype=torch.float64,
                                            device=self._num_updates.device).clone()

    def shaped_like(self, name: str) -> torch.Tensor:
        """The shadow of `name` laid out as its parameter (an FSDP DTensor if that is one)."""
        p, shadow = self.params[name][0], self.shadow[name]
        if isinstance(p, DTensor):
            return DTensor.from_local(shadow.to(p.dtype), p.device_mesh, p.placements,
                                      shape=p.shape, stride=p.stride())
        return shadow.to(p.dtype)

    def current_decay(self) -> float:
        n = self.num_updates
        return min(self.decay, (1 + n) / (10 + n))

    @torch.no_grad()
    def update(self, applied: torch.Tensor | None = None) -> None:
        """After an optimizer step: shadow <- d * shadow + (1 - d) * param.

        `applied`: a 0-dim bool tensor saying whether the optimizer applied the step; a
        skipped step leaves the average and its count as they were. Decided on the
        device, so the training step needs no host sync for it.
        """
        n = self._num_updates
        d = torch.clamp((1 + n) / (10 + n), max=self.decay)
        weight = (1 - d) if applied is None else (1 - d) * applied
        weight = weight.float()
        for name, ps in self.params.items():
            self.shadow[name].lerp_(_local(ps[0]).detach().float(), weight)
        self._num_updates = n + (1 if applied is None else applied.double())

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
