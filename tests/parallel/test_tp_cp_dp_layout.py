"""Invalid TP / CP / DP layouts and options fail early, naming the offending numbers.

These run in the pytest process with no process group at all: a layout must be rejected
before any group (or model) exists.
"""
from __future__ import annotations

import pytest
import torch.distributed as dist

from megatron_vdit.parallel.layout import ParallelLayout, build_parallel_groups

HEADS, LAYERS, TOKENS = 4, 2, 48


@pytest.mark.parametrize("degrees, world, message", [
    (dict(tensor_model_parallel_size=3), 3, "tensor parallel size 3 does not divide "
                                            "num_attention_heads=4"),
    (dict(context_parallel_size=8, cp_comm_type="a2a"), 8,
     "Ulysses degree 8 does not divide the 4 heads per TP rank"),
    (dict(tensor_model_parallel_size=2, context_parallel_size=4, cp_comm_type="a2a"), 8,
     "Ulysses degree 4 does not divide the 2 heads per TP rank"),
    (dict(context_parallel_size=4, cp_comm_type="a2a+p2p", ulysses_size=3), 4,
     "Ulysses degree 3 does not divide"),
    (dict(context_parallel_size=2, cp_comm_type="ring"), 2, "cp_comm_type='ring'"),
    (dict(sequence_parallel=True), 1, "--sequence-parallel needs tensor_model_parallel_size > 1"),
    (dict(tensor_model_parallel_size=2, context_parallel_size=32), 64,
     "tokens_per_sample=48 is smaller than CP x TP = 64"),
    (dict(tensor_model_parallel_size=2, data_parallel_size=2), 8,
     "= 4 != world size 8"),
])
def test_invalid_layout_rejected_before_groups(degrees, world, message):
    layout = ParallelLayout(**degrees)
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace("+", r"\+")):
        layout.validate(world, LAYERS, HEADS, TOKENS)
    assert not dist.is_initialized()


def test_world_not_divisible_names_numbers():
    with pytest.raises(ValueError, match=r"world size 6 is not divisible by TP x PP x CP = 4"):
        ParallelLayout.from_world_size(6, tensor_model_parallel_size=2, context_parallel_size=2)


def test_hybrid_without_degree_needs_heads_before_mesh(monkeypatch):
    """a2a+p2p with no ulysses_size cannot pick a degree without the head count."""
    monkeypatch.setattr(dist, "get_world_size", lambda group=None: 4)
    layout = ParallelLayout(context_parallel_size=4, cp_comm_type="a2a+p2p")
    with pytest.raises(ValueError, match="pass num_attention_heads"):
        build_parallel_groups(layout)


def test_uneven_sequences_are_valid():
    """Sequence lengths CP does not divide are padded, not rejected."""
    ParallelLayout(context_parallel_size=4, cp_comm_type="p2p").validate(4, LAYERS, HEADS, 45)
    ParallelLayout(tensor_model_parallel_size=2, sequence_parallel=True).validate(2, LAYERS,
                                                                                  HEADS, 45)


def test_option_errors_name_the_value():
    from megatron_vdit.parallel.parallelize import apply_data_parallel, apply_recompute
    with pytest.raises(ValueError, match=r"zero_stage=4; expected one of \(1, 2, 3\)"):
        apply_data_parallel(None, None, zero_stage=4)
    with pytest.raises(ValueError, match="granularity 'attention'"):
        apply_recompute(None, "attention")
