"""--data natural: animated photographs, a fixed invertible pixel-space encoding."""
import numpy as np
import pytest

pytest.importorskip("skimage")
from megatron_vdit.data import natural  # noqa: E402


def test_encode_is_normalised_space_to_depth_and_decode_inverts_it():
    rng = np.random.default_rng(0)
    pixels = rng.uniform(0, 1, size=(3, 8, 6, 3)).astype(np.float32)   # F, 2H, 2W, RGB
    latent = natural.encode(pixels)
    assert latent.shape == (12, 3, 4, 3)
    mean, std = natural.channel_stats()
    # Channel 4c + 2dy + dx at (f, h, w) holds pixel (f, 2h+dy, 2w+dx, c), normalised.
    for c, dy, dx, f, h, w in [(0, 0, 0, 0, 0, 0), (2, 1, 0, 1, 3, 2), (1, 1, 1, 2, 2, 1)]:
        want = (pixels[f, 2 * h + dy, 2 * w + dx, c] - mean[c]) / std[c]
        assert latent[4 * c + 2 * dy + dx, f, h, w] == pytest.approx(want, rel=1e-6)
    np.testing.assert_allclose(natural.decode(latent), pixels, atol=1e-6)


def test_channel_stats_are_those_of_the_training_photographs():
    pixels = np.concatenate([natural.load_photo(n).reshape(-1, 3) for n in natural.TRAIN_IMAGES])
    mean, std = natural.channel_stats()
    np.testing.assert_allclose(mean, pixels.mean(0), rtol=1e-5)
    np.testing.assert_allclose(std, pixels.std(0), rtol=1e-5)


def test_clips_are_deterministic_unlimited_and_splits_disjoint_in_content():
    data = natural.NaturalClips(frames=3, height=8, width=8, text_width=16, max_text_tokens=24)
    a, cap_a = data.render("train", 5)
    b, cap_b = natural.NaturalClips(3, 8, 8, 16, 24).render("train", 5)
    np.testing.assert_array_equal(a, b)
    assert cap_a == cap_b and a.shape == (3, 16, 16, 3)
    assert not np.array_equal(a, data.render("train", 10 ** 9)[0])
    assert not set(natural.TRAIN_IMAGES) & set(natural.VAL_IMAGES)
    for split, allowed in (("train", natural.TRAIN_IMAGES), ("val", natural.VAL_IMAGES)):
        for i in range(20):
            words = data.render(split, i)[1].split()
            scene, thing = words[0], words[words.index("disc") - 1]
            assert scene in allowed and thing in allowed, (split, words)


def test_caption_states_the_motion_that_is_rendered():
    """A clip captioned 'pans right ... zooms steady turns level': the background moves left."""
    data = natural.NaturalClips(frames=2, height=16, width=16, text_width=16, max_text_tokens=24)
    checked = 0
    for i in range(400):
        pixels, caption = data.render("train", i)
        if "zooms steady turns level" not in caption or " pans right fast" not in caption:
            continue
        f0, f1 = pixels[0].mean(-1), pixels[1].mean(-1)
        shift = natural.PAN_SPEEDS["fast"]  # source px per frame; the view scale is >= 1
        errs = {dx: np.abs(f1[:, 2:-8] - f0[:, 2 + dx:-8 + dx]).mean() for dx in range(0, 5)}
        if f0.std() > 0.05:  # a flat view shows no motion
            assert min(errs, key=errs.get) >= 1, (caption, errs, shift)
            checked += 1
        if checked == 3:
            break
    assert checked == 3


def test_latents_are_roughly_standardised_and_batches_have_the_model_shape():
    data = natural.NaturalClips(frames=4, height=8, width=8, text_width=32, max_text_tokens=24)
    batch = data.batch("train", list(range(64)))
    assert tuple(batch["latent"].shape) == (64, 12, 4, 8, 8)
    assert tuple(batch["text_emb"].shape) == (64, 24, 32)
    lat = batch["latent"].numpy()
    assert abs(lat.mean()) < 0.3 and 0.6 < lat.std() < 1.4
