"""Spawn small gloo worlds on CPU for distributed tests (shared by every parallel test).

`spawn_world(fn, world_size, *args)` forks `world_size` processes, initialises a gloo
process group in each (rendezvous through a FileStore in a temp dir, so no ports are
taken), runs `fn(*args)` and returns the per-rank results in rank order. A failure on
any rank raises in the parent with that rank's traceback; a hang is killed after
`timeout_s`. Fork (not spawn) keeps start-up at milliseconds instead of re-importing
torch and megatron-core in every child; children use one intra-op thread each so a
2-core machine is not oversubscribed.

Results travel back pickled, so return tensors/floats/dicts, not modules.
"""
from __future__ import annotations

import gc
import multiprocessing as mp
import os
import pickle
import tempfile
import time
import traceback
from typing import Any, Callable

import torch
import torch.distributed as dist


def _worker(rank: int, world_size: int, tmp: str, fn: Callable, args: tuple, kwargs: dict):
    os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world_size), LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    out_path = os.path.join(tmp, f"rank{rank}.pkl")
    try:
        store = dist.FileStore(os.path.join(tmp, "store"), world_size)
        dist.init_process_group("gloo", store=store, rank=rank, world_size=world_size)
        result = ("ok", fn(*args, **kwargs))
    except BaseException:  # noqa: BLE001 - shipped to the parent, which re-raises
        result = ("error", traceback.format_exc())
    try:
        with open(out_path, "wb") as f:
            pickle.dump(result, f)
    finally:
        if dist.is_initialized():
            # No barrier: a rank that failed must not wait for peers that are stuck.
            dist.destroy_process_group()
        os._exit(0)


def spawn_world(fn: Callable, world_size: int, *args, timeout_s: float = 300,
                daemon: bool = True, **kwargs) -> list[Any]:
    """Run `fn(*args, **kwargs)` on `world_size` gloo ranks; return results by rank.

    `daemon=False` lets a rank start processes of its own (a trainer's prefetch
    worker); such a rank must stop them before it returns."""
    if dist.is_initialized():
        # A forked rank would inherit the group: its own init fails, its teardown hangs.
        raise RuntimeError("spawn_world: this process already has a default process group "
                           "(a test or fixture left one; see tests/conftest.py)")
    ctx = mp.get_context("fork")
    with tempfile.TemporaryDirectory(prefix="vdit_dist_") as tmp:
        procs = [ctx.Process(target=_worker, args=(r, world_size, tmp, fn, args, kwargs),
                             daemon=daemon) for r in range(world_size)]
        # Garbage left by earlier tests (process groups, loaders, their C++ objects) is
        # destroyed here, where the threads its destructors wait for still exist; frozen,
        # what remains is never collected in a rank, whose copy of those threads is gone
        # (a rank collecting it hung forever).
        gc.collect()
        gc.freeze()
        try:
            for p in procs:
                p.start()
        finally:
            gc.unfreeze()
        deadline = time.monotonic() + timeout_s  # one deadline for the world, not per rank
        for p in procs:
            p.join(max(0.0, deadline - time.monotonic()))
        hung = [r for r, p in enumerate(procs) if p.is_alive()]
        for p in procs:
            if p.is_alive():
                p.kill()
                p.join()
        results, errors = [], []
        for r in range(world_size):
            path = os.path.join(tmp, f"rank{r}.pkl")
            if not os.path.exists(path):
                errors.append(f"rank {r}: no result (exit code {procs[r].exitcode})")
                results.append(None)
                continue
            with open(path, "rb") as f:
                status, value = pickle.load(f)
            if status == "error":
                errors.append(f"rank {r}:\n{value}")
            results.append(value if status == "ok" else None)
        if hung:
            errors.insert(0, f"ranks {hung} still running after {timeout_s}s (killed)")
        if errors:
            raise RuntimeError("distributed test failed\n" + "\n".join(errors))
        return results


# --- shared harness: a tiny model, a batch, a single-process reference -----------------
def tiny_config(**overrides):
    """2 layers, 4 heads of 16 dims; 3x4x4 = 48 video tokens (3x3x5 = 45 with
    latent_height=6, latent_width=10: a length no CP size > 1 divides)."""
    from megatron_vdit.models.config import VDiTConfig
    fields = dict(num_layers=2, hidden_size=64, num_attention_heads=4, ffn_hidden_size=128,
                  use_cpu_initialization=True, in_channels=4, latent_frames=3, latent_height=8,
                  latent_width=8, text_hidden_size=32, max_text_tokens=6)
    fields.update(overrides)
    return VDiTConfig(**fields)


def make_batch(config, batch_size: int, seed: int = 1) -> dict[str, torch.Tensor]:
    """Latent, timesteps, caption (second sample's caption padded), diffusion target."""
    g = torch.Generator().manual_seed(seed)
    shape = (batch_size, config.in_channels, config.latent_frames, config.latent_height,
             config.latent_width)
    mask = torch.ones(batch_size, config.max_text_tokens)
    mask[1::2, config.max_text_tokens // 2:] = 0
    return dict(latent=torch.randn(shape, generator=g),
                timesteps=torch.rand(batch_size, generator=g) * 1000,
                text=torch.randn(batch_size, config.max_text_tokens, config.text_hidden_size,
                                 generator=g),
                text_mask=mask, target=torch.randn(shape, generator=g))


def slice_batch(batch: dict[str, torch.Tensor], rank: int, size: int) -> dict[str, torch.Tensor]:
    """This data-parallel rank's contiguous share of every tensor in the batch."""
    return {k: v.chunk(size)[rank] for k, v in batch.items()}


def perturb_zero_inits(model, seed: int = 7) -> None:
    """Give the zero-initialised (TP-replicated) output layers random weights, so every
    block gets a gradient from step one. Same values for every layout."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for layer in (model.final_layer.linear, model.ada_single[1]):
            for p in (layer.weight, layer.bias):
                p.copy_(torch.randn(p.shape, generator=g) * 0.05)


def mse_loss(model, batch) -> torch.Tensor:
    pred = model(batch["latent"], batch["timesteps"], batch["text"], batch["text_mask"])
    return torch.nn.functional.mse_loss(pred, batch["target"])


def train_reference(config, batch, *, steps: int, seed: int, lr: float, max_norm: float):
    """Single-process training (a TP group of one, torch's clip):
    (losses, norms, params, initial params)."""
    from megatron_vdit.models.vdit import VideoDiT
    singleton, _ = dist.new_subgroups(group_size=1)  # collective: call on every rank
    torch.manual_seed(seed)
    model = VideoDiT(config, singleton)
    perturb_zero_inits(model)
    initial = {n: p.detach().clone() for n, p in model.named_parameters()}
    opt = torch.optim.AdamW(model.parameters(), lr=lr)
    losses, norms = [], []
    for _ in range(steps):
        opt.zero_grad()
        loss = mse_loss(model, batch)
        loss.backward()
        norms.append(torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm).item())
        opt.step()
        losses.append(loss.item())
    return losses, norms, {n: p.detach().clone() for n, p in model.named_parameters()}, initial

