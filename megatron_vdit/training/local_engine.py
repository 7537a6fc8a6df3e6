"""A world-of-one engine with the same interface as `parallel.engine.ParallelEngine`.

Used when every parallel degree is 1 and the parallel engine is unavailable; it keeps
the training loop independent of how the step is executed.
"""
from __future__ import annotations

from pathlib import Path

import torch

from ..diffusion.objectives import mse_loss
from ..models.config import VDiTConfig
from ..models.vdit import VideoDiT
from ..parallel.layout import ParallelGroups


class LocalEngine:
    def __init__(self, config: VDiTConfig, groups: ParallelGroups, *, seed: int):
        torch.manual_seed(seed)
        self.model = VideoDiT(config, groups.tp)
        self.groups = groups

    def parameters(self):
        return self.model.parameters()

    def forward_backward(self, x_t, timesteps, text, text_mask, target, num_microbatches: int) -> float:
        """Mean loss over the batch; gradients accumulate as for one full-batch step."""
        self.model.train()
        total = 0.0
        for chunk in zip(*(t.chunk(num_microbatches) for t in (x_t, timesteps, text, text_mask, target))):
            xb, tb, txt, mask, tgt = chunk
            loss = mse_loss(self.model(xb, tb, txt, mask), tgt) * (xb.shape[0] / x_t.shape[0])
            loss.backward()
            total += loss.item()
        return total

    @torch.no_grad()
    def eval_loss(self, x_t, timesteps, text, text_mask, target) -> float:
        self.model.eval()
        return mse_loss(self.model(x_t, timesteps, text, text_mask), target).item()

    def clip_grad_norm_(self, max_norm: float) -> float:
        return torch.nn.utils.clip_grad_norm_(self.model.parameters(), max_norm).item()

    def save(self, path: Path, optimizer) -> None:
        torch.save({"model": self.model.state_dict(), "optimizer": optimizer.state_dict()},
                   path / "model_optim.pt")

    def load(self, path: Path, optimizer) -> None:
        state = torch.load(path / "model_optim.pt", map_location="cpu", weights_only=True)
        self.model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
