"""The training loop: read top to bottom, one step at a time.

Per iteration: learning rate from samples consumed -> this rank's slice of the global
batch -> timesteps and noise for the whole global batch from a generator seeded by
(seed, iteration), sliced by DP rank (so every layout sees the same examples and a
resumed run the same randomness) -> engine forward/backward with gradient accumulation
-> clip -> AdamW step. Validation is deterministic (`DiffusionObjective.validation_example`).
"""
from __future__ import annotations

import dataclasses
import json
import math
import time
from pathlib import Path

import torch
import torch.distributed as dist
from tqdm import tqdm

from ..diffusion.objectives import DiffusionObjective, seed_for
from ..models import accounting
from ..models.config import VDiTConfig, validate_model_config
from ..parallel.engine import ParallelEngine
from ..parallel.layout import ParallelLayout, build_parallel_groups, init_distributed
from . import checkpoint as ckpt
from .config import TrainConfig
from .data import build_source, check_data_shapes, prepare_data
from .records import (MetricsLog, RUN_RECORD, build_run_record, plot_losses, truncate_metrics,
                      write_json_atomic)
from .schedule import learning_rate


def model_config(cfg: TrainConfig) -> VDiTConfig:
    pt, ph, pw = cfg.patch_size
    mc = VDiTConfig(
        num_layers=cfg.num_layers, hidden_size=cfg.hidden_size,
        num_attention_heads=cfg.num_attention_heads, in_channels=cfg.in_channels,
        latent_frames=cfg.latent_frames, latent_height=cfg.latent_height,
        latent_width=cfg.latent_width, patch_size_t=pt, patch_size_h=ph, patch_size_w=pw,
        text_hidden_size=cfg.text_hidden_size, max_text_tokens=cfg.max_text_tokens,
        use_cpu_initialization=True, params_dtype=torch.float32,
        bf16=cfg.bf16, sequence_parallel=cfg.sequence_parallel,
        tensor_model_parallel_size=cfg.tensor_model_parallel_size,
        context_parallel_size=cfg.context_parallel_size,
        pipeline_model_parallel_size=cfg.pipeline_model_parallel_size,
        pipeline_dtype=torch.bfloat16 if cfg.bf16 else torch.float32,
    )
    validate_model_config(mc)
    return mc


def _layout(cfg: TrainConfig, world_size: int) -> ParallelLayout:
    return ParallelLayout.from_world_size(
        world_size, tensor_model_parallel_size=cfg.tensor_model_parallel_size,
        pipeline_model_parallel_size=cfg.pipeline_model_parallel_size,
        context_parallel_size=cfg.context_parallel_size, cp_comm_type=cfg.cp_comm_type,
        ulysses_size=cfg.ulysses_size,
        sequence_parallel=cfg.sequence_parallel,
        num_layers_per_virtual_pipeline_stage=cfg.num_layers_per_virtual_pipeline_stage)


def prepare(cfg: TrainConfig):
    """Validate everything that can be validated before any group or model exists."""
    rank, world = init_distributed()
    layout = _layout(cfg, world)
    cfg.resolve(layout.data_parallel_size)
    mc = model_config(cfg)
    layout.validate(world, mc.num_layers, mc.num_attention_heads, mc.tokens_per_sample)
    prepare_data(cfg, layout.data_parallel_size)
    return rank, layout, mc


class Trainer:
    def __init__(self, cfg: TrainConfig):
        self.rank, self.layout, self.mc = prepare(cfg)
        self.cfg = cfg
        # The mesh's device type decides where FSDP2 keeps parameters and DCP its buffers.
        self.groups = build_parallel_groups(
            self.layout, "cuda" if torch.cuda.is_available() else "cpu",
            num_attention_heads=self.mc.num_attention_heads)
        self.dp_rank = dist.get_rank(self.groups.dp)
        self.is_logger = self.rank == 0
        # --bf16: bf16 compute with fp32 master weights and fp32 gradient reduction (FSDP2).
        self.engine = ParallelEngine(self.mc, self.layout, self.groups, seed=cfg.seed,
                                     recompute=cfg.recompute_granularity,
                                     param_dtype=torch.bfloat16 if cfg.bf16 else None)
        self.optimizer = torch.optim.AdamW(
            self.engine.parameters(), lr=cfg.lr, betas=(cfg.adam_beta1, cfg.adam_beta2),
            eps=cfg.adam_eps, weight_decay=cfg.weight_decay,
            foreach=True)  # multi-tensor kernels; the default per-tensor loop is slow on CPU
        self.objective = DiffusionObjective(cfg.objective, cfg.beta_schedule)
        self.source = build_source(cfg, self.dp_rank, self.layout.data_parallel_size)
        self.run_dir = Path(cfg.run_dir)
        self.save_dir = cfg.save or str(self.run_dir / "checkpoints")
        shape = accounting.ModelShape.from_config(self.mc)
        self.params_nonembed = accounting.params_nonembed(shape)
        self.params_total = accounting.params_total(shape)
        self.flops_per_token = accounting.paper_flops_per_token(
            self.params_nonembed, cfg.tokens_per_sample, cfg.hidden_size)
        self.model_flops_per_sample = accounting.model_flops_per_sample(shape, cfg.tokens_per_sample)
        self.iteration, self.val_curve, self.last_train_loss = 0, [], float("nan")
        self.saved_iteration, self.wall_time_before, self.start_time = None, 0.0, time.time()
        self.skipped_steps = 0
        self.replica_leader = all(dist.get_rank(g) == 0 for g in (self.groups.tp, self.groups.cp,
                                                                    self.groups.pp))
        self.maybe_resume()  # here, so an incompatible checkpoint is a config error

    # -- one step ----------------------------------------------------------------------
    def _examples(self, latent):
        """Noised examples for this rank's slice of the global batch.

        Sample j of this slice sits at position dp_rank * local + j of global batch
        `iteration`; its timestep and noise are seeded by (seed, iteration, position).
        """
        local = latent.shape[0]
        first = self.dp_rank * local
        seeds = [seed_for(self.cfg.seed, self.iteration, first + j) for j in range(local)]
        return self.objective.training_example(latent, seeds)

    def train_step(self) -> tuple[float, float, float]:
        cfg = self.cfg
        # The LR of a step is the schedule's value once this step's samples are consumed,
        # so warmup reaches --lr exactly at --lr-warmup-samples.
        samples = (self.iteration + 1) * cfg.global_batch_size
        lr = learning_rate(samples, lr=cfg.lr, min_lr=cfg.min_lr, style=cfg.lr_decay_style,
                           warmup_samples=cfg.lr_warmup_samples,
                           total_samples=cfg.train_iters * cfg.global_batch_size,
                           decay_fraction=cfg.lr_wsd_decay_fraction)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        batch = self.source.next()
        if self.iteration == 0:
            check_data_shapes(cfg, batch)
        x_t, t, target = self._examples(batch["latent"])
        loss = self.engine.forward_backward(x_t, t, batch["text_emb"], batch["text_mask"],
                                            target, cfg.num_microbatches)
        grad_norm = self.engine.clip_grad_norm_(cfg.clip_grad) if cfg.clip_grad > 0 else float("nan")
        # A finite loss can still come with overflowed (bf16) gradients: skip that step
        # rather than write NaN into every weight (Megatron-LM does the same).
        if math.isfinite(loss) and (cfg.clip_grad == 0 or math.isfinite(grad_norm)):
            self.optimizer.step()
        else:
            self.skipped_steps += 1
        self.optimizer.zero_grad(set_to_none=True)
        self.iteration += 1
        return loss, grad_norm, lr

    @torch.no_grad()
    def validate(self) -> float:
        """Mean per-sample loss over the fixed held-out set (same for any layout).

        Each DP rank evaluates an equal share in equal-sized batches; the engine returns
        the DP-mean of each batch, so the sum below is already global.
        """
        cfg, dp = self.cfg, self.layout.data_parallel_size
        pp = self.layout.pipeline_model_parallel_size
        total = 0.0
        for indices, batch in self.source.val_batches(cfg.eval_samples, cfg.eval_micro_batch_size):
            x_t, t, target = self.objective.validation_example(
                batch["latent"], indices, cfg.eval_samples, cfg.eval_seed)
            loss = self.engine.eval_loss(x_t, t, batch["text_emb"], batch["text_mask"], target,
                                         num_microbatches=pp)
            total += loss * len(indices) * dp
        return total / cfg.eval_samples

    # -- checkpoints -------------------------------------------------------------------
    def save(self) -> None:
        def write(tmp: Path) -> None:
            self.engine.save(tmp, self.optimizer)
            # Each data-parallel replica's loader position, written by one rank of it.
            if self.replica_leader:
                write_json_atomic(tmp / f"data_dp{self.dp_rank:05d}.json", self.source.state_dict())
            if self.is_logger:
                meta = {"iteration": self.iteration, "data_parallel_size": self.layout.data_parallel_size,
                        "wall_time_s": self.wall_time_before + time.time() - self.start_time,
                        "val_curve": self.val_curve, "last_train_loss": self.last_train_loss,
                        "config": dataclasses.asdict(self.cfg)}
                (tmp / "trainer_state.json").write_text(json.dumps(meta, default=str))
        ckpt.save_checkpoint(self.save_dir, self.iteration, write, keep=self.cfg.save_keep,
                             is_writer=self.is_logger, barrier=dist.barrier)
        self.saved_iteration = self.iteration

    def maybe_resume(self) -> None:
        load_dir = self.cfg.load or (self.save_dir if self.cfg.save_interval else None)
        path = ckpt.latest_checkpoint(load_dir) if load_dir else None
        if path is None:
            if self.cfg.load:
                raise ValueError(f"--load {self.cfg.load}: no checkpoint found there")
            if self.is_logger:  # a fresh run in an old run dir starts a fresh log
                (self.run_dir / "metrics.jsonl").unlink(missing_ok=True)
            return
        meta = json.loads((path / "trainer_state.json").read_text())
        check_resume_compatible(meta["config"], self.cfg, path)
        # The synthetic source's position is global; a shard loader's is per DP replica.
        data_state = path / f"data_dp{0 if self.cfg.data == 'synthetic' else self.dp_rank:05d}.json"
        if self.cfg.data != "synthetic" and meta["data_parallel_size"] != self.layout.data_parallel_size:
            raise ValueError(f"{path} was saved with data-parallel size {meta['data_parallel_size']}; "
                             f"resuming shard data at data-parallel size "
                             f"{self.layout.data_parallel_size} would replay or skip samples")
        self.engine.load(path, self.optimizer)
        self.iteration = meta["iteration"]
        self.source.load_state_dict(json.loads(data_state.read_text()))
        self.val_curve, self.last_train_loss = meta["val_curve"], meta["last_train_loss"]
        self.wall_time_before = meta.get("wall_time_s", 0.0)
        self.saved_iteration = self.iteration
        if self.is_logger:
            truncate_metrics(self.run_dir, self.iteration)
            print(f"resumed from {path} at iteration {self.iteration}")

    # -- the run -----------------------------------------------------------------------
    def _record_val(self, log: MetricsLog) -> float:
        val_loss = self.validate()
        tokens = self.iteration * self.cfg.batch_tokens
        self.val_curve.append({"tokens": tokens, "val_loss": val_loss, "iteration": self.iteration})
        log.log({"iteration": self.iteration, "tokens": tokens, "val_loss": val_loss})
        return val_loss

    def _log_step(self, log: MetricsLog, bar, loss, grad_norm, lr, window) -> None:
        cfg = self.cfg
        elapsed, iters = time.time() - window[0], window[1]
        tokens_per_s = iters * cfg.batch_tokens / max(elapsed, 1e-9)
        log.log({"iteration": self.iteration, "tokens": self.iteration * cfg.batch_tokens,
                 "train_loss": loss, "grad_norm": grad_norm, "lr": lr,
                 "skipped_steps": self.skipped_steps, "tokens_per_s": tokens_per_s,
                 "gflops_per_s_paper": tokens_per_s * self.flops_per_token / 1e9})
        bar.set_postfix(loss=f"{loss:.4f}", tok_s=f"{tokens_per_s:.0f}")

    def run(self) -> dict:
        cfg = self.cfg
        if self.is_logger:  # a stale record must not outlive a run that crashes
            (self.run_dir / RUN_RECORD).unlink(missing_ok=True)
        log = MetricsLog(self.run_dir, cfg.wandb_mode, cfg.wandb_project,
                         dataclasses.asdict(cfg), enabled=self.is_logger)
        self.start_time, start_iter, status = time.time(), self.iteration, "completed"
        if self.iteration == 0:
            self._record_val(log)
        bar = tqdm(total=cfg.train_iters, initial=self.iteration, disable=not self.is_logger,
                   desc="train", unit="it", dynamic_ncols=True)
        window = [time.time(), 0]
        while self.iteration < cfg.train_iters:
            loss, grad_norm, lr = self.train_step()
            self.last_train_loss, window[1] = loss, window[1] + 1
            bar.update(1)
            if not math.isfinite(loss):
                status = "diverged"
                log.log({"iteration": self.iteration, "tokens": self.iteration * cfg.batch_tokens,
                         "train_loss": loss, "status": status})
                break
            if self.iteration % cfg.log_interval == 0 or self.iteration == cfg.train_iters:
                self._log_step(log, bar, loss, grad_norm, lr, window)
                window = [time.time(), 0]
            if self.iteration % cfg.eval_interval == 0 and self.iteration < cfg.train_iters:
                self._record_val(log)
            if cfg.save_interval and self.iteration % cfg.save_interval == 0:
                self.save()
        bar.close()
        return self._finish(log, status, start_iter)

    def _finish(self, log: MetricsLog, status: str, start_iter: int) -> dict:
        cfg = self.cfg
        if status != "completed":
            val_loss = float("nan")
        elif self.val_curve and self.val_curve[-1]["iteration"] == self.iteration:
            val_loss = self.val_curve[-1]["val_loss"]  # a rerun of a finished run
        else:
            val_loss = self._record_val(log)
        if (cfg.save_interval or cfg.save) and self.saved_iteration != self.iteration:
            self.save()
        session = time.time() - self.start_time
        record = build_run_record(
            cfg, run_id=self.run_dir.name, params_nonembed=self.params_nonembed,
            params_total=self.params_total,
            flops=self.flops_per_token * self.iteration * cfg.batch_tokens,
            model_flops=self.model_flops_per_sample * self.iteration * cfg.batch_samples,
            train_loss=self.last_train_loss, val_loss=val_loss, val_loss_curve=self.val_curve,
            iterations=self.iteration, wall_time_s=self.wall_time_before + session, status=status)
        trained = (self.iteration - start_iter) * cfg.batch_tokens
        record["throughput"] = {"tokens_per_s": trained / session,
                                "gflops_per_s_paper": trained * self.flops_per_token / session / 1e9}
        if self.is_logger:
            write_json_atomic(self.run_dir / RUN_RECORD, record)
            plot_losses(self.run_dir)
        log.finish(record)
        return record


# Fields a resumed run must share with the checkpoint, or it silently becomes another run.
RESUME_FIELDS = ("num_layers", "hidden_size", "num_attention_heads", "in_channels",
                 "latent_frames", "latent_height", "latent_width", "patch_size",
                 "text_hidden_size", "max_text_tokens", "objective", "beta_schedule", "data",
                 "global_batch_size", "seed", "data_seed", "eval_seed", "eval_samples", "lr",
                 "min_lr", "lr_decay_style", "lr_warmup_samples", "weight_decay")


def check_resume_compatible(saved: dict, cfg: TrainConfig, path: Path) -> None:
    current = dataclasses.asdict(cfg)
    differ = {k: (saved.get(k), current[k]) for k in RESUME_FIELDS
              if k in saved and _norm(saved[k]) != _norm(current[k])}
    if differ:
        listed = ", ".join(f"{k}: {a!r} -> {b!r}" for k, (a, b) in differ.items())
        raise ValueError(f"cannot resume from {path}: the config changed ({listed}); use a new "
                         "--run-dir/--save, or restore these values")


def _norm(value):
    return list(value) if isinstance(value, tuple) else value


def train(cfg: TrainConfig) -> dict:
    return Trainer(cfg).run()
