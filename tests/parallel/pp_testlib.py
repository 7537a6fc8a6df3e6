"""Shared pieces of the pipeline / engine / resharding tests: a tiny model, seeded
global batches, a plain single-process reference and an engine run at any layout.

Shape legend: B global batch, C channels, F/H/W latent dims, X text tokens, T text width.
"""
from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.distributed.tensor import DTensor, distribute_tensor

from megatron_vdit.models.config import VDiTConfig
from megatron_vdit.models.vdit import VideoDiT
from megatron_vdit.parallel.engine import ParallelEngine
from megatron_vdit.parallel.layout import ParallelLayout, build_parallel_groups

SEED = 1234
LR = 1e-3
MAX_NORM = 0.05  # small enough that clipping is active in every step
GLOBAL_BATCH = 4
EVAL_STEP = 99  # the held-out batch `eval_loss` is checked on


def tiny_config(num_layers: int = 4, **overrides) -> VDiTConfig:
    """4 layers, 4 heads of 8 dims; 2 x 2 x 3 = 12 video tokens, 5 text tokens."""
    fields = dict(num_layers=num_layers, hidden_size=32, num_attention_heads=4, in_channels=4,
                  latent_frames=2, latent_height=4, latent_width=6, text_hidden_size=16,
                  max_text_tokens=5, timestep_embed_dim=32, use_cpu_initialization=True)
    fields.update(overrides)
    return VDiTConfig(**fields)


def global_batch(cfg: VDiTConfig, step: int, batch: int = GLOBAL_BATCH):
    """(x_t, timesteps, text, text_mask, target) of the whole global batch at `step`."""
    g = torch.Generator().manual_seed(1000 + step)
    shape = (batch, cfg.in_channels, cfg.latent_frames, cfg.latent_height, cfg.latent_width)
    x_t_BCFHW = torch.randn(shape, generator=g)
    timesteps_B = torch.rand(batch, generator=g) * 1000
    text_BXT = torch.randn(batch, cfg.max_text_tokens, cfg.text_hidden_size, generator=g)
    lengths_B = torch.randint(1, cfg.max_text_tokens + 1, (batch,), generator=g)
    text_mask_BX = torch.arange(cfg.max_text_tokens)[None] < lengths_B[:, None]
    target_BCFHW = torch.randn(shape, generator=g)
    return x_t_BCFHW, timesteps_B, text_BXT, text_mask_BX, target_BCFHW


def zero_init_replacements(cfg: VDiTConfig) -> dict[str, torch.Tensor]:
    """Random values for the zero-initialised output layers (same draws as
    dist_utils.perturb_zero_inits), so every parameter gets a gradient from step one:
    with zeros there, a wrong conditioning gradient on an early stage barely moves the
    loss and could hide."""
    g = torch.Generator().manual_seed(7)
    d, p = cfg.hidden_size, cfg.in_channels * cfg.patch_volume
    shapes = {"final_layer.linear.weight": (p, d), "final_layer.linear.bias": (p,),
              "ada_single.1.weight": (6 * d, d), "ada_single.1.bias": (6 * d,)}
    return {name: torch.randn(shape, generator=g) * 0.05 for name, shape in shapes.items()}


@torch.no_grad()
def perturb(named_parameters, cfg: VDiTConfig) -> None:
    """Copy `zero_init_replacements` into a model or an engine (any sharding)."""
    values = zero_init_replacements(cfg)
    for name, param in named_parameters:
        if name in values:
            value = values[name]
            if isinstance(param, DTensor):
                value = distribute_tensor(value, param.device_mesh, param.placements,
                                          src_data_rank=None)
            param.copy_(value)


def reference_run(cfg: VDiTConfig, steps: range) -> dict:
    """One process, plain model and AdamW on the full global batch (run in a world of 1)."""
    torch.manual_seed(SEED)
    model = VideoDiT(cfg, dist.group.WORLD)
    perturb(model.named_parameters(), cfg)
    opt = torch.optim.AdamW(model.parameters(), lr=LR)
    losses, norms = [], []
    for step in steps:
        x_t, t, text, mask, target = global_batch(cfg, step)
        opt.zero_grad()
        loss = F.mse_loss(model(x_t, t, text, mask), target)
        loss.backward()
        norms.append(torch.nn.utils.clip_grad_norm_(model.parameters(), MAX_NORM).item())
        opt.step()
        losses.append(loss.item())
    with torch.no_grad():
        x_t, t, text, mask, target = global_batch(cfg, EVAL_STEP)
        eval_loss = F.mse_loss(model(x_t, t, text, mask), target).item()
    state = {k: v.detach().clone() for k, v in model.named_parameters()}
    return {"losses": losses, "norms": norms, "eval": [eval_loss], "state": state}


def make_engine(cfg: VDiTConfig, schedule: str | None = None, zero_stage: int = 2,
                param_dtype: torch.dtype | None = None, **degrees):
    layout = ParallelLayout.from_world_size(dist.get_world_size(), **degrees)
    groups = build_parallel_groups(layout, num_attention_heads=cfg.num_attention_heads)
    engine = ParallelEngine(cfg, layout, groups, seed=SEED, schedule=schedule,
                            zero_stage=zero_stage, param_dtype=param_dtype)
    perturb(engine.named_parameters(), cfg)
    return engine, layout, groups


def dp_slice(batch: tuple, layout: ParallelLayout, groups) -> tuple:
    per = batch[0].shape[0] // layout.data_parallel_size
    start = groups.rank_in("dp") * per
    return tuple(t[start:start + per] for t in batch)


def train_steps(engine, opt, cfg, layout, groups, steps: range, num_microbatches: int) -> dict:
    losses, norms = [], []
    for step in steps:
        local = dp_slice(global_batch(cfg, step), layout, groups)
        losses.append(engine.forward_backward(*local, num_microbatches=num_microbatches))
        norms.append(engine.clip_grad_norm_(MAX_NORM))
        opt.step()
    return {"losses": losses, "norms": norms}


def engine_run(cfg: VDiTConfig, steps: range, num_microbatches: int, schedule=None,
               zero_stage: int = 2, **degrees) -> dict:
    engine, layout, groups = make_engine(cfg, schedule, zero_stage, **degrees)
    opt = torch.optim.AdamW(engine.parameters(), lr=LR)
    out = train_steps(engine, opt, cfg, layout, groups, steps, num_microbatches)
    local = dp_slice(global_batch(cfg, EVAL_STEP), layout, groups)
    out["eval"] = [engine.eval_loss(*local, num_microbatches=num_microbatches)]
    out["state"] = engine.full_model_state_dict()
    return out


def assert_matches(got: dict, ref: dict, what: str, rtol: float = 1e-5) -> None:
    """Same losses and grad norms step by step, same parameters at the end (and the
    same forward-only loss when both ran one)."""
    for key in ("losses", "norms", "eval"):
        if key not in got or key not in ref:
            continue
        torch.testing.assert_close(torch.tensor(got[key]), torch.tensor(ref[key]), rtol=rtol,
                                   atol=0, msg=lambda m: f"{what} {key}: {m}")
    if dist.get_rank() != 0:
        return
    assert got["state"].keys() == ref["state"].keys(), f"{what}: parameter names differ"
    for name, value in ref["state"].items():
        torch.testing.assert_close(got["state"][name], value, rtol=rtol, atol=rtol * 1e-1,
                                   msg=lambda m: f"{what} param {name}: {m}")
