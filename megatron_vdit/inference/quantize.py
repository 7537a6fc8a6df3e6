"""Post-training quantization of the Cross-DiT with NVIDIA ModelOpt (optional extra).

`pip install -e .[quant]` brings `nvidia-modelopt`. Its INT8 (per-channel weights,
per-tensor activations) and FP8 E4M3 (per-tensor) schemes insert fake-quant nodes:
values are rounded to the low-precision grid and computed in fp32, so they run on CPU
and measure the accuracy cost; real speed needs TensorRT engines or FP8 GEMMs on Hopper
(docs/inference.md). Calibration ("max": per-quantizer amax) runs the model on a few
batches of noised training latents at validation timesteps.

Quantized layers: every `nn.Linear`, and the blocks' tensor-parallel linears
(`models/linears.py`), which are registered here with ModelOpt's generic linear wrapper:
their forward reads `self.weight` and takes the input first, which is all that wrapper
needs (ModelOpt matches module classes exactly, so megatron's own registrations do not
cover these subclasses). `quantized_layers` says which got quantizers.
"""
from __future__ import annotations

import torch

SCHEMES = ("int8", "fp8")


_REGISTERED = []


def _modelopt():
    try:
        import modelopt.torch.opt as mto
        import modelopt.torch.quantization as mtq
    except ImportError as err:  # an optional extra
        raise ImportError(f"quantization needs nvidia-modelopt (pip install -e .[quant]): "
                          f"{err}") from err
    if not _REGISTERED:
        _register_tp_linears()
        _REGISTERED.append(True)
    return mto, mtq


def _register_tp_linears() -> None:
    from modelopt.torch.quantization import tensor_quant
    from modelopt.torch.quantization.nn import QuantModuleRegistry
    from modelopt.torch.quantization.nn.modules.quant_module import QuantLinearConvBase

    from ..models.linears import FusedColumnParallelLinear, FusedRowParallelLinear

    class _QuantTPLinear(QuantLinearConvBase):
        default_quant_desc_weight = tensor_quant.QUANT_DESC_8BIT_LINEAR_WEIGHT_PER_ROW

    for cls in (FusedColumnParallelLinear, FusedRowParallelLinear):
        if QuantModuleRegistry.get(cls) is None:
            QuantModuleRegistry.register({cls: f"vdit_{cls.__name__}"})(_QuantTPLinear)


def scheme_config(scheme: str) -> dict:
    _, mtq = _modelopt()
    if scheme not in SCHEMES:
        raise ValueError(f"unknown quantization scheme {scheme!r}; expected one of {SCHEMES}")
    return {"int8": mtq.INT8_DEFAULT_CFG, "fp8": mtq.FP8_DEFAULT_CFG}[scheme]


def quantize(model: torch.nn.Module, scheme: str, calibration_batches: list[tuple]) -> torch.nn.Module:
    """Quantize `model` in place (its layers hold process groups, which cannot be
    copied: build a second model for an fp32 reference), calibrated on
    `calibration_batches` of (x_t, timesteps, text, mask) tuples."""
    _, mtq = _modelopt()

    def forward_loop(m):
        with torch.no_grad():
            for batch in calibration_batches:
                m(*batch)
    return mtq.quantize(model, scheme_config(scheme), forward_loop)


def quantized_layers(model: torch.nn.Module) -> list[str]:
    """Names of modules with an enabled weight quantizer."""
    return [name for name, module in model.named_modules()
            if getattr(getattr(module, "weight_quantizer", None), "is_enabled", False)]


def save(model: torch.nn.Module, path: str) -> None:
    """The quantized model's ModelOpt state and weights (amax included) to `path`."""
    mto, _ = _modelopt()
    mto.save(model, path)


def restore(fresh_model: torch.nn.Module, path: str) -> torch.nn.Module:
    """Re-apply the saved quantization to an unquantized model of the same architecture."""
    mto, _ = _modelopt()
    return mto.restore(fresh_model, path)
