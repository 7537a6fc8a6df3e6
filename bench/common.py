"""What the single-process CPU benchmarks share: the model shape flags, our model's config
at a preset, its one-rank tensor-parallel group, one fixed random batch, and
median/min/max summaries.

Benchmark scripts import it by path (``bench/`` is put on ``sys.path`` first), so it works
both when a script runs as ``python bench/NAME.py`` and when a test loads the script file.
"""
from __future__ import annotations

import argparse
import functools
import os
import statistics

import torch

from megatron_vdit.cli.errors import integer_at_least
from megatron_vdit.models import accounting
from megatron_vdit.models.config import VDiTConfig
from megatron_vdit.parallel.layout import ParallelLayout, build_parallel_groups, init_distributed

POS_INT, NON_NEG_INT = integer_at_least(1), integer_at_least(0)


def model_bench_parser(script: str, doc: str, presets: list[str], repeats: int,
                       repeats_help: str, warmup_help: str, batch: int) -> argparse.ArgumentParser:
    """A benchmark's parser with the flags every model benchmark takes: presets, timed
    and untimed repeats, batch, latent and text shape, and threads."""
    parser = argparse.ArgumentParser(prog=os.path.basename(script),
                                     description=doc.splitlines()[0])
    parser.add_argument("--presets", nargs="+", default=presets)
    parser.add_argument("--repeats", type=POS_INT, default=repeats, help=repeats_help)
    parser.add_argument("--warmup", type=NON_NEG_INT, default=2, help=warmup_help)
    parser.add_argument("--batch", type=POS_INT, default=batch, help="samples per step")
    parser.add_argument("--latent", type=POS_INT, nargs=3, default=[3, 16, 16],
                        metavar=("F", "H", "W"), help="latent frames, height, width per sample")
    parser.add_argument("--channels", type=POS_INT, default=4, help="latent channels")
    parser.add_argument("--text-dim", type=POS_INT, default=64, help="text encoder width")
    parser.add_argument("--text-len", type=POS_INT, default=32, help="text tokens per sample")
    parser.add_argument("--threads", type=POS_INT, default=2, help="torch intra-op threads")
    return parser


def our_config(preset: str, args) -> VDiTConfig:
    """Our model at ``preset``'s depth, width and heads, on the flags' latent and text shape."""
    layers, d, heads = accounting.preset_shape(preset)
    f, h, w = args.latent
    return VDiTConfig(num_layers=layers, hidden_size=d, num_attention_heads=heads,
                      in_channels=args.channels, latent_frames=f, latent_height=h,
                      latent_width=w, text_hidden_size=args.text_dim,
                      max_text_tokens=args.text_len, use_cpu_initialization=True)


@functools.cache
def tp_group():
    """Our model's tensor-parallel group: a world of one (gloo), created once."""
    init_distributed()
    return build_parallel_groups(ParallelLayout()).tp


def stats(values: list[float]) -> dict:
    """Median, min, max and every value of one timed quantity."""
    return {"median": statistics.median(values), "min": min(values), "max": max(values),
            "all": values}


def make_batch(cfg: VDiTConfig, batch: int) -> tuple[tuple, torch.Tensor]:
    """(model inputs, target) of one fixed random batch."""
    g = torch.Generator().manual_seed(1)
    shape = (batch, cfg.in_channels, cfg.latent_frames, cfg.latent_height, cfg.latent_width)
    latent, target = torch.randn(shape, generator=g), torch.randn(shape, generator=g)
    t = torch.randint(0, 1000, (batch,), generator=g).float()
    text = torch.randn(batch, cfg.max_text_tokens, cfg.text_hidden_size, generator=g)
    mask = torch.ones(batch, cfg.max_text_tokens, dtype=torch.bool)
    return (latent, t, text, mask), target
