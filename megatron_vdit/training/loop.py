"""The training loop: read top to bottom, one step at a time.

Per iteration: learning rate from samples consumed -> this rank's slice of the global
batch -> timesteps and noise for the whole global batch from a generator seeded by
(seed, iteration), sliced by DP rank (so every layout sees the same examples and a
resumed run the same randomness) -> engine forward/backward with gradient accumulation
-> clip -> AdamW step. Validation is deterministic (`DiffusionObjective.validation_example`).
"""
from __future__ import annotations

import json
import math
import time
from pathlib import Path

import torch
import torch.distributed as dist
from tqdm import tqdm

from ..diffusion.guidance import drop_captions
from ..diffusion.objectives import DiffusionObjective, seed_for
from ..models import accounting
from ..parallel.engine import ParallelEngine
from ..parallel.layout import build_parallel_groups, init_distributed
from . import checkpoint as ckpt
from . import preemption
from .config import JobConfig
from .data import IN_MEMORY_DATA, build_source, check_data_shapes
from .ema import EMA
from .prepare import Prepared, prepare
from .records import (MetricsLog, RUN_RECORD, build_run_record, plot_losses, truncate_metrics,
                      write_json_atomic)
from .rundir import TRAINER_STATE, StartPoint, save_dir
from .schedule import learning_rate


class Trainer:
    def __init__(self, job: JobConfig | Prepared):
        p = job if isinstance(job, Prepared) else prepare(job)
        if p.start.finished_record is not None:  # `train` and the CLI return it instead
            raise ValueError(f"{p.job.logging.run_dir} already holds this run, finished")
        self.job, self.r, self.mc, self.identity = p.job, p.resolved, p.model, p.identity
        self.start = p.start
        self.layout = self.r.layout
        self.rank, _ = init_distributed()
        # The mesh's device type decides where FSDP2 keeps parameters and DCP its buffers.
        self.groups = build_parallel_groups(
            self.layout, "cuda" if torch.cuda.is_available() else "cpu",
            num_attention_heads=self.mc.num_attention_heads)
        self.dp_rank = dist.get_rank(self.groups.dp)
        self.is_logger = self.rank == 0
        m, o = self.job.model, self.job.optimizer
        # --bf16: bf16 compute with fp32 master weights and fp32 gradient reduction (FSDP2).
        self.engine = ParallelEngine(self.mc, self.layout, self.groups, seed=self.job.schedule.seed,
                                     recompute=self.job.parallel.recompute_granularity,
                                     zero_stage=self.job.parallel.zero_stage,
                                     cp_backend=self.job.parallel.cp_backend,
                                     param_dtype=torch.bfloat16 if m.bf16 else None)
        self.optimizer = torch.optim.AdamW(
            self.engine.parameters(), lr=o.lr, betas=(o.adam_beta1, o.adam_beta2),
            eps=o.adam_eps, weight_decay=o.weight_decay,
            # Fused kernels (CPU and CUDA): fast, and they take `found_inf`, so a step with
            # non-finite values is skipped on the device, without a host sync.
            fused=True)
        self.objective = DiffusionObjective(m.objective, m.beta_schedule,
                                            flow_shift=m.flow_shift)
        # EMA of this rank's weight shards (docs/inference.md); saved with checkpoints.
        self.ema = EMA(self.engine.named_parameters(), m.ema_decay) if m.ema_decay else None
        self.data_root = p.data_root
        self.source = build_source(self.job, self.r, p.data_root, self.dp_rank,
                                   self.layout.data_parallel_size,
                                   replica=self.groups.replica, device=self.engine.device)
        self.run_dir = Path(self.job.logging.run_dir)
        self.save_dir = save_dir(self.job)
        shape = accounting.ModelShape.from_config(self.mc)
        self.params_nonembed = accounting.params_nonembed(shape)
        self.params_total = accounting.params_total(shape)
        self.flops_per_token = accounting.paper_flops_per_token(
            self.params_nonembed, self.r.tokens_per_sample, self.r.hidden_size)
        self.model_flops_per_sample = accounting.model_flops_per_sample(
            shape, self.r.tokens_per_sample)
        self.iteration, self.val_curve, self.last_train_loss = 0, [], float("nan")
        self.saved_iteration, self.wall_time_before, self.start_time = None, 0.0, time.time()
        # Per-step outcomes stay on the device until a log, eval, save or exit point reads
        # them (`read_step_stats`): [skipped steps, steps with a non-finite loss], and
        # [loss, grad norm, iteration] of the last step, or of the first step whose loss
        # was not finite (from then on no step is applied: the run has diverged).
        self.step_counts = torch.zeros(2, device=self.engine.device)
        self.step_values = torch.full((3,), float("nan"), device=self.engine.device)
        self.replica_leader = all(dist.get_rank(g) == 0 for g in (self.groups.tp, self.groups.cp,
                                                                    self.groups.pp))
        self.exit_handler = preemption.install(self.job.checkpoint.exit_signal_handler)
        self.pending_save: ckpt.PendingCheckpoint | None = None
        # Polls async saves from the main thread; a gloo group of its own (CPU flags,
        # any backend), apart from the one the background writes use.
        self.save_poll_group = (dist.new_group(backend="gloo")
                                if self.job.checkpoint.async_save else None)
        if self.start.checkpoint is not None:
            self.resume(self.start)

    # -- one step ----------------------------------------------------------------------
    def _sample_seeds(self, local: int) -> list[int]:
        """Sample j of this rank's slice sits at position dp_rank * local + j of global
        batch `iteration`; its timestep, noise and caption dropout are seeded by
        (seed, iteration, position)."""
        first = self.dp_rank * local
        return [seed_for(self.job.schedule.seed, self.iteration, first + j) for j in range(local)]

    def _examples(self, latent):
        """Noised examples for this rank's slice of the global batch."""
        return self.objective.training_example(latent, self._sample_seeds(latent.shape[0]))

    def train_step(self, lr: float | None = None) -> tuple[torch.Tensor, torch.Tensor, float]:
        """One step at the schedule's LR (or `lr`, for a cooldown branch).

        Returns the loss and grad norm as 0-dim tensors on the device and the LR.
        Nothing here waits for the device: whether the step is applied is decided there
        (a non-finite grad norm skips it; a non-finite loss marks the run diverged, and
        neither that step nor any later one is applied, so the weights, moments and EMA
        stay those of the last good step), and the outcome is read on the host at log,
        eval, save and exit points only.
        """
        s, o, r = self.job.schedule, self.job.optimizer, self.r
        # The LR of a step is the schedule's value once this step's samples are consumed,
        # so warmup reaches --lr exactly at --lr-warmup-samples.
        samples = (self.iteration + 1) * r.global_batch_size
        if lr is None:
            lr = learning_rate(samples, lr=o.lr, min_lr=o.min_lr, style=s.lr_decay_style,
                               warmup_samples=s.lr_warmup_samples,
                               total_samples=r.train_iters * r.global_batch_size,
                               decay_fraction=s.lr_wsd_decay_fraction)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        batch = self.source.next()
        if self.iteration == 0:
            check_data_shapes(self.job, batch["latent"].shape[1:], batch["text_emb"].shape[1:])
        # Asynchronous from pinned memory on a GPU; the noise is then drawn on the device.
        batch = {k: v.to(self.engine.device, non_blocking=True) if torch.is_tensor(v) else v
                 for k, v in batch.items()}
        x_t, t, target = self._examples(batch["latent"])
        text, mask = drop_captions(batch["text_emb"], batch["text_mask"],
                                   self.job.model.text_dropout,
                                   self._sample_seeds(batch["latent"].shape[0]))
        loss = self.engine.forward_backward(x_t, t, text, mask, target, r.num_microbatches,
                                            sync=False).float()
        finite_loss = torch.isfinite(loss)
        # The norm is measured without clipping too (clipping at inf scales by 1): a
        # finite loss can still come with overflowed (bf16) gradients, and that step is
        # skipped rather than write NaN into every weight (Megatron-LM does the same).
        grad_norm = self.engine.clip_grad_norm_(o.clip_grad if o.clip_grad > 0 else math.inf,
                                                sync=False).float()
        healthy = self.step_counts[1] == 0  # no non-finite loss so far
        applied = finite_loss & torch.isfinite(grad_norm) & healthy
        # The fused AdamW kernel leaves weights, moments and step count alone where
        # found_inf is 1. Every rank holds the same global loss and norm, so all agree.
        self.optimizer.found_inf = (~applied).float()
        self.optimizer.step()
        if self.ema is not None:
            self.ema.update(applied)
        self.step_counts += torch.stack([~applied & healthy, ~finite_loss]).float()
        values = torch.stack([loss, grad_norm, torch.full_like(loss, self.iteration + 1)])
        self.step_values = torch.where(healthy, values, self.step_values)
        self.optimizer.zero_grad(set_to_none=True)
        self.iteration += 1
        return loss, grad_norm, lr

    def read_step_stats(self) -> dict:
        """The last step's loss and grad norm (of the step whose loss was not finite,
        once one was: `diverged`, at `iteration`), and the steps skipped so far: one host
        read, made at log, eval, save and exit points only."""
        loss, grad_norm, iteration, skipped, nonfinite = torch.cat(
            [self.step_values, self.step_counts]).tolist()
        self.last_train_loss = loss
        return {"loss": loss, "grad_norm": grad_norm, "skipped_steps": int(skipped),
                "diverged": nonfinite > 0,
                "iteration": int(iteration) if math.isfinite(iteration) else self.iteration}

    @property
    def skipped_steps(self) -> int:
        """Steps skipped for non-finite values so far (a host read)."""
        return int(self.step_counts[0].item())

    def validate_all(self) -> dict:
        """{"val_loss_raw": ..., "val_loss_ema": ...} (EMA only when kept) and "val_loss":
        the EMA weights' loss when there are EMA weights, else the raw weights'."""
        losses = {"val_loss_raw": self.validate()}
        if self.ema is not None:
            with self.ema.applied():
                losses["val_loss_ema"] = self.validate()
        losses["val_loss"] = losses.get("val_loss_ema", losses["val_loss_raw"])
        return losses

    @torch.no_grad()
    def validate(self, micro_batch_size: int | None = None) -> float:
        """Mean per-sample loss over the fixed held-out set (same for any layout and any
        `micro_batch_size`, default --eval-micro-batch-size).

        Each DP rank evaluates an equal share in equal-sized batches; the engine returns
        the DP-mean of each batch, so the sum below is already global.
        """
        s, dp = self.job.schedule, self.layout.data_parallel_size
        pp = self.layout.pipeline_model_parallel_size
        total = 0.0
        for indices, batch in self.source.val_batches(
                s.eval_samples, micro_batch_size or self.r.eval_micro_batch_size):
            x_t, t, target = self.objective.validation_example(
                batch["latent"], indices, s.eval_samples, s.eval_seed)
            loss = self.engine.eval_loss(x_t, t, batch["text_emb"], batch["text_mask"], target,
                                         num_microbatches=pp)
            total += loss * len(indices) * dp
        return total / s.eval_samples

    # -- checkpoints -------------------------------------------------------------------
    def save(self) -> None:
        stats = self.read_step_stats()  # the trainer state records the last step's loss

        def write(tmp: Path):
            if self.job.checkpoint.async_save:
                future = self.engine.async_save(tmp, self.optimizer, ema=self.ema)
            else:
                future = self.engine.save(tmp, self.optimizer, ema=self.ema)
            # Each data-parallel replica's loader position, written by one rank of it.
            if self.replica_leader:
                write_json_atomic(tmp / f"data_dp{self.dp_rank:05d}.json", self.source.state_dict())
            if self.is_logger:
                meta = {"iteration": self.iteration,
                        "data_parallel_size": self.layout.data_parallel_size,
                        "wall_time_s": self.wall_time_before + time.time() - self.start_time,
                        "val_curve": self.val_curve, "last_train_loss": self.last_train_loss,
                        "skipped_steps": stats["skipped_steps"],
                        "config": self.identity,
                        # For tools/sample.py: the shards (and so the VAE) actually used.
                        "data_dir": self.data_root}
                if self.ema is not None:
                    meta["ema"] = self.ema.state_dict()
                (tmp / TRAINER_STATE).write_text(json.dumps(meta, default=str))
            return future
        self.finish_saves()  # one checkpoint in flight at a time
        self.pending_save = ckpt.start_checkpoint(
            self.save_dir, self.iteration, write, keep=self.job.checkpoint.save_keep,
            is_writer=self.is_logger, barrier=dist.barrier)
        self.saved_iteration = self.iteration
        if not self.job.checkpoint.async_save:
            self.finish_saves()

    def finish_saves(self, blocking: bool = True) -> None:
        """Publish the checkpoint in flight, if any: at once (`blocking`), or only when
        every rank's background writes are done (one tiny all-reduce; no waiting)."""
        pending = self.pending_save
        if pending is None:
            return
        if not blocking:
            done = torch.tensor([float(pending.done())])
            dist.all_reduce(done, op=dist.ReduceOp.MIN, group=self.save_poll_group)
            if done.item() < 1:
                return
        pending.publish()
        self.pending_save = None

    def resume(self, start: StartPoint) -> None:
        """Load a checkpoint `find_start` accepted (its config already checked)."""
        path, meta = start.checkpoint, start.meta
        synthetic = self.job.data.data in IN_MEMORY_DATA
        # The in-memory source's position is global; a shard loader's is per DP replica.
        data_state = path / f"data_dp{0 if synthetic else self.dp_rank:05d}.json"
        if not synthetic and meta["data_parallel_size"] != self.layout.data_parallel_size:
            raise ValueError(f"{path} was saved with data-parallel size "
                             f"{meta['data_parallel_size']}; "
                             f"resuming shard data at data-parallel size "
                             f"{self.layout.data_parallel_size} would replay or skip samples")
        self.engine.load(path, self.optimizer, ema=self.ema)
        if self.ema is not None and "ema" in meta:
            self.ema.load_state_dict(meta["ema"])
        self.iteration = meta["iteration"]
        self.source.load_state_dict(json.loads(data_state.read_text()))
        self.val_curve, self.last_train_loss = meta["val_curve"], meta["last_train_loss"]
        self.step_counts[0] = meta.get("skipped_steps", 0)  # older checkpoints: not kept
        self.wall_time_before = meta.get("wall_time_s", 0.0)
        self.saved_iteration = self.iteration
        if self.is_logger:
            print(f"resumed from {path} at iteration {self.iteration}")

    # -- the run -----------------------------------------------------------------------
    def _record_val(self, log: MetricsLog) -> float:
        losses = self.validate_all()
        tokens = self.iteration * self.r.batch_tokens
        self.val_curve.append({"tokens": tokens, **losses, "iteration": self.iteration})
        log.log({"iteration": self.iteration, "tokens": tokens, **losses})
        return losses["val_loss"]

    def _branch_steps(self) -> int:
        f = self.job.schedule.eval_cooldown_fraction
        return max(1, round(self.iteration * f / (1 - f)))

    def _branch_due(self) -> bool:
        """A cooldown branch here? Not once the main run's own decay has begun, nor when
        the branch would reach the run's end (the final point is that run)."""
        s, r = self.job.schedule, self.r
        decay_start = r.train_iters * (1 - s.lr_wsd_decay_fraction)
        return (s.eval_cooldown_fraction > 0 and self.iteration + self._branch_steps() < r.train_iters
                and (s.lr_decay_style != "wsd" or self.iteration < decay_start))

    def _record_cooldown_branch(self, log: MetricsLog) -> None:
        """Validate the run as if it had cooled down here, then continue from here.

        From iteration s, `s f / (1 - f)` more steps (f = --eval-cooldown-fraction) on the
        stream's next batches and seeds, with the LR falling linearly from the current
        one to --min-lr, make the branch the very run a `wsd` schedule of that length
        would be; its loss is a point at the branch's end. Parameters, optimiser state,
        data position and counters are restored afterwards.
        """
        start, steps, min_lr = self.iteration, self._branch_steps(), self.job.optimizer.min_lr
        params = self.engine.parameters()
        saved_params = [p.detach().clone() for p in params]
        saved_opt = [{k: v.clone() if torch.is_tensor(v) else v
                      for k, v in self.optimizer.state[p].items()} for p in params]
        saved_data = json.loads(json.dumps(self.source.state_dict()))
        saved_counters = (self.step_counts.clone(), self.step_values, self.last_train_loss)
        saved_ema = None if self.ema is None else (
            {k: v.clone() for k, v in self.ema.shadow.items()}, self.ema.num_updates)
        top = self.optimizer.param_groups[0]["lr"]
        for k in range(steps):
            self.train_step(lr=top + (min_lr - top) * (k + 1) / steps)
        losses = self.validate_all()
        tokens = self.iteration * self.r.batch_tokens
        self.val_curve.append({"tokens": tokens, **losses, "iteration": self.iteration,
                               "branch_from_iteration": start})
        log.log({"iteration": start, "tokens": tokens, **losses,
                 "branch_from_iteration": start})
        with torch.no_grad():
            for p, value, state in zip(params, saved_params, saved_opt):
                p.copy_(value)
                self.optimizer.state[p] = state
        if saved_ema is not None:  # the branch's steps must not leak into the average
            self.ema.shadow, self.ema.num_updates = saved_ema
        self.source.load_state_dict(saved_data)
        self.iteration = start
        self.step_counts, self.step_values, self.last_train_loss = saved_counters

    def _log_step(self, log: MetricsLog, bar, stats: dict, lr, window) -> None:
        elapsed, iters = time.time() - window[0], window[1]
        tokens_per_s = iters * self.r.batch_tokens / max(elapsed, 1e-9)
        log.log({"iteration": self.iteration, "tokens": self.iteration * self.r.batch_tokens,
                 "train_loss": stats["loss"], "grad_norm": stats["grad_norm"], "lr": lr,
                 "skipped_steps": stats["skipped_steps"], "tokens_per_s": tokens_per_s,
                 "gflops_per_s_paper": tokens_per_s * self.flops_per_token / 1e9})
        bar.set_postfix(loss=f"{stats['loss']:.4f}", tok_s=f"{tokens_per_s:.0f}")

    def _open_log(self) -> MetricsLog:
        if self.is_logger:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            # A stale record must not outlive a run that crashes (find_start allowed it).
            (self.run_dir / RUN_RECORD).unlink(missing_ok=True)
            if self.iteration == 0:  # a fresh run in an old run dir starts a fresh log
                (self.run_dir / "metrics.jsonl").unlink(missing_ok=True)
            else:
                truncate_metrics(self.run_dir, self.iteration)
        lg = self.job.logging
        return MetricsLog(self.run_dir, lg.wandb_mode, lg.wandb_project, self.identity,
                          enabled=self.is_logger)

    def run(self) -> dict:
        try:
            return self._run()
        finally:
            self.source.close()  # no reader thread outlives the run (forks come after)

    def _run(self) -> dict:
        s, r = self.job.schedule, self.r
        log_interval = self.job.logging.log_interval
        save_interval = self.job.checkpoint.save_interval
        log = self._open_log()
        self.start_time, start_iter, status = time.time(), self.iteration, "completed"
        if self.iteration == 0:
            self._record_val(log)
        bar = tqdm(total=r.train_iters, initial=self.iteration, disable=not self.is_logger,
                   desc="train", unit="it", dynamic_ncols=True)
        window = [time.time(), 0]
        while self.iteration < r.train_iters:
            _, _, lr = self.train_step()
            window[1] += 1
            bar.update(1)
            i = self.iteration
            log_due = i % log_interval == 0 or i == r.train_iters
            eval_due = i % s.eval_interval == 0 and i < r.train_iters
            save_due = bool(save_interval) and i % save_interval == 0
            exit_due = self.exit_handler is not None and self.exit_handler.should_exit()
            if log_due or eval_due or save_due or exit_due:
                # The only point where the loop waits for the device (docs/design.md).
                stats = self.read_step_stats()
                if stats["diverged"]:  # a step since the last read had a non-finite loss
                    status = "diverged"  # (a preempted run too: it has no later to resume)
                    k = stats["iteration"]
                    log.log({"iteration": k, "tokens": k * r.batch_tokens,
                             "train_loss": stats["loss"], "status": status})
                    break
            if log_due:
                self._log_step(log, bar, stats, lr, window)
                self.finish_saves(blocking=False)
                window = [time.time(), 0]
            if eval_due:
                if s.eval_cooldown_fraction > 0:
                    if self._branch_due():
                        self._record_cooldown_branch(log)
                else:
                    self._record_val(log)
            if save_due:
                self.save()
            if exit_due:
                preemption.stop(self)  # saves, exits with preemption.EXIT_PREEMPTED
        bar.close()
        return self._finish(log, status, start_iter)

    def _finish(self, log: MetricsLog, status: str, start_iter: int) -> dict:
        r, c = self.r, self.job.checkpoint
        if status != "completed":
            val_loss = float("nan")
        elif (self.val_curve and self.val_curve[-1]["iteration"] == self.iteration
              and "branch_from_iteration" not in self.val_curve[-1]):
            val_loss = self.val_curve[-1]["val_loss"]  # a rerun of a finished run
        else:
            val_loss = self._record_val(log)
        if (c.save_interval or c.save) and self.saved_iteration != self.iteration:
            self.save()
        self.finish_saves()
        session = time.time() - self.start_time
        record = build_run_record(
            self.job, r, self.identity, run_id=self.run_dir.name,
            params_nonembed=self.params_nonembed, params_total=self.params_total,
            flops=self.flops_per_token * self.iteration * r.batch_tokens,
            model_flops=self.model_flops_per_sample * self.iteration * r.batch_samples,
            train_loss=self.last_train_loss, val_loss=val_loss, val_loss_curve=self.val_curve,
            iterations=self.iteration, wall_time_s=self.wall_time_before + session, status=status)
        if self.val_curve and status == "completed":
            for key in ("val_loss_raw", "val_loss_ema"):
                if key in self.val_curve[-1]:
                    record[key] = self.val_curve[-1][key]
        trained = (self.iteration - start_iter) * r.batch_tokens
        record["throughput"] = {"tokens_per_s": trained / session,
                                "gflops_per_s_paper":
                                    trained * self.flops_per_token / session / 1e9}
        if self.is_logger:
            write_json_atomic(self.run_dir / RUN_RECORD, record)
            plot_losses(self.run_dir)
        log.finish(record)
        return record


def train(job: JobConfig) -> dict:
    """Train `job`; the record of a run dir that already holds this run, finished."""
    p = prepare(job)
    return p.start.finished_record or Trainer(p).run()
