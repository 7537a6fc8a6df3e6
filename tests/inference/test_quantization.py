"""PTQ runs, quantizes the blocks' TP linears, and save/restore round-trips exactly."""

import pytest
import torch

from dist_utils import spawn_world

pytest.importorskip("modelopt.torch.quantization",
                    reason="nvidia-modelopt not installed (optional extra: pip install -e .[quant])")


def _quantize_and_restore(run_dir: str, tmp: str, scheme: str):
    from megatron_vdit.inference import quantize as quant
    from megatron_vdit.inference.generate import Generator
    from megatron_vdit.inference.run_files import open_run
    from megatron_vdit.parallel.layout import ParallelLayout
    run = open_run(run_dir)
    reference, quantized, fresh = (Generator(run, ParallelLayout()) for _ in range(3))
    c = reference.config
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, c.in_channels, c.latent_frames, c.latent_height, c.latent_width, generator=g)
    batch = (x, torch.tensor([10.0, 600.0]),
             torch.randn(2, c.max_text_tokens, c.text_hidden_size, generator=g),
             torch.ones(2, c.max_text_tokens, dtype=torch.bool))
    quant.quantize(quantized.model, scheme, [batch])
    quant.save(quantized.model, f"{tmp}/{scheme}.pth")
    quant.restore(fresh.model, f"{tmp}/{scheme}.pth")
    with torch.no_grad():
        outs = [m.model(*batch) for m in (reference, quantized, fresh)]
    return outs + [quant.quantized_layers(fresh.model)]


@pytest.mark.parametrize("scheme", ["int8", "fp8"])
def test_quantize_save_restore(trained_run, tmp_path, scheme):
    ref, quantized, restored, layers = spawn_world(_quantize_and_restore, 1, str(trained_run),
                                                   str(tmp_path), scheme)[0]
    # Every linear of both blocks (qkv, self out, cross q, cross kv, cross out, fc1, fc2)
    # plus the 7 embedding/conditioning/final linears.
    assert len(layers) == 2 * 7 + 7 and "blocks.0.self_attention.linear_qkv" in layers
    torch.testing.assert_close(restored, quantized, rtol=0, atol=0)
    rel = ((quantized - ref).norm() / ref.norm()).item()
    assert 0 < rel < 0.2, rel  # quantization changes the output, but not wildly
