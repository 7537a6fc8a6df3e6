"""Checkpoints across layouts: save at one layout, load at another, continue.

An uninterrupted single-process run of four AdamW steps is the reference. Runs at
other layouts train two steps, save with DCP (model + AdamW state), and a different
layout loads and trains the last two steps: its losses and final parameters must match
the uninterrupted run within 1e-5 relative.
"""
from __future__ import annotations

import pytest
import torch
import torch.distributed.checkpoint as dcp

import pp_testlib as lib
from dist_utils import spawn_world

STEPS = range(4)
FIRST, SECOND = range(2), range(2, 4)


@pytest.fixture(scope="module")
def reference():
    return spawn_world(lib.reference_run, 1, lib.tiny_config(), STEPS)[0]


def _continued(ref: dict) -> dict:
    return {"losses": ref["losses"][2:], "norms": ref["norms"][2:], "state": ref["state"]}


def _train_and_save(cfg, path, **degrees):
    engine, layout, groups = lib.make_engine(cfg, **degrees)
    opt = torch.optim.AdamW(engine.parameters(), lr=lib.LR)
    out = lib.train_steps(engine, opt, cfg, layout, groups, FIRST, num_microbatches=2)
    engine.save(path, opt)
    return out


def _load_and_continue(cfg, path, **degrees):
    engine, layout, groups = lib.make_engine(cfg, **degrees)
    opt = torch.optim.AdamW(engine.parameters(), lr=lib.LR)
    engine.load(path, opt)
    out = lib.train_steps(engine, opt, cfg, layout, groups, SECOND, num_microbatches=2)
    out["state"] = engine.full_model_state_dict()
    return out


def _save_then_load(cfg, ref, path, save_degrees, load_degrees, what):
    first = _train_and_save(cfg, path, **save_degrees)
    torch.testing.assert_close(torch.tensor(first["losses"]), torch.tensor(ref["losses"][:2]),
                               rtol=1e-5, atol=0)
    out = _load_and_continue(cfg, path, **load_degrees)
    lib.assert_matches(out, _continued(ref), what)
    return out["losses"]


def _single_load(cfg, ref, path):
    out = _load_and_continue(cfg, path)
    lib.assert_matches(out, _continued(ref), "-> single process")
    return out["losses"]


def test_save_tp2_pp2_load_cp2_dp2_and_single_process(reference, tmp_path):
    cfg, path = lib.tiny_config(), str(tmp_path / "ckpt_tp2_pp2")
    save = dict(tensor_model_parallel_size=2, pipeline_model_parallel_size=2,
                num_layers_per_virtual_pipeline_stage=1)
    load = dict(context_parallel_size=2, cp_comm_type="p2p", zero_stage=3)  # DP2 x CP2
    spawn_world(_save_then_load, 4, cfg, reference, path, save, load,
                "TP2xPP2 interleaved -> CP2xDP2 ZeRO-3")
    spawn_world(_single_load, 1, cfg, reference, path)
    # The files hold single-process names and full shapes, whatever the saving layout.
    saved = dcp.FileSystemReader(path).read_metadata().state_dict_metadata
    model = {k[len("model."):]: m.size for k, m in saved.items() if k.startswith("model.")}
    assert model == {name: value.shape for name, value in reference["state"].items()}
    moments = {k for k in saved if k.endswith((".exp_avg", ".exp_avg_sq"))}
    assert moments == {f"optim.{n}.{m}" for n in model for m in ("exp_avg", "exp_avg_sq")}


def test_save_dp2_zero3_load_pp2(reference, tmp_path):
    cfg, path = lib.tiny_config(), str(tmp_path / "ckpt_dp2")
    spawn_world(_save_then_load, 2, cfg, reference, path, dict(zero_stage=3),
                dict(pipeline_model_parallel_size=2), "DP2 ZeRO-3 -> PP2 1F1B")


def _local(t):
    return t.to_local() if hasattr(t, "to_local") else t


def _async_save_while_training(cfg, ref, path, **degrees):
    """Save asynchronously after two steps and keep training while the files are
    written: the checkpoint must hold the weights of the moment it was started."""
    engine, layout, groups = lib.make_engine(cfg, **degrees)
    opt = torch.optim.AdamW(engine.parameters(), lr=lib.LR)
    first = lib.train_steps(engine, opt, cfg, layout, groups, FIRST, num_microbatches=2)
    torch.testing.assert_close(torch.tensor(first["losses"]), torch.tensor(ref["losses"][:2]),
                               rtol=1e-5, atol=0)
    # What DCP is handed are this rank's own tensors, not gathered copies: same memory.
    state = engine.state_dict_for_save(opt)
    for name, p in engine.named_parameters():
        assert state[f"model.{name}"].to_local().data_ptr() == _local(p).data_ptr(), name
        moment = _local(opt.state[p]["exp_avg"])
        assert state[f"optim.{name}.exp_avg"].to_local().data_ptr() == moment.data_ptr(), name
    future = engine.async_save(path, opt)
    lib.train_steps(engine, opt, cfg, layout, groups, SECOND, num_microbatches=2)
    future.result()


def test_async_save_tp2_dp2_while_training_load_cp2_pp2(reference, tmp_path):
    cfg, path = lib.tiny_config(), str(tmp_path / "ckpt_async")
    spawn_world(_async_save_while_training, 4, cfg, reference, path,
                tensor_model_parallel_size=2, zero_stage=3)  # TP2 x DP2
    spawn_world(_load_and_match, 4, cfg, reference, path, "TP2xDP2 async -> CP2xPP2",
                context_parallel_size=2, cp_comm_type="a2a", pipeline_model_parallel_size=2)


def _load_and_match(cfg, ref, path, what, **degrees):
    lib.assert_matches(_load_and_continue(cfg, path, **degrees), _continued(ref), what)
