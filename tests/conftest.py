"""Shared pytest setup: quiet megatron's import-time warnings, no wandb network, and no
process group that outlives the test which created it.

Order independence: a test that builds a model in-process (tests/models, the trainer in
tests/training) initialises a default process group (a world of one). Left behind, it
is inherited by the workers that parallel tests fork, whose own `init_process_group`
then fails and whose teardown of the copied group hangs. So every test starts and ends
without a default group (`no_leaked_process_group`), fixtures that need a group are
function-scoped (`tp_group`), and `dist_utils.spawn_world` refuses to fork while one
exists. `pytest --random-order` (pytest-random-order, in the test extra) checks this;
it prints the seed it used, and `--random-order-seed=N` repeats an order.
"""
import os
import sys
import warnings

import pytest

os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")
warnings.filterwarnings("ignore", message=".*Transformer Engine.*")
warnings.filterwarnings("ignore", message=".*Apex.*")


def destroy_leaked_process_group() -> bool:
    """Destroy the default process group (and every subgroup) if one exists."""
    dist = sys.modules.get("torch.distributed")  # never imported: no group can exist
    if dist is not None and dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
        return True
    return False


@pytest.fixture(autouse=True)
def no_leaked_process_group():
    """Before and after every test: no default process group in the pytest process."""
    destroy_leaked_process_group()
    yield
    destroy_leaked_process_group()


@pytest.fixture
def tp_group():
    """A real gloo world of one and its (singleton) tensor-parallel group, for building
    models in-process; torn down after the test by `no_leaked_process_group`."""
    from megatron_vdit.parallel.layout import (ParallelLayout, build_parallel_groups,
                                               init_distributed)
    init_distributed("gloo")
    return build_parallel_groups(ParallelLayout()).tp
