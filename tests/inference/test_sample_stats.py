"""A trained `--data natural` model's samples have the data's colour statistics (strict,
and decoded N(0, I) latents must fail them); its fine structure is an xfail.

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
COLOUR = ["mean_R", "mean_G", "mean_B", "std_R", "std_G", "std_B", "clip_sd_R", "clip_sd_G",
          "clip_sd_B", "block_corr_RG", "block_corr_GB", "block_corr_RB"]
NOISE_PROOF = COLOUR[6:]  # what decoded N(0, I) latents cannot have
STRUCTURE = ["spatial_diff", "frame_diff", "corr_RG", "corr_GB", "corr_RB"]


def _pixel_stats(videos_BFHW3: np.ndarray) -> dict[str, float]:
    """RGB means and stds; sd across clips of each clip's mean colour; channel correlations
    of pixels and of 4x4-pixel block means; neighbouring-pixel and frame differences."""
    x = videos_BFHW3.astype(np.float64) / 255.0
    out = {}
    for c, name in enumerate("RGB"):
        out[f"mean_{name}"] = x[..., c].mean()
        out[f"std_{name}"] = math.sqrt(((x[..., c] - out[f"mean_{name}"]) ** 2).mean())
        out[f"clip_sd_{name}"] = np.std([clip[..., c].mean() for clip in x])
    b, f, h, w, _ = x.shape
    blocks = np.stack([x[:, :, i::4, j::4] for i in range(4) for j in range(4)]).mean(0)
    for (c1, c2), pair in zip([(0, 1), (1, 2), (0, 2)], ["RG", "GB", "RB"]):
        out[f"corr_{pair}"] = np.corrcoef(x[..., c1].ravel(), x[..., c2].ravel())[0, 1]
        out[f"block_corr_{pair}"] = np.corrcoef(blocks[..., c1].ravel(),
                                                blocks[..., c2].ravel())[0, 1]
    out["spatial_diff"] = (np.abs(x[:, :, :, 1:] - x[:, :, :, :-1]).mean()
                           + np.abs(x[:, :, 1:] - x[:, :, :-1]).mean()) / 2
    out["frame_diff"] = np.abs(x[:, 1:] - x[:, :-1]).mean()
    return out


def _uint8(pixels):
    return (np.clip(pixels, 0, 1) * 255).round().astype(np.uint8)


def test_video_statistics_by_hand():
    # Frame 0 black, frame 1 red: R is 0 or 1 (mean 0.5, std 0.5), G and B stay 0; a
    # frame is constant, so no spatial difference; R jumps by 1 between frames, so the
    # mean |frame difference| over the 3 channels is 1/3. One clip: no spread of clip
    # means. G and B are constant, so no correlation is defined, and 2x2-pixel frames
    # hold no 4x4 block.
    video = np.zeros((1, 2, 2, 2, 3), np.uint8)
    video[0, 1, ..., 0] = 255
    stats = ss.video_statistics(video)
    assert set(stats) == set(ss.STATISTICS)
    assert [stats[k] for k in ss.STATISTICS[:11]] == pytest.approx(
        [0.5, 0, 0, 0.5, 0, 0, 0, 1 / 3, 0, 0, 0])
    assert all(math.isnan(stats[k]) for k in ss.STATISTICS[11:])
    # Vertical stripes 0,1,0,1: every horizontal neighbour differs by 1, no vertical one.
    stripes = np.zeros((1, 1, 2, 4, 3))
    stripes[..., 1::2, :] = 1.0
    assert ss.video_statistics(stripes)["spatial_diff"] == pytest.approx(0.5)
    assert ss.video_statistics(stripes)["frame_diff"] == 0.0


def test_colour_spread_and_correlations_by_hand():
    # Two one-frame 4x8 clips. Clip 0: R = G = 0.2 on the left 4x4 block, 0.6 on the
    # right one, B = 1 - R. Clip 1: R = G = 0.6 everywhere, B = 0.4. Clip means of R:
    # 0.4 and 0.6, sd 0.1 (ddof 0); same for G and B. R and G are equal (correlation 1),
    # B = 1 - R (-1), at pixels and at 4x4 blocks.
    video = np.zeros((2, 1, 4, 8, 3))
    video[0, ..., :4, :2] = 0.2
    video[0, ..., 4:, :2] = 0.6
    video[1, ..., :2] = 0.6
    video[..., 2] = 1 - video[..., 0]
    stats = ss.video_statistics(video)
    assert [stats[f"clip_sd_{c}"] for c in "RGB"] == pytest.approx([0.1, 0.1, 0.1])
    assert [stats[k] for k in ("corr_RG", "corr_GB", "corr_RB", "block_corr_RG",
                               "block_corr_GB", "block_corr_RB")] == pytest.approx(
        [1, -1, -1, 1, -1, -1])
    # Blocks average within 4x4 squares: pixel noise that cancels inside a block lowers
    # the pixel correlation but not the block one.
    checker = video.copy()
    checker[..., 1] += np.where((np.indices((4, 8)).sum(0) % 2) == 0, 0.1, -0.1)
    stats = ss.video_statistics(checker)
    assert stats["corr_RG"] < 0.95 and stats["block_corr_RG"] == pytest.approx(1.0)
    # Frames 6 pixels wide hold one whole block per row of blocks; the rest is cropped.
    cropped, whole = ss.video_statistics(checker[:, :, :, :6]), ss.video_statistics(
        checker[:, :, :, :4])
    assert [cropped[f"block_corr_{p}"] for p in ("RG", "GB", "RB")] == pytest.approx(
        [whole[f"block_corr_{p}"] for p in ("RG", "GB", "RB")])


def test_statistic_groups_partition_the_statistics():
    assert sorted(ss.COLOUR_STATISTICS + ss.STRUCTURE_STATISTICS) == sorted(ss.STATISTICS)
    assert list(ss.COLOUR_STATISTICS) == COLOUR and list(ss.STRUCTURE_STATISTICS) == STRUCTURE


def test_compare_z_scores_by_hand():
    # Two reference batches 0 and 2: sd (ddof 1) = sqrt(2); paired batch 0, so a sample
    # at 6 is z = 6 / (sqrt(2) sqrt(2)) = 3 (holds) and one at 6.1 is not.
    refs = [{k: 0.0 for k in ss.STATISTICS}, {k: 2.0 for k in ss.STATISTICS}]
    rows = ss.compare({k: 6.0 for k in ss.STATISTICS}, refs)
    assert all(r["z"] == pytest.approx(3.0) and r["ok"] for r in rows)
    assert not any(r["ok"] for r in ss.compare({k: 6.1 for k in ss.STATISTICS}, refs))


@pytest.fixture(scope="module")
def natural_samples(natural_run, tmp_path_factory):
    """Statistics of the `natural_run` model's samples for the first of `REFERENCE_BATCHES`
    batches of unseen training clips' captions, of as many decoded N(0, I) latents, of the
    real batches, and the tolerance: 3 sqrt(2) x each statistic's sd across real batches
    (two independent batches' statistics differ with sd sqrt(2) x the across-batch sd)."""
    tmp_path = tmp_path_factory.mktemp("natural_samples")
    clips = natural.NaturalClips(frames=4, height=16, width=16, text_width=64, max_text_tokens=24)
    references, captions = [], []
    for b in range(REFERENCE_BATCHES):
        rendered = [clips.render("train", UNSEEN + b * BATCH + i) for i in range(BATCH)]
        references.append(_pixel_stats(_uint8(np.stack([p for p, _ in rendered]))))
        captions.append([c for _, c in rendered])
    tolerance = {k: 3 * math.sqrt(2) * np.std([r[k] for r in references], ddof=1)
                 for k in references[0]}

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
    noise = np.random.default_rng(0).standard_normal((BATCH, *latents[0].shape))
    noise_stats = _pixel_stats(np.stack([_uint8(natural.decode(z)) for z in noise]))
    return sampled, noise_stats, references[0], tolerance


def _misses(stats, reference, tolerance, names):
    return {k: (round(stats[k], 4), round(reference[k], 4), round(tolerance[k], 4))
            for k in names if not abs(stats[k] - reference[k]) <= tolerance[k]}


@pytest.mark.xdist_group("natural_run")
def test_trained_natural_model_samples_have_the_data_colour_statistics(natural_samples):
    sampled, noise, reference, tolerance = natural_samples
    assert not _misses(sampled, reference, tolerance, COLOUR)
    # Not vacuous: decoded N(0, I) latents have the data's channel means and stds (the
    # encoding normalises each channel by them), but not its correlated channels (z -10
    # to -57 here) nor its spread of clip colours (z -3 to -5 at this batch size).
    noise_misses = set(_misses(noise, reference, tolerance, COLOUR))
    assert {"block_corr_RG", "block_corr_GB", "block_corr_RB"} <= noise_misses <= set(NOISE_PROOF)


@pytest.mark.xdist_group("natural_run")
@pytest.mark.xfail(strict=False, reason="measured (docs/inference.md): make train's model "
                   "has 2-4x the data's neighbour-pixel and frame differences (z +19, +11) and "
                   "a pixel-level G-B correlation of 0.69 against 0.97 (z -20) with every "
                   "sampler tried; 4x the training cuts the excess 2.5-fold (z +7.6, +5.7); "
                   "kept so a model that learns the fine structure shows up as XPASS")
def test_trained_natural_model_samples_have_the_data_structure(natural_samples):
    sampled, noise, reference, tolerance = natural_samples
    assert not _misses(sampled, reference, tolerance, STRUCTURE)
    assert set(_misses(noise, reference, tolerance, STRUCTURE)) == set(STRUCTURE)


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
