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

This repository's own packages are never optional: `pytest.importorskip` of one of them
(or any skip for "could not import 'megatron_vdit...'") fails the test instead of
skipping it, so a broken package cannot turn its tests into silent skips.
"""
import os
import re
import sys
import warnings

import pytest

pytest_plugins = ["pytester"]  # tests/test_conftest.py runs small sessions with this file

# Under pytest-xdist every worker shares the machine's cores with the others: one OpenMP
# thread per worker, inherited by the trainings and samplers the tests start as
# subprocesses. (Unset, each process spins up one thread per core; on the 2-core CI
# machine the natural-data training then took 480 s instead of 49 s.)
if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ.setdefault("OMP_NUM_THREADS", "1")
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
    stop_wandb_service()


def stop_wandb_service() -> None:
    """End the wandb-core service an in-process training test started: its threads
    could hold a lock at the moment a later parallel test forks its ranks, and a forked
    rank would then wait on that lock forever."""
    wandb = sys.modules.get("wandb")
    if wandb is not None and hasattr(wandb, "teardown"):
        wandb.teardown()


@pytest.fixture
def tp_group():
    """A real gloo world of one and its (singleton) tensor-parallel group, for building
    models in-process; torn down after the test by `no_leaked_process_group`."""
    from megatron_vdit.parallel.layout import (ParallelLayout, build_parallel_groups,
                                               init_distributed)
    init_distributed("gloo")
    return build_parallel_groups(ParallelLayout()).tp


OWN_PACKAGES = ("megatron_vdit", "scaling_laws")
_IMPORT_SKIP = re.compile(r"could not import '([\w.]+)'")


def _own_package_import_skip(excinfo) -> str | None:
    """The skip message when a skip hides a failed import of one of our packages."""
    if excinfo is None or not excinfo.errisinstance(pytest.skip.Exception):
        return None
    match = _IMPORT_SKIP.search(str(excinfo.value))
    if match and match.group(1).split(".")[0] in OWN_PACKAGES:
        return str(excinfo.value)
    return None


def _as_failure(report, reason: str):
    report.outcome = "failed"
    report.longrepr = (f"{reason}\n(this repository's own package failed to import: "
                       "that is a failure, not a reason to skip; see tests/conftest.py)")
    return report


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item, call):
    report = yield
    reason = _own_package_import_skip(call.excinfo)
    return _as_failure(report, reason) if reason else report


@pytest.hookimpl(wrapper=True)
def pytest_make_collect_report(collector):
    """The same for a module-level `importorskip` (it skips the whole file)."""
    report = yield
    if report.skipped:
        message = str(report.longrepr[-1]) if isinstance(report.longrepr, tuple) else ""
        match = _IMPORT_SKIP.search(message)
        if match and match.group(1).split(".")[0] in OWN_PACKAGES:
            return _as_failure(report, message)
    return report


def pytest_terminal_summary(terminalreporter, config):
    """Print the shuffle seed even under -q (the plugin puts it only in the header)."""
    try:
        from random_order.config import Config
    except ImportError:  # the plugin is optional; without it the order is the files'
        return
    order = Config(config)
    if order.is_enabled:
        terminalreporter.write_line(f"random order: --random-order-bucket={order.bucket_type} "
                                    f"--random-order-seed={order.seed}")
