"""Pipeline parallelism alone (PP2: 1F1B, interleaved, GPipe) against one process.

Three AdamW steps with gradient clipping active: the losses, the global grad norms and
the parameters afterwards match a plain single-process model within 1e-5 relative
(float32); bf16 compute with fp32 master weights within 1e-2 on the losses. Several layouts share one spawned world to keep the suite fast.
"""
from __future__ import annotations

import pytest
import torch
import torch.distributed as dist

import pp_testlib as lib
from dist_utils import spawn_world
from megatron_vdit.parallel import pipeline
from megatron_vdit.parallel.layout import ParallelLayout

STEPS = range(3)


@pytest.fixture(scope="module")
def reference():
    return spawn_world(lib.reference_run, 1, lib.tiny_config(), STEPS)[0]


def _world_of_one(cfg, ref):
    out = lib.engine_run(cfg, STEPS, num_microbatches=2)
    lib.assert_matches(out, ref, "single process engine")
    return out["losses"]


def _pp2_schedules(cfg, ref):
    cases = [("1f1b", 2, {}), ("1f1b", 4, {}), ("gpipe", 2, {}),
             ("interleaved", 2, {"num_layers_per_virtual_pipeline_stage": 1})]
    for schedule, microbatches, extra in cases:
        out = lib.engine_run(cfg, STEPS, microbatches, schedule=schedule,
                             pipeline_model_parallel_size=2, **extra)
        lib.assert_matches(out, ref, f"PP2 {schedule} x{microbatches} microbatches")
    # bf16 compute with fp32 master weights: bf16 hidden states cross the pipe.
    engine, layout, groups = lib.make_engine(cfg, "interleaved", param_dtype=torch.bfloat16,
                                             pipeline_model_parallel_size=2,
                                             num_layers_per_virtual_pipeline_stage=1)
    assert {p.dtype for p in engine.parameters()} == {torch.float32}
    opt = torch.optim.AdamW(engine.parameters(), lr=lib.LR)
    out = lib.train_steps(engine, opt, cfg, layout, groups, STEPS, num_microbatches=2)
    torch.testing.assert_close(torch.tensor(out["losses"]), torch.tensor(ref["losses"]),
                               rtol=1e-2, atol=0, msg=lambda m: f"PP2 bf16: {m}")
    return dist.get_world_size()


def test_single_process_engine_matches_plain_model(reference):
    spawn_world(_world_of_one, 1, lib.tiny_config(), reference)


def test_pp2_schedules_match_single_process(reference):
    assert spawn_world(_pp2_schedules, 2, lib.tiny_config(), reference) == [2, 2]


def test_stage_split_keeps_names_and_owners():
    assert pipeline.local_stage_ids(1, 2, 2) == [1, 3]
    assert list(pipeline.stage_layers(3, 4, 8)) == [6, 7]
    assert pipeline.num_virtual_stages("interleaved", 8, 2, 2) == 2
    assert pipeline.is_duplicated("ada_single.1.weight")
    assert not pipeline.is_duplicated("blocks.0.mlp.linear_fc1.weight")


@pytest.mark.parametrize("pp, layers", [(8, 4), (3, 2)])
def test_pp_larger_than_layers_fails_before_any_group(pp, layers):
    cfg = lib.tiny_config(num_layers=layers)
    layout = ParallelLayout(pipeline_model_parallel_size=pp)
    with pytest.raises(ValueError, match=f"num_layers={layers}"):
        layout.validate(pp, cfg.num_layers, cfg.num_attention_heads, cfg.tokens_per_sample)
    with pytest.raises(ValueError, match=f"pipeline_model_parallel_size={pp} is larger than "
                                         f"num_layers={layers}"):
        pipeline.num_virtual_stages("1f1b", layers, pp, None)
    assert not dist.is_initialized()  # nothing was created


def test_bad_virtual_stage_flags_name_the_numbers():
    with pytest.raises(ValueError, match="num_layers_per_virtual_pipeline_stage=3"):
        pipeline.num_virtual_stages("interleaved", 8, 2, 3)
    with pytest.raises(ValueError, match="needs schedule='interleaved'"):
        pipeline.num_virtual_stages("1f1b", 8, 2, 2)
    with pytest.raises(ValueError, match="needs pipeline_model_parallel_size > 1"):
        pipeline.num_virtual_stages("interleaved", 8, 1, 4)
    with pytest.raises(ValueError, match="unknown pipeline schedule 'zb'"):
        pipeline.num_virtual_stages("zb", 8, 2, None)


def _combined_world8(cfg, ref):
    cases = [
        ("TP2xPP2xDP2 1F1B ZeRO-2", dict(tensor_model_parallel_size=2,
                                          pipeline_model_parallel_size=2), 2, {}),
        ("CP2xPP2xDP2 ring ZeRO-3", dict(context_parallel_size=2, cp_comm_type="p2p",
                                         pipeline_model_parallel_size=2), 2,
         dict(zero_stage=3)),
        ("TP2xCP2xPP2 SP Ulysses interleaved", dict(
            tensor_model_parallel_size=2, sequence_parallel=True, context_parallel_size=2,
            cp_comm_type="a2a", pipeline_model_parallel_size=2,
            num_layers_per_virtual_pipeline_stage=1), 4, {}),
        ("PP2xDP4 interleaved ZeRO-3", dict(pipeline_model_parallel_size=2,
                                            num_layers_per_virtual_pipeline_stage=1), 1,
         dict(zero_stage=3)),
    ]
    for what, degrees, microbatches, options in cases:
        out = lib.engine_run(cfg, STEPS, microbatches, **options, **degrees)
        lib.assert_matches(out, ref, what)
    return dist.get_world_size()


def test_combined_layouts_world8_match_single_process(reference):
    assert spawn_world(_combined_world8, 8, lib.tiny_config(), reference) == [8] * 8


def _bad_microbatches(cfg):
    engine, layout, groups = lib.make_engine(cfg, pipeline_model_parallel_size=2,
                                             num_layers_per_virtual_pipeline_stage=1)
    batch = lib.global_batch(cfg, 0)
    with pytest.raises(ValueError, match="num_microbatches=3 does not divide the per-DP-rank "
                                         "batch of 4 samples"):
        engine.forward_backward(*batch, num_microbatches=3)
    big = lib.global_batch(cfg, 0, batch=5)
    with pytest.raises(ValueError, match="num_microbatches=5 is not a multiple of 2 rounds"):
        engine.forward_backward(*big, num_microbatches=5)
    return True


def test_bad_microbatch_counts_name_the_numbers():
    assert spawn_world(_bad_microbatches, 2, lib.tiny_config()) == [True, True]


def _uneven_world8(cfg, ref):
    out = lib.engine_run(cfg, STEPS, 2, tensor_model_parallel_size=2, sequence_parallel=True,
                         context_parallel_size=2, cp_comm_type="p2p",
                         pipeline_model_parallel_size=2)
    lib.assert_matches(out, ref, "TP2xSPxCP2xPP2, 30 tokens padded to 32")
    return True


def test_padded_tokens_cross_the_pipe_world8():
    cfg = lib.tiny_config(latent_height=6, latent_width=10)  # 2 x 3 x 5 = 30 tokens
    assert cfg.tokens_per_sample % 4
    ref = spawn_world(lib.reference_run, 1, cfg, STEPS)[0]
    assert spawn_world(_uneven_world8, 8, cfg, ref) == [True] * 8
