"""A trained `--data natural` model's samples have the data's pixel statistics.

The statistics are recomputed here with plain numpy (not through
`inference/sample_stats.py`), and the tolerance is the data's own spread: the
statistic's standard deviation across batches of real clips of the sample batch's size.
"""
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from megatron_vdit.diffusion.objectives import DiffusionObjective
from megatron_vdit.inference import sample_stats as ss
from megatron_vdit.inference.generate import clip_denoised

pytest.importorskip("skimage")
from megatron_vdit.data import natural  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
BATCH = 16
REFERENCE_BATCHES = 8
UNSEEN = 10 ** 6  # train-split clips no run in this suite consumes


def _pixel_stats(videos_BFHW3: np.ndarray) -> np.ndarray:
    """RGB means, RGB stds, neighbouring-pixel and frame differences, in [0, 1] units."""
    x = videos_BFHW3.astype(np.float64) / 255.0
    means = [x[..., c].mean() for c in range(3)]
    stds = [math.sqrt(((x[..., c] - means[c]) ** 2).mean()) for c in range(3)]
    spatial = (np.abs(x[:, :, :, 1:] - x[:, :, :, :-1]).mean()
               + np.abs(x[:, :, 1:] - x[:, :, :-1]).mean()) / 2
    temporal = np.abs(x[:, 1:] - x[:, :-1]).mean()
    return np.array([*means, *stds, spatial, temporal])


def _uint8(pixels):
    return (np.clip(pixels, 0, 1) * 255).round().astype(np.uint8)


def test_video_statistics_by_hand():
    # Frame 0 black, frame 1 red: R is 0 or 1 (mean 0.5, std 0.5), G and B stay 0; a
    # frame is constant, so no spatial difference; R jumps by 1 between frames, so the
    # mean |frame difference| over the 3 channels is 1/3.
    video = np.zeros((1, 2, 2, 2, 3), np.uint8)
    video[0, 1, ..., 0] = 255
    stats = ss.video_statistics(video)
    assert [stats[k] for k in ss.STATISTICS] == pytest.approx([0.5, 0, 0, 0.5, 0, 0, 0, 1 / 3])
    # Vertical stripes 0,1,0,1: every horizontal neighbour differs by 1, no vertical one.
    stripes = np.zeros((1, 1, 2, 4, 3))
    stripes[..., 1::2, :] = 1.0
    assert ss.video_statistics(stripes)["spatial_diff"] == pytest.approx(0.5)
    assert ss.video_statistics(stripes)["frame_diff"] == 0.0


def test_compare_z_scores_by_hand():
    # Two reference batches 0 and 2: sd (ddof 1) = sqrt(2); paired batch 0, so a sample
    # at 6 is z = 6 / (sqrt(2) sqrt(2)) = 3 (holds) and one at 6.1 is not.
    refs = [{k: 0.0 for k in ss.STATISTICS}, {k: 2.0 for k in ss.STATISTICS}]
    rows = ss.compare({k: 6.0 for k in ss.STATISTICS}, refs)
    assert all(r["z"] == pytest.approx(3.0) and r["ok"] for r in rows)
    assert not any(r["ok"] for r in ss.compare({k: 6.1 for k in ss.STATISTICS}, refs))


@pytest.mark.xfail(strict=False, reason="measured: make train's v-prediction model gets the "
                   "data's colour statistics but not its neighbour/frame differences (2-4x the "
                   "data's; docs/inference.md); kept so a better default shows up as XPASS")
def test_trained_natural_model_samples_have_the_data_statistics(natural_run, tmp_path):
    clips = natural.NaturalClips(frames=4, height=16, width=16, text_width=64, max_text_tokens=24)
    references, captions = [], []
    for b in range(REFERENCE_BATCHES):
        rendered = [clips.render("train", UNSEEN + b * BATCH + i) for i in range(BATCH)]
        references.append(_pixel_stats(_uint8(np.stack([p for p, _ in rendered]))))
        captions.append([c for _, c in rendered])
    references = np.stack(references)
    # Two independent batches' statistics differ with sd sqrt(2) x the across-batch sd.
    tolerance = 3 * math.sqrt(2) * references.std(axis=0, ddof=1)

    prompts = tmp_path / "captions.txt"
    prompts.write_text("\n".join(captions[0]) + "\n")
    env = dict(os.environ, PYTHONPATH=str(REPO))
    proc = subprocess.run(
        [sys.executable, str(REPO / "tools" / "sample.py"), "--run-dir", str(natural_run),
         "--prompts-file", str(prompts), "--out", str(tmp_path / "s.mp4"), "--sampler", "ddim",
         "--num-steps", "20", "--seed", "0"], capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    latents = [np.load(tmp_path / f"s_{i:03d}.latents.npz")["latents"] for i in range(BATCH)]
    sampled = _pixel_stats(np.stack([_uint8(natural.decode(z)) for z in latents]))
    deviation = np.abs(sampled - references[0])
    assert (deviation <= tolerance).all(), list(zip(ss.STATISTICS, sampled.round(4),
                                                    references[0].round(4), tolerance.round(4)))

    # The same check rejects what the sampler starts from: N(0, I) latents decoded.
    noise = np.random.default_rng(0).standard_normal((BATCH, *latents[0].shape))
    noise_stats = _pixel_stats(np.stack([_uint8(natural.decode(z)) for z in noise]))
    assert (np.abs(noise_stats - references[0]) > tolerance).sum() >= 4


def _path(kind: str, t_B: torch.Tensor):
    """alpha, sigma of each objective's path, from its definition (Ho et al.'s linear betas)."""
    if kind == "flow":
        sigma = t_B.double() / 1000
        return 1 - sigma, sigma
    alpha_bar = torch.cumprod(1 - torch.linspace(1e-4, 0.02, 1000, dtype=torch.float64), 0)
    alpha_bar = alpha_bar[t_B.long()]
    return alpha_bar.sqrt(), (1 - alpha_bar).sqrt()


def _x0_eps(kind, out, x, alpha, sigma):
    if kind == "ddpm":
        return (x - sigma * out) / alpha, out
    if kind == "v":   # v = alpha eps - sigma x0 and x = alpha x0 + sigma eps
        return alpha * x - sigma * out, sigma * x + alpha * out
    return x - sigma * out, x + alpha * out   # flow: u = eps - x0


@pytest.mark.parametrize("kind", ["ddpm", "v", "flow"])
def test_clip_denoised_clips_x0_and_stays_on_the_path(kind):
    gen = torch.Generator().manual_seed(0)
    x = 3 * torch.randn(2, 3, 1, 2, 2, generator=gen, dtype=torch.float64)
    raw = torch.randn(x.shape, generator=gen, dtype=torch.float64)
    t_B = torch.tensor([999.0, 400.0])
    low, high = torch.tensor([-1.0, -0.5, 0.0]), torch.tensor([1.0, 0.5, 2.0])
    out = clip_denoised(lambda x_, t_: raw.float(), DiffusionObjective(kind), low, high)(
        x.float(), t_B).double()
    alpha, sigma = (v.view(-1, 1, 1, 1, 1) for v in _path(kind, t_B))
    x0_raw, _ = _x0_eps(kind, raw, x.float().double(), alpha, sigma)
    x0, eps = _x0_eps(kind, out, x.float().double(), alpha, sigma)
    box = (low.view(1, -1, 1, 1, 1).double(), high.view(1, -1, 1, 1, 1).double())
    torch.testing.assert_close(x0, x0_raw.clamp(*box), atol=2e-3, rtol=1e-4)
    # x0 and eps still decompose x: x = alpha x0 + sigma eps
    torch.testing.assert_close(alpha * x0 + sigma * eps, x.float().double(), atol=1e-4, rtol=1e-4)
    wide = clip_denoised(lambda x_, t_: raw.float(), DiffusionObjective(kind),
                         torch.full((3,), -1e6), torch.full((3,), 1e6))(x.float(), t_B)
    torch.testing.assert_close(wide, raw.float(), atol=1e-4, rtol=1e-4)
