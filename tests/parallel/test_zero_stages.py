"""ZeRO stages 1, 2 and 3 at PP=1 (a plain microbatch loop) against one process, and
the collectives each stage issues per step.

TP2 x DP2 and CP2 x DP2 over 2 steps of 2 microbatches: losses, grad norms, a forward-only
loss and all parameters within 1e-5 of a plain single-process model. The collective
counts are what distinguishes the stages (counted by a spy that forwards to the real
gloo collective), with U = FSDP units (4 blocks + the root) and m = 2 microbatches:
ZeRO-1 all-gathers and reduce-scatters each unit once per step, ZeRO-2 once per
microbatch, ZeRO-3 additionally re-gathers every block for its backward.
"""
from __future__ import annotations

import pytest
import torch
import torch.distributed as dist

import pp_testlib as lib
from dist_utils import spawn_world

STEPS = range(2)
MICROBATCHES = 2
UNITS = 4 + 1  # tiny_config's 4 blocks and the root module
LAYOUTS = {"TP2xDP2": dict(tensor_model_parallel_size=2),
           "CP2xDP2 Ulysses": dict(context_parallel_size=2, cp_comm_type="a2a")}
_GATHERS = ("all_gather_single", "all_gather_into_tensor")
_SCATTERS = ("reduce_scatter_single", "reduce_scatter_tensor")


@pytest.fixture(scope="module")
def reference():
    return spawn_world(lib.reference_run, 1, lib.tiny_config(), STEPS)[0]


class _CollectiveSpy:
    """Counts all-gathers and reduce-scatters over `group` (FSDP's DP x CP group; the
    model's own token gathers run over TP or CP), whichever names this torch uses."""

    def __init__(self, group):
        self.ranks = dist.get_process_group_ranks(group)
        self.counts = {"gather": 0, "scatter": 0}
        self._saved = {}

    def __enter__(self):
        for kind, names in (("gather", _GATHERS), ("scatter", _SCATTERS)):
            for name in names:
                if hasattr(dist, name):
                    self._saved[name] = real = getattr(dist, name)
                    setattr(dist, name, self._counting(kind, real))
        return self

    def _counting(self, kind, real):
        def call(*args, **kwargs):
            group = kwargs.get("group")  # FSDP passes it by keyword
            if group is not None and dist.get_process_group_ranks(group) == self.ranks:
                self.counts[kind] += 1
            return real(*args, **kwargs)
        return call

    def __exit__(self, *exc):
        for name, real in self._saved.items():
            setattr(dist, name, real)


def _zero_stages(cfg, ref):
    counts = {}
    for zero_stage in (1, 2, 3):
        for name, degrees in LAYOUTS.items():
            engine, layout, groups = lib.make_engine(cfg, zero_stage=zero_stage, **degrees)
            opt = torch.optim.AdamW(engine.parameters(), lr=lib.LR)
            with _CollectiveSpy(groups.dp_cp) as spy:
                out = lib.train_steps(engine, opt, cfg, layout, groups, STEPS, MICROBATCHES)
            local = lib.dp_slice(lib.global_batch(cfg, lib.EVAL_STEP), layout, groups)
            out["eval"] = [engine.eval_loss(*local, num_microbatches=MICROBATCHES)]
            out["state"] = engine.full_model_state_dict()
            lib.assert_matches(out, ref, f"ZeRO-{zero_stage} {name}")
            counts[(zero_stage, name)] = dict(spy.counts)
    return counts


def _per_step(counts):
    return {k: v / len(STEPS) for k, v in counts.items()}


def test_zero_stages_match_single_process_and_differ_in_collectives(reference):
    for counts in spawn_world(_zero_stages, 4, lib.tiny_config(), reference):
        for name in LAYOUTS:
            z1, z2, z3 = (_per_step(counts[(stage, name)]) for stage in (1, 2, 3))
            # clip_grad_norm_ and optimizer steps issue no FSDP all-gather/reduce-scatter.
            assert z1 == {"gather": UNITS, "scatter": UNITS}
            assert z2 == {"gather": MICROBATCHES * UNITS, "scatter": MICROBATCHES * UNITS}
            assert z3["scatter"] == MICROBATCHES * UNITS
            assert z3["gather"] == MICROBATCHES * (2 * (UNITS - 1) + 1)
