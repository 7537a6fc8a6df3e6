"""The oldest torch this package runs on, checked once when `megatron_vdit` is imported.

Why 2.9: the parallel engine relies on three APIs that older releases lack.
- FSDP2 `FSDPModule.set_gradient_divide_factor` and `set_force_sum_reduction_for_comms`
  (pytorch/pytorch PR 155915, June 2025; the former renames 2.6's
  `set_reduce_scatter_divide_factor`). We need both: CP ranks' gradients are summed
  while DP ranks' are averaged, and gloo has no pre-multiplied sum.
- `torch.distributed.pipelining` schedules' `eval()` (PR 157795, July 2025, after the
  2.8 branch was cut; first shipped in 2.9): forward-only validation through the pipe.
NGC images carry pre-release builds ("2.10.0a0+b4e4ee81d3" in 25.12): the base release
number (2.10.0) is what counts, so "2.9.0a0+..." is admitted by the version and then
checked for the APIs themselves, since an early 2.9 pre-release may predate them.
"""
from __future__ import annotations

import re

MIN_TORCH = (2, 9)
_VERSION = re.compile(r"^\s*(\d+)\.(\d+)(?:\.(\d+))?")


def torch_release(version: str) -> tuple[int, int, int]:
    """(major, minor, patch) of a torch version string, ignoring pre-release and local
    parts: "2.8.0a0+5228986c39.nv25.06" -> (2, 8, 0)."""
    match = _VERSION.match(version)
    if match is None:
        raise ValueError(f"cannot read a release number from torch version {version!r}")
    major, minor, patch = match.groups()
    return int(major), int(minor), int(patch or 0)


def torch_floor_problem(version: str, missing_apis: tuple[str, ...] = ()) -> str | None:
    """Why this torch cannot run megatron_vdit (None when it can)."""
    need = ".".join(map(str, MIN_TORCH))
    if torch_release(version)[:2] < MIN_TORCH:
        return (f"megatron_vdit needs torch>={need} (FSDP2 gradient divide factor / sum "
                f"reduction, pipeline schedule eval()); found torch {version}. Use the NGC "
                f"image in the Dockerfile (nvcr.io/nvidia/pytorch:25.12-py3) or "
                f"`pip install torch>={need}`")
    if missing_apis:
        return (f"megatron_vdit needs torch>={need} with {', '.join(missing_apis)}; this "
                f"torch {version} is a pre-release without them: use a later build")
    return None


def _missing_apis() -> tuple[str, ...]:
    from torch.distributed.fsdp import FSDPModule
    from torch.distributed.pipelining.schedules import _PipelineSchedule
    wanted = [(FSDPModule, "set_gradient_divide_factor"),
              (FSDPModule, "set_force_sum_reduction_for_comms"),
              (_PipelineSchedule, "eval")]
    return tuple(f"{cls.__name__}.{name}" for cls, name in wanted if not hasattr(cls, name))


def require_torch() -> None:
    """Raise ImportError with the fix when the installed torch is too old."""
    import torch
    version = torch.__version__
    problem = torch_floor_problem(version)
    if problem is None:
        problem = torch_floor_problem(version, _missing_apis())
    if problem is not None:
        raise ImportError(problem)
