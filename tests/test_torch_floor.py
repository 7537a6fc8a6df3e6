"""The torch floor: version strings (release and NGC pre-release forms) and the import check."""
import pytest

from megatron_vdit import torch_floor
from megatron_vdit.torch_floor import torch_floor_problem, torch_release


@pytest.mark.parametrize("version, release", [
    ("2.13.0+cpu", (2, 13, 0)),
    ("2.8.0a0+5228986c39.nv25.06", (2, 8, 0)),
    ("2.10.0a0+b4e4ee81d3", (2, 10, 0)),
    ("2.9", (2, 9, 0)),
    ("2.9.1", (2, 9, 1)),
])
def test_release_ignores_prerelease_and_local_parts(version, release):
    assert torch_release(version) == release


@pytest.mark.parametrize("version", ["2.6.0a0+ecf3bae40a.nv25.01", "2.8.0a0+5228986c39.nv25.06",
                                     "2.8.0", "1.13.1", "2.4.1+cu121"])
def test_too_old_is_refused_with_the_fix(version):
    problem = torch_floor_problem(version)
    assert problem is not None
    assert version in problem and "torch>=2.9" in problem and "nvcr.io/nvidia/pytorch" in problem


@pytest.mark.parametrize("version", ["2.9.0", "2.9.0a0+50eac811a6.nv25.09", "2.10.0a0+b4e4ee81d3",
                                     "2.13.0+cpu", "3.0.0"])
def test_new_enough_is_admitted(version):
    assert torch_floor_problem(version) is None


def test_prerelease_without_the_apis_is_refused():
    problem = torch_floor_problem("2.9.0a0+0123456789", ("_PipelineSchedule.eval",))
    assert problem is not None and "_PipelineSchedule.eval" in problem


def test_unreadable_version_is_a_value_error():
    with pytest.raises(ValueError, match="nightly"):
        torch_release("nightly")


def test_import_check_raises_import_error_on_old_torch(monkeypatch):
    import torch
    monkeypatch.setattr(torch, "__version__", "2.8.0a0+5228986c39.nv25.06")
    with pytest.raises(ImportError, match="found torch 2.8.0a0"):
        torch_floor.require_torch()


def test_installed_torch_passes_and_has_the_apis():
    torch_floor.require_torch()
    assert torch_floor._missing_apis() == ()
