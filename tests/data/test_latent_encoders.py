"""Real diffusers VAEs and transformers T5/UMT5 encoders (tiny configs, seeded weights)."""
import json

import numpy as np
import pytest
import torch

from megatron_vdit.data.encoders import load_text_encoder, load_vae


@pytest.mark.parametrize("config", ["tiny-wan", "tiny-cogvideox"])
def test_vae_shapes_and_frame_validation(config):
    vae = load_vae(config=config, seed=0)
    assert vae.latent_shape(9, 64, 32) == (4, 3, 8, 4)
    video_BCFHW = torch.rand(2, 3, 9, 64, 32) * 2 - 1
    assert tuple(vae.encode(video_BCFHW).shape) == (2, 4, 3, 8, 4)
    with pytest.raises(ValueError, match=r"--frames 8 .*k\*4\+1"):
        vae.latent_shape(8, 64, 64)
    with pytest.raises(ValueError, match="--height 60"):
        vae.latent_shape(9, 60, 64)


def test_tiny_weights_are_a_function_of_the_seed():
    ids = [load_vae(config="tiny", seed=s).identity()["weights_sha256"] for s in (0, 0, 1)]
    assert ids[0] == ids[1] != ids[2]


def test_wan_normalisation_uses_latents_mean_std(tmp_path):
    from diffusers import AutoencoderKLWan
    vae = load_vae(config="tiny-wan", seed=0)
    config = dict(vae.model.config)
    config.update(latents_mean=[0.5, -1.0, 2.0, 0.0], latents_std=[2.0, 0.5, 1.0, 4.0])
    shifted = AutoencoderKLWan.from_config(config)
    shifted.load_state_dict(vae.model.state_dict())
    shifted.save_pretrained(tmp_path / "pipeline" / "vae")  # a pipeline dir with vae/
    loaded = load_vae(path=str(tmp_path / "pipeline"))
    video_BCFHW = torch.rand(1, 3, 5, 32, 32) * 2 - 1
    mu_BCFHW = vae.model.encode(video_BCFHW).latent_dist.mode()
    mean = torch.tensor([0.5, -1.0, 2.0, 0.0]).view(1, 4, 1, 1, 1)
    std = torch.tensor([2.0, 0.5, 1.0, 4.0]).view(1, 4, 1, 1, 1)
    torch.testing.assert_close(loaded.encode(video_BCFHW), (mu_BCFHW - mean) / std)
    scaling = loaded.identity()["scaling"]
    assert scaling["type"] == "wan_mean_std" and scaling["latents_std"] == [2.0, 0.5, 1.0, 4.0]
    assert loaded.identity()["source"].endswith("vae") and loaded.seed is None


def test_cogvideox_checkpoint_roundtrip_applies_scaling_factor(tmp_path):
    vae = load_vae(config="tiny-cogvideox", seed=3)
    vae.model.save_pretrained(tmp_path / "cog")
    loaded = load_vae(path=str(tmp_path / "cog"))
    video_BCFHW = torch.rand(1, 3, 9, 32, 32) * 2 - 1
    mu_BCFHW = vae.model.encode(video_BCFHW).latent_dist.mode()
    torch.testing.assert_close(loaded.encode(video_BCFHW), mu_BCFHW * 1.15258426)
    assert loaded.identity()["scaling"]["scaling_factor"] == pytest.approx(1.15258426)


def test_vae_path_errors(tmp_path):
    with pytest.raises(ValueError, match="no config.json"):
        load_vae(path=str(tmp_path))
    (tmp_path / "config.json").write_text(json.dumps({"_class_name": "AutoencoderKL"}))
    with pytest.raises(ValueError, match="AutoencoderKL'"):
        load_vae(path=str(tmp_path))
    with pytest.raises(ValueError, match="exactly one"):
        load_vae(path=str(tmp_path), config="tiny")


@pytest.mark.parametrize("config", ["tiny-umt5", "tiny-t5"])
def test_text_encoder_padding_mask_and_checkpoint_roundtrip(tmp_path, config):
    encoder = load_text_encoder(config=config, max_tokens=16, seed=0)
    captions = ["a red circle", "x" * 40]
    emb_BSD, mask_BS, truncated = encoder.encode(captions)
    assert tuple(emb_BSD.shape) == (2, 16, 64) and mask_BS.dtype == torch.bool
    assert mask_BS.sum(1).tolist() == [13, 16]  # 12 bytes + </s>; the long one is cut
    assert truncated == [False, True]
    assert emb_BSD[0, 13:].abs().max().item() == 0.0 and emb_BSD[0, :13].abs().min() > 0
    # Padding does not leak into real tokens: the same caption alone gives the same values.
    alone_BSD, _, _ = encoder.encode(["a red circle"])
    torch.testing.assert_close(alone_BSD[0], emb_BSD[0])
    encoder.model.save_pretrained(tmp_path / "text_encoder")
    encoder.tokenizer.save_pretrained(tmp_path / "tokenizer")
    loaded = load_text_encoder(path=str(tmp_path), max_tokens=16)
    assert type(loaded.model) is type(encoder.model)
    np.testing.assert_array_equal(loaded.encode(captions)[0].numpy(), emb_BSD.numpy())


def test_bfloat16_compute_matches_float32_loosely():
    video_BCFHW = torch.rand(2, 3, 5, 32, 32) * 2 - 1
    reference = load_vae(config="tiny", seed=0).encode(video_BCFHW)
    vae = load_vae(config="tiny", seed=0, dtype=torch.bfloat16)
    latent = vae.encode(video_BCFHW)
    assert latent.dtype == torch.float32 and vae.identity()["weights_sha256"]
    torch.testing.assert_close(latent, reference, atol=0.1, rtol=0.1)
    text = load_text_encoder(config="tiny", max_tokens=8, dtype=torch.bfloat16)
    emb_BSD, _, _ = text.encode(["a blue square"])
    assert emb_BSD.dtype == torch.float32 and torch.isfinite(emb_BSD).all()


def test_wan22_style_patchified_vae_shape_rule():
    """Wan 2.2's VAE patchifies 2x2 before encoding: 16x spatial compression."""
    from diffusers import AutoencoderKLWan
    from megatron_vdit.data.encoders import VideoVAE
    torch.manual_seed(0)
    model = AutoencoderKLWan(base_dim=8, decoder_base_dim=8, z_dim=4, dim_mult=[1, 2, 4, 4],
                             num_res_blocks=1, temperal_downsample=[False, True, True],
                             is_residual=True, in_channels=12, out_channels=12, patch_size=2,
                             scale_factor_spatial=16, latents_mean=[0.0] * 4,
                             latents_std=[1.0] * 4)
    vae = VideoVAE(model, source="test", seed=0)
    assert vae.latent_shape(9, 64, 32) == (4, 3, 4, 2)
    assert tuple(vae.encode(torch.rand(1, 3, 9, 64, 32) * 2 - 1).shape) == (1, 4, 3, 4, 2)
    with pytest.raises(ValueError, match="spatial compression 16"):
        vae.latent_shape(9, 64, 40)


@pytest.mark.parametrize("config", ["tiny", "tiny-wan", "tiny-cogvideox"])
def test_preflight_reads_the_compression_the_loaded_vae_has(tmp_path, config):
    """The precompute refuses bad --frames/--height before loading the VAE, from the tiny
    config or the checkpoint's config.json; it must agree with the loaded model."""
    from megatron_vdit.data.precompute_config import vae_compression_before_loading
    vae = load_vae(config=config, seed=0)
    loaded = (vae.kind, vae.temporal_ratio, vae.spatial_ratio)
    assert loaded[1:] == (4, 8)  # both tiny VAEs compress like the real ones
    assert vae_compression_before_loading(None, config) == loaded
    vae.model.save_pretrained(tmp_path / "pipeline" / "vae")
    assert vae_compression_before_loading(str(tmp_path / "pipeline"), None) == loaded
    (tmp_path / "bare").mkdir()
    assert vae_compression_before_loading(str(tmp_path / "bare"), None) is None
