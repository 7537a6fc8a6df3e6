"""CPU training throughput of the Cross-DiT vs a plain PyTorch stack of the same shape.

Measured side by side in one process (interleaved repeats, best of N), so the ratio is
meaningful even on a shared machine. Reports tokens/s and achieved GFLOP/s under the
paper's accounting (C_token = 3/4 N (7 + n_ctx/d)) for a forward+backward+AdamW step,
plus a bare fp32 matmul's GFLOP/s as the machine's ceiling.

    python bench/cpu_throughput.py [--presets cpu-0.6m cpu-4.7m] [--repeats 5]
"""
from __future__ import annotations

import argparse
import time
import warnings

import torch
import torch.nn.functional as F
from torch import nn

warnings.filterwarnings("ignore")

from megatron_vdit.models import accounting  # noqa: E402
from megatron_vdit.models.config import VDiTConfig  # noqa: E402
from megatron_vdit.models.layers import apply_rope, rope_tables  # noqa: E402
from megatron_vdit.models.vdit import VideoDiT  # noqa: E402
from megatron_vdit.parallel.layout import ParallelLayout, build_parallel_groups, init_distributed  # noqa: E402


class PlainBlock(nn.Module):
    """Same matmuls as a Cross-DiT block, in plain torch (batch-first nn.Linear + SDPA).

    `full=False`: the bare shape (no q/k norm, no RoPE, no modulation), the reference the
    foundation issue names. `full=True` adds what a Cross-DiT block must also do, written
    the obvious way: q/k RMSNorm, 3D RoPE on self-attention, adaLN modulation and gates.
    """

    def __init__(self, d: int, heads: int, full: bool = False, rope=None):
        super().__init__()
        self.heads, self.full, self.rope = heads, full, rope
        if full:
            e = d // heads
            self.norms = nn.ModuleList(nn.RMSNorm(e, eps=1e-6) for _ in range(4))
            self.table = nn.Parameter(torch.randn(6, d) / d ** 0.5)
        self.n1, self.n2, self.n3 = nn.LayerNorm(d), nn.LayerNorm(d), nn.LayerNorm(d)
        self.qkv, self.proj = nn.Linear(d, 3 * d), nn.Linear(d, d)
        self.q, self.kv, self.cproj = nn.Linear(d, d), nn.Linear(d, 2 * d), nn.Linear(d, d)
        self.fc1, self.fc2 = nn.Linear(d, 4 * d), nn.Linear(4 * d, d)

    def _attn(self, q, k, v, norms=None, rope=False):
        b, s, d = q.shape
        split = lambda t: t.view(b, -1, self.heads, d // self.heads).transpose(1, 2)  # noqa: E731
        q, k, v = split(q), split(k), split(v)
        if norms is not None:
            q, k = norms[0](q), norms[1](k)
        if rope:
            q, k = (apply_rope(t, *self.rope) for t in (q, k))
        return F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, s, d)

    def forward(self, x, text, ada=None):
        if not self.full:
            q, k, v = self.qkv(self.n1(x)).chunk(3, dim=-1)
            x = x + self.proj(self._attn(q, k, v))
            k, v = self.kv(text).chunk(2, dim=-1)
            x = x + self.cproj(self._attn(self.q(self.n2(x)), k, v))
            return x + self.fc2(F.gelu(self.fc1(self.n3(x)), approximate="tanh"))
        shift1, scale1, gate1, shift2, scale2, gate2 = (self.table[None] + ada).unbind(1)
        h = self.n1(x) * (1 + scale1[:, None]) + shift1[:, None]
        q, k, v = self.qkv(h).chunk(3, dim=-1)
        x = x + gate1[:, None] * self.proj(self._attn(q, k, v, self.norms[:2], rope=True))
        k, v = self.kv(text).chunk(2, dim=-1)
        x = x + self.cproj(self._attn(self.q(self.n2(x)), k, v, self.norms[2:]))
        h = self.n3(x) * (1 + scale2[:, None]) + shift2[:, None]
        return x + gate2[:, None] * self.fc2(F.gelu(self.fc1(h), approximate="tanh"))


def time_step(step, repeats: int) -> float:
    step()  # warm-up
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        step()
        best = min(best, time.perf_counter() - start)
    return best


def make_steps(preset: str, batch: int, tp_group, full: bool = False):
    layers, d, heads = accounting.preset_shape(preset)
    cfg = VDiTConfig(num_layers=layers, hidden_size=d, num_attention_heads=heads, in_channels=4,
                     latent_frames=3, latent_height=16, latent_width=16, text_hidden_size=64,
                     max_text_tokens=32, use_cpu_initialization=True)
    torch.manual_seed(0)
    model = VideoDiT(cfg, tp_group)
    rope = rope_tables(cfg.token_grid, d // heads, 10000.0)
    plain = nn.ModuleList(PlainBlock(d, heads, full, rope) for _ in range(layers))
    ada = torch.randn(batch, 6, d)
    x, t = torch.randn(batch, 4, 3, 16, 16), torch.randint(0, 1000, (batch,)).float()
    text, mask = torch.randn(batch, 32, 64), torch.ones(batch, 32, dtype=torch.bool)
    tokens_plain, text_plain = torch.randn(batch, cfg.tokens_per_sample, d), torch.randn(batch, 32, d)
    opt_model = torch.optim.AdamW(model.parameters(), lr=1e-4)
    opt_plain = torch.optim.AdamW(plain.parameters(), lr=1e-4)

    def ours():
        model(x, t, text, mask).square().mean().backward()
        opt_model.step()
        opt_model.zero_grad(set_to_none=True)

    def baseline():
        h = tokens_plain
        for block in plain:
            h = block(h, text_plain, ada)
        h.square().mean().backward()
        opt_plain.step()
        opt_plain.zero_grad(set_to_none=True)

    flops_per_token = accounting.paper_flops_per_token(
        accounting.paper_params_nonembed(layers, d), cfg.tokens_per_sample, d)
    return ours, baseline, batch * cfg.tokens_per_sample, flops_per_token


def matmul_gflops(n: int = 1024, repeats: int = 10) -> float:
    a, b = torch.randn(n, n), torch.randn(n, n)
    return 2 * n ** 3 / time_step(lambda: a @ b, repeats) / 1e9


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--presets", nargs="+", default=["cpu-0.6m", "cpu-4.7m"])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--full-plain", action="store_true",
                        help="give the plain stack q/k RMSNorm, RoPE and adaLN too")
    args = parser.parse_args()
    init_distributed()
    tp = build_parallel_groups(ParallelLayout()).tp
    print(f"plain stack: {'with q/k norm, RoPE, adaLN' if args.full_plain else 'bare block shape'}")
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, "
          f"bare fp32 matmul: {matmul_gflops():.1f} GFLOP/s")
    print(f"{'preset':<10} {'tokens/s ours':>14} {'tokens/s plain':>15} {'GFLOP/s ours':>13} "
          f"{'GFLOP/s plain':>14} {'ours/plain':>11}")
    for preset in args.presets:
        ours, baseline, tokens, fpt = make_steps(preset, args.batch, tp, args.full_plain)
        t_ours, t_plain = float("inf"), float("inf")
        for _ in range(args.repeats):  # interleave so load changes hit both equally
            t_ours = min(t_ours, time_step(ours, 1))
            t_plain = min(t_plain, time_step(baseline, 1))
        print(f"{preset:<10} {tokens / t_ours:>14.0f} {tokens / t_plain:>15.0f} "
              f"{tokens * fpt / t_ours / 1e9:>13.1f} {tokens * fpt / t_plain / 1e9:>14.1f} "
              f"{t_plain / t_ours:>11.2f}")


if __name__ == "__main__":
    main()
