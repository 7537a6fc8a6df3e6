"""Checkpoints across layouts: save at one layout, load at another, continue.

An uninterrupted single-process run of four AdamW steps is the reference. Runs at
other layouts train two steps, save with DCP (model + AdamW state), and a different
layout loads and trains the last two steps: its losses and final parameters must match
the uninterrupted run within 1e-5 relative.
"""
from __future__ import annotations

import pytest
import torch

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


def _pp2_save_then_dp2_load(cfg, ref, path):
    first = _train_and_save(cfg, path, pipeline_model_parallel_size=2,
                            num_layers_per_virtual_pipeline_stage=1)
    torch.testing.assert_close(torch.tensor(first["losses"]), torch.tensor(ref["losses"][:2]),
                               rtol=1e-5, atol=0)
    out = _load_and_continue(cfg, path, pipeline_model_parallel_size=2)
    lib.assert_matches(out, _continued(ref), "PP2 interleaved -> reloaded")
    return out["losses"]


def _single_load(cfg, ref, path):
    out = _load_and_continue(cfg, path)
    lib.assert_matches(out, _continued(ref), "-> single process")
    return out["losses"]


def test_save_pp2_load_other_layouts(reference, tmp_path):
    cfg, path = lib.tiny_config(), str(tmp_path / "ckpt_pp2")
    spawn_world(_pp2_save_then_dp2_load, 2, cfg, reference, path)
    spawn_world(_single_load, 1, cfg, reference, path)
