"""ParallelEngine: one forward/backward step composing TP, CP, PP and DP.

The trainer sees only this class. Construction order (fixed, like torchtitan's
`parallelize`): build the full model with the TP-sharded layers and CP attention
(`parallelize.build_parallel_model`, same weights as the single-process model for the
same seed) -> cut this rank's pipeline stages (`pipeline.split_stage_modules`) ->
activation recompute per stage -> FSDP2 over dp_cp per stage -> pipeline schedule.
A world of one goes through the same code (one stage, FSDP over a mesh of one).

Loss contract: `forward_backward` returns the mean-squared error over all elements of
the data-parallel global batch, the same float on every rank, and leaves in `.grad`
exactly the gradient of that loss (so an optimizer step equals the single-process step
on the full global batch). The caller passes this DP rank's slice of the global batch.

Shape legend: B batch (this DP rank's slice), b microbatch, C channels, F/H/W latent
frames/height/width, X text tokens, T text-encoder width, S video tokens, D hidden.
"""
from __future__ import annotations

from concurrent.futures import Future

from ..torch_floor import require_torch

require_torch()  # before the torch imports: an old torch fails here, with the fix

import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402
from torch import nn  # noqa: E402

from ..models.config import VDiTConfig  # noqa: E402
from . import checkpoint, parallelize, pipeline  # noqa: E402
from .data_parallel import ZERO_STAGES, reshard, set_microbatch_sync  # noqa: E402
from .layout import ParallelGroups, ParallelLayout  # noqa: E402
from .tensor_parallel import all_reduce_sum, param_role, tag_params  # noqa: E402


def _default_device() -> torch.device:
    if torch.cuda.is_available():
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


class ParallelEngine:
    """This rank's share of the model under `layout`, and the step that trains it."""

    def __init__(self, config: VDiTConfig, layout: ParallelLayout, groups: ParallelGroups, *,
                 seed: int, zero_stage: int = 2, recompute: str | None = None,
                 schedule: str | None = None, param_dtype: torch.dtype | None = None,
                 device: torch.device | None = None, cp_backend: str = "native"):
        """`schedule`: "1f1b", "interleaved" or "gpipe"; default interleaved when the layout
        sets num_layers_per_virtual_pipeline_stage, else 1F1B. `param_dtype`: compute
        dtype (bf16 on GPU) with fp32 master weights and fp32 gradient reduction; None
        keeps everything fp32. `cp_backend`: "native" (ours) or "te" (TransformerEngine's
        CP attention, GPU only). `zero_stage` 1, 2 or 3: what stays unsharded during a step
        (`data_parallel.apply_data_parallel`). With one pipeline stage the microbatches
        run in a plain loop, so ZeRO-2/3 reduce-scatter each microbatch's gradients as
        its backward finishes; under PP the schedule accumulates unsharded gradients
        over the microbatches and reduce-scatters once, whatever the stage."""
        if zero_stage not in ZERO_STAGES:
            raise ValueError(f"zero_stage={zero_stage}; expected one of {ZERO_STAGES}")
        self.zero_stage = zero_stage
        pp = layout.pipeline_model_parallel_size
        virtual_flag = layout.num_layers_per_virtual_pipeline_stage
        self.schedule_kind = schedule or ("interleaved" if virtual_flag else "1f1b")
        # Checked before any module or group work, so a bad layout fails fast.
        self.virtual = pipeline.num_virtual_stages(self.schedule_kind, config.num_layers, pp,
                                                   virtual_flag)
        layout.validate(dist.get_world_size(), config.num_layers, config.num_attention_heads,
                        config.tokens_per_sample)
        self.config, self.layout, self.groups = config, layout, groups
        self.device = device or _default_device()
        self.param_dtype = param_dtype
        self.cp_backend = cp_backend
        self.num_stages = pp * self.virtual
        self.stage_ids = pipeline.local_stage_ids(groups.rank_in("pp"), pp, self.virtual)
        chunks = self._split(self._build_model(seed))
        self.model_chunks = [self._parallelize_chunk(c, zero_stage, recompute) for c in chunks]
        self._schedules: dict[tuple, object] = {}
        self._loss_scale = 1.0

    # -- construction ------------------------------------------------------------------
    def _build_model(self, seed: int) -> nn.Module:
        # On the meta device: a rank's stages are materialised after the split and the
        # FSDP wrapping, as this rank's shards only (`_parallelize_chunk`).
        return parallelize.build_parallel_model(self.config, self.groups, seed=seed,
                                                cp_backend=self.cp_backend, device="meta")

    def _split(self, model: nn.Module) -> list[nn.Module]:
        # Parameter copies made for each stage lose their attributes: re-attach roles.
        roles = {name: param_role(p) for name, p in model.named_parameters()}
        chunks = pipeline.split_stage_modules(model, self.stage_ids, self.num_stages)
        for chunk in chunks:
            tag_params(chunk, roles)
        return chunks

    def _parallelize_chunk(self, chunk: nn.Module, zero_stage: int, recompute: str | None):
        parallelize.apply_recompute(chunk, recompute)
        # Gradients are reduced in fp32 even when computed in bf16 (sums over many ranks).
        reduce_dtype = torch.float32 if self.param_dtype is not None else None
        chunk = parallelize.apply_data_parallel(chunk, self.groups, zero_stage=zero_stage,
                                                param_dtype=self.param_dtype,
                                                reduce_dtype=reduce_dtype)
        return parallelize.materialize(chunk, self.groups, self.device)

    def parameters(self) -> list[nn.Parameter]:
        """This rank's parameters (all local stages) for the optimizer."""
        return [p for chunk in self.model_chunks for p in chunk.parameters()]

    def named_parameters(self):
        """(canonical name, param) for every local parameter; names are layout-free."""
        for chunk in self.model_chunks:
            yield from chunk.named_parameters()

    # -- pipeline schedule -------------------------------------------------------------
    def _tokens_local(self) -> int:
        """Video tokens one rank sends between stages (after the CP / SP split)."""
        return parallelize.local_num_tokens(self.config.tokens_per_sample, self.groups)

    def _stage_io(self, micro_batch: int, latent_dtype: torch.dtype):
        cfg, act = self.config, self.param_dtype or torch.float32
        latent = torch.empty(micro_batch, cfg.in_channels, cfg.latent_frames, cfg.latent_height,
                             cfg.latent_width, device="meta")
        # requires_grad marks what carries a gradient back through the pipe.
        hidden = torch.empty(self._tokens_local(), micro_batch, cfg.hidden_size, device="meta",
                             dtype=act, requires_grad=True)

        def io(stage_id: int):
            first, last = stage_id == 0, stage_id == self.num_stages - 1
            return (latent.to(latent_dtype) if first else hidden,
                    latent.to(act).requires_grad_() if last else hidden)
        return io

    def _schedule(self, micro_batch: int, num_microbatches: int, latent_dtype: torch.dtype):
        key = (micro_batch, num_microbatches, latent_dtype, torch.is_grad_enabled())
        if key not in self._schedules:
            self._schedules[key] = pipeline.build_schedule(
                self.model_chunks, self.stage_ids, self.num_stages, self.groups.pp, self.device,
                self.schedule_kind, num_microbatches, self._loss_fn,
                self._stage_io(micro_batch, latent_dtype))
        return self._schedules[key]

    def _loss_fn(self, pred_bCFHW: torch.Tensor, target_bCFHW: torch.Tensor) -> torch.Tensor:
        """Sum of squared errors times 1/(global elements) times the DP averaging factor."""
        return (pred_bCFHW.float() - target_bCFHW.float()).pow(2).sum() * self._loss_scale

    def _grad_average_factor(self) -> int:
        """What FSDP divides the dp_cp gradient sum by: DP (it sums over CP, whose ranks
        hold partial contributions of the same samples, and averages over DP)."""
        return self.layout.data_parallel_size

    def _run(self, x_t_BCFHW, timesteps_B, text_BXT, text_mask_BX, target_BCFHW,
             num_microbatches: int, train: bool) -> torch.Tensor:
        batch = x_t_BCFHW.shape[0]
        if num_microbatches < 1 or batch % num_microbatches:
            raise ValueError(f"num_microbatches={num_microbatches} does not divide the "
                             f"per-DP-rank batch of {batch} samples")
        dev = self.device
        global_numel = target_BCFHW.numel() * self.layout.data_parallel_size
        factor = self._grad_average_factor()
        self._loss_scale = factor / global_numel
        inputs = [t.to(dev) for t in (x_t_BCFHW, timesteps_B, text_BXT, text_mask_BX,
                                      target_BCFHW)]
        if self.num_stages == 1:
            losses = self._run_microbatches(inputs, num_microbatches, train)
        else:
            losses = []
            sched = self._schedule(batch // num_microbatches, num_microbatches,
                                   x_t_BCFHW.dtype)
            run = sched.step if train else sched.eval
            x, t, text, mask, target = inputs
            run(x, target=target, losses=losses, timesteps_B=t, text_BXT=text,
                text_mask_BX=mask)
        local = torch.stack([l.detach().float() for l in losses]).sum() if losses else \
            torch.zeros((), device=dev)
        local = local / factor
        # Only the last stage holds losses; CP and TP ranks hold the same value.
        all_reduce_sum(local, self.groups.pp)
        all_reduce_sum(local, self.groups.dp)
        return local

    def _run_microbatches(self, inputs, num_microbatches: int, train: bool):
        """One stage: forward (and backward) microbatch after microbatch, no schedule."""
        (model,) = self.model_chunks
        losses = []
        for i, (x, t, text, mask, target) in enumerate(
                zip(*(tensor.chunk(num_microbatches) for tensor in inputs))):
            if train:
                set_microbatch_sync(model, self.zero_stage, i == num_microbatches - 1)
            loss = self._loss_fn(model(x, t, text, mask), target)
            if train:
                loss.backward()
            losses.append(loss.detach())
        if not train:
            reshard(model)
        return losses

    # -- the trainer's API -------------------------------------------------------------
    def forward_backward(self, x_t_BCFHW: torch.Tensor, timesteps_B: torch.Tensor,
                         text_BXT: torch.Tensor, text_mask_BX: torch.Tensor,
                         target_BCFHW: torch.Tensor, num_microbatches: int = 1,
                         sync: bool = True) -> float | torch.Tensor:
        """One step's gradients (previous grads are discarded); returns the global loss:
        a float, or with `sync=False` a 0-dim tensor on the device (no host sync)."""
        for p in self.parameters():
            p.grad = None
        loss = self._run(x_t_BCFHW, timesteps_B, text_BXT, text_mask_BX, target_BCFHW,
                         num_microbatches, train=True)
        # TP-partial grads summed over TP; conditioning grads over local stages and PP.
        parallelize.finalize_grads(self.model_chunks, self.groups)
        pipeline.sync_duplicated_grads(self.model_chunks, self.groups.pp)
        return loss.item() if sync else loss

    @torch.no_grad()
    def eval_loss(self, x_t_BCFHW, timesteps_B, text_BXT, text_mask_BX, target_BCFHW,
                  num_microbatches: int = 1) -> float:
        """Forward only; same loss definition as `forward_backward`."""
        return self._run(x_t_BCFHW, timesteps_B, text_BXT, text_mask_BX, target_BCFHW,
                         num_microbatches, train=False).item()

    def clip_grad_norm_(self, max_norm: float, sync: bool = True) -> float | torch.Tensor:
        """Clip by the global grad norm (each element of the full model counted once,
        duplicated conditioning on PP rank 0's first stage); returns the norm (a float, or
        with `sync=False` a 0-dim tensor on the device)."""
        norm = parallelize.clip_grad_norm_(self.model_chunks, max_norm, self.groups)
        return norm.item() if sync else norm

    # -- checkpoints -------------------------------------------------------------------
    def state_dict_for_save(self, optimizer: torch.optim.Optimizer | None = None) -> dict:
        return checkpoint.state_dict_for_save(self, optimizer)

    def save(self, path: str, optimizer: torch.optim.Optimizer | None = None, ema=None) -> None:
        """Write this rank's shards (no gather; see parallel/checkpoint.py)."""
        checkpoint.save(self, path, optimizer, ema)

    def async_save(self, path: str, optimizer: torch.optim.Optimizer | None = None,
                   ema=None) -> Future:
        """`save` in a background thread; wait on the future before using the files."""
        return checkpoint.async_save(self, path, optimizer, ema)

    def load(self, path: str, optimizer: torch.optim.Optimizer | None = None, ema=None) -> None:
        checkpoint.load(self, path, optimizer, ema)

    def full_model_state_dict(self) -> dict[str, torch.Tensor]:
        """Every parameter, unsharded, with single-process names; on global rank 0 only
        (other ranks get {})."""
        return checkpoint.full_model_state_dict(self)

