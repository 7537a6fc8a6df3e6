"""The planner's memory and step-time arithmetic, against hand-computed numbers."""
import pytest

from megatron_vdit.parallel.memory import (block_activation_bytes, in_flight_microbatches,
                                           layout_memory, model_state_bytes)
from megatron_vdit.planning import layouts, video
from megatron_vdit.planning.gpus import GPUS, gpu_spec
from megatron_vdit.planning.step_time import StepInputs, step_time

P, L = 8e9, 32  # params, layers


@pytest.mark.parametrize("zero, expected", [  # PP1: FSDP's own stages
    # 12 bytes sharded over DP x CP = 16; stage 1: + 2 + 4 unsharded; stage 2: fp32 grads
    # sharded, bf16 params whole; stage 3: two blocks' bf16 params (of P / TP).
    (1, 12 * 2e9 / 16 + 6 * 2e9),
    (2, 16 * 2e9 / 16 + 2 * 2e9),
    (3, 16 * 2e9 / 16 + 2 * 2 * 8e9 / 32 / 4),
])
def test_model_states_by_zero_stage(zero, expected):
    # TP4 x PP1 x (DP8 x CP2): each rank's model holds 2e9 of the 8e9 parameters.
    got = model_state_bytes(P, L, tp=4, pp=1, dp=8, cp=2, zero_stage=zero) * 1.0
    assert got == pytest.approx(expected)


def test_pipeline_keeps_unsharded_gradients():
    # TP4 x PP2 again; under PP the stage's fp32 gradients (4 x 1e9) stay whole.
    assert model_state_bytes(P, L, tp=4, pp=2, dp=8, cp=2, zero_stage=2) == pytest.approx(
        model_state_bytes(P, L, tp=4, pp=2, dp=8, cp=2, zero_stage=1))
    z3 = model_state_bytes(P, L, tp=4, pp=2, dp=8, cp=2, zero_stage=3)
    assert z3 == pytest.approx(12 * 1e9 / 16 + 4 * 1e9 + 2 * 2 * 8e9 / 32 / 4)


def test_sequence_parallel_keeps_gathered_inputs_whole():
    s, d = 4096, 1024
    assert block_activation_bytes(s, d, 1, None) == 82 * s * d
    assert block_activation_bytes(s, d, 4, None) == pytest.approx((76 / 4 + 6) * s * d)
    assert block_activation_bytes(s, d, 4, "full") == pytest.approx(2 * s * d / 4)


def test_pipeline_holds_pp_microbatches():
    assert in_flight_microbatches(1, 1, 8) == 1
    assert in_flight_microbatches(4, 1, 8) == 4
    assert in_flight_microbatches(4, 2, 8) == pytest.approx(4 + 3 / 2)
    assert in_flight_microbatches(4, 1, 2) == 2  # fewer micro-batches than stages
    mem = layout_memory(params_total=P, num_layers=L, hidden_size=1024, tokens_per_sample=8192,
                        tp=1, cp=2, pp=4, dp=1, num_microbatches=8)
    # 82 s d per block, s = 8192 / CP2, 8 layers per stage, 4 micro-batches in flight.
    assert mem.activations == pytest.approx(82 * 4096 * 1024 * 8 * 4)


def test_compute_time_is_flops_over_rate():
    gpu = GPUS["h100-80gb"]
    run = StepInputs(params_total=1e9, num_layers=8, hidden_size=2048, tokens_per_sample=1024,
                     flops_per_sample=1e15, attention_flops_per_sample=1e14, global_batch=64,
                     num_gpus=16, gpu=gpu, gpus_per_node=8, mfu=0.5)
    t = step_time(run, tp=1, cp=1, pp=2, dp=8, vpp=1, ulysses=1, zero_stage=1,
                  micro_batch_size=2, recompute=None)
    # 64 samples x 1e15 FLOPs over 16 GPUs at half of peak; bubble (PP-1)/m, m = 4.
    assert t["compute"] == pytest.approx(64 * 1e15 / (16 * 0.5 * gpu.peak_bf16_flops))
    assert t["pipeline_bubble"] == pytest.approx(t["compute"] / 4)
    assert t["tp_comm"] == 0 and t["cp_comm"] == 0


def test_cp_flavours_follow_the_heads():
    assert layouts.cp_flavours(16, 8) == [("p2p", 1), ("a2a", 8), ("a2a+p2p", 4)]
    assert layouts.cp_flavours(6, 4) == [("p2p", 1), ("a2a+p2p", 2)]
    assert layouts.rounded_batch(865, 192, 1) == 960 and layouts.rounded_batch(10, 8, 4) == 32


def test_video_shapes():
    assert video.latent_from_video(17, 256, 256).tokens == 5 * 16 * 16
    assert video.latent_for_tokens(73728) == video.LatentShape(32, 96, 96)
    assert video.latent_for_tokens(1280).tokens == 1280
    with pytest.raises(ValueError, match="--frames 16"):
        video.latent_from_video(16, 256, 256)
    with pytest.raises(ValueError, match="unknown GPU type"):
        gpu_spec("v100")
