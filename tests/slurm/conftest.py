"""A real SLURM for these tests: the local cluster of tools/slurm_local.sh.

CI starts it before `make test`. Here the fixture reuses a running one, or starts it
when slurm-wlm is installed (and stops what it started); otherwise the tests skip and
say why. Jobs always go to the local cluster (its own SLURM_CONF), never to a real one
whose login node the tests might run on.
"""
import os
import shutil
import subprocess
import sys

import pytest

from slurm_cluster import ROOT

SCRIPT = ROOT / "tools" / "slurm_local.sh"


def _script(cmd: str, env: dict, timeout: int) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(SCRIPT), cmd], env=env, capture_output=True, text=True,
                          timeout=timeout)


@pytest.fixture(scope="session")
def slurm_env():
    """Environment for SLURM clients and jobs: the local cluster, this checkout's code."""
    env = dict(os.environ)
    env["SLURM_CONF"] = _script("env", env, 10).stdout.split("=", 1)[1].strip()
    started = False
    if _script("status", env, 60).returncode != 0:
        if shutil.which("slurmctld") is None:
            pytest.skip("no local SLURM: not running and slurm-wlm is not installed; run "
                        "`tools/slurm_local.sh start` (installs slurm-wlm and munge as root)")
        proc = _script("start", {**env, "SLURM_LOCAL_NO_INSTALL": "1"}, 180)
        if proc.returncode != 0:
            reason = (proc.stderr.strip().splitlines() or ["no output"])[-1]
            pytest.skip(f"local SLURM could not start: {reason}")
        started = True
    env.update(PYTHONPATH=os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep),
               PYTHON=sys.executable, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    yield env
    if started:
        _script("stop", env, 120)
