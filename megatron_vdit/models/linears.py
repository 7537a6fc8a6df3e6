"""megatron-core's tensor-parallel linears with the bias fused into the matmul.

megatron-core's `ColumnParallelLinear`/`RowParallelLinear` compute `x @ W^T` in their
own autograd function and add the bias in a separate pass (their design relies on
CUDA-side gradient-accumulation fusion). On CPU that extra pass over the output, and
the separate bias-gradient reduction, cost a large share of a small model's step.
These subclasses keep everything megatron owns (parameter creation, initialisation
and sharding, `tp_group`, checkpoint names) and replace only `forward` with
`F.linear` (one addmm) plus megatron's own device-agnostic TP mappings:
column = copy-to-TP-region (identity forward, all-reduce of the input gradient),
row = all-reduce of the partial output. The math is the same as megatron's.
"""
from __future__ import annotations

import torch.nn.functional as F
from megatron.core.tensor_parallel.layers import ColumnParallelLinear, RowParallelLinear
from megatron.core.tensor_parallel.mappings import (copy_to_tensor_model_parallel_region,
                                                    reduce_from_tensor_model_parallel_region)


class FusedColumnParallelLinear(ColumnParallelLinear):
    """Output split over TP (whole heads per shard in this model); input replicated."""

    def forward(self, input_, weight=None, runtime_gather_output=None):
        assert not self.gather_output and runtime_gather_output is None
        weight = self.weight if weight is None else weight
        if self.tp_group.size() > 1:
            input_ = copy_to_tensor_model_parallel_region(input_, group=self.tp_group)
        if self.skip_bias_add:
            return F.linear(input_, weight), self.bias
        return F.linear(input_, weight, self.bias), None


class FusedRowParallelLinear(RowParallelLinear):
    """Input split over TP; the partial outputs are summed over TP, then the bias added."""

    def forward(self, input_):
        assert self.input_is_parallel
        if self.tp_group.size() == 1:
            if self.skip_bias_add:
                return F.linear(input_, self.weight), self.bias
            return F.linear(input_, self.weight, self.bias), None
        out = reduce_from_tensor_model_parallel_region(F.linear(input_, self.weight),
                                                       group=self.tp_group)
        if self.skip_bias_add or self.bias is None:
            return out, self.bias if self.skip_bias_add else None
        return out + self.bias, None
