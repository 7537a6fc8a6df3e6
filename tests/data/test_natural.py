"""--data natural: animated photographs, a fixed invertible pixel-space encoding."""
import numpy as np
import pytest
import torch

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


def test_bilinear_view_matches_scipy_map_coordinates_in_mirror_mode():
    """The renderer's own bilinear gather against scipy's order-1 interpolation, including
    coordinates far outside the image (mirrored)."""
    from scipy.ndimage import map_coordinates
    image = natural.load_photo("astronaut")
    rng = np.random.default_rng(3)
    ys = rng.uniform(-400, 500, size=(40, 40)).astype(np.float32)
    xs = rng.uniform(-400, 600, size=(40, 40)).astype(np.float32)
    expected = np.stack([map_coordinates(image[..., c], [ys, xs], order=1, mode="mirror")
                         for c in range(3)], axis=-1)
    np.testing.assert_allclose(natural._bilinear(image, ys, xs), expected, atol=1e-6)


def test_clip_cache_is_bit_identical_shared_and_repairs_a_damaged_chunk(tmp_path, monkeypatch):
    monkeypatch.setattr(natural, "CHUNK", 8)
    plain = natural.NaturalClips(2, 8, 8, 16, 8, seed=5)
    cached = natural.NaturalClips(2, 8, 8, 16, 8, seed=5, cache_dir=str(tmp_path))
    indices = [6, 7, 8, 9]                       # spans two chunks
    first = cached.batch("train", indices)
    expected = plain.batch("train", indices)
    for key in natural.CACHED_KEYS:
        assert torch.equal(first[key], expected[key]), key
    files = sorted(tmp_path.rglob("*.npz"))
    assert [f.name for f in files] == ["train-000000.npz", "train-000001.npz"]
    # Another run reads the files instead of rendering.
    monkeypatch.setattr(natural.NaturalClips, "_render_chunk",
                        lambda *a: (_ for _ in ()).throw(AssertionError("rendered again")))
    other = natural.NaturalClips(2, 8, 8, 16, 8, seed=5, cache_dir=str(tmp_path))
    assert torch.equal(other.batch("train", indices)["latent"], expected["latent"])
    # A torn chunk is rendered again and replaced, not trusted.
    monkeypatch.undo()
    monkeypatch.setattr(natural, "CHUNK", 8)
    files[0].write_bytes(files[0].read_bytes()[:100])
    again = natural.NaturalClips(2, 8, 8, 16, 8, seed=5, cache_dir=str(tmp_path))
    assert torch.equal(again.batch("train", indices)["latent"], expected["latent"])
    with np.load(files[0]) as archive:
        assert archive["latent"].shape[0] == 8
