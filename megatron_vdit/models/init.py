"""Initial weights that depend on the seed and the parameter, never on the layout.

Every parameter has a rule (normal with a std, uniform with a bound, zeros, ones),
fixed when the model is built (`init_rules`). Values are drawn tile by tile: the full
single-process tensor, seen as a matrix (rows = dim 0, columns = the rest), is cut into
`TILE` x `TILE` tiles, and tile (i, j) of parameter `name` is drawn from its own CPU
generator seeded by (model seed, name, i, j). A rank that holds only a piece of a
parameter (a TP slice, an FSDP row shard of it, or both) draws only the tiles that
overlap its piece and keeps the overlap, so

- the weights are the same for every layout, element by element (the single-process
  model is the layout with one piece);
- nothing is ever materialised at full size: a rank's memory and time for the init are
  those of its own shard (plus one tile), which is what lets a 30B model be built on
  the meta device and materialised shard by shard (`parallel/parallelize.py`);
- the draws are made on CPU and copied to the device, so they are also the same on
  CPU and GPU.

The distributions are the usual ones for each layer: megatron's normal(0, std) for
its tensor-parallel linears (std / sqrt(2 L) for the output projections), PyTorch's
default uniform(+-1/sqrt(fan_in)) for `nn.Linear`, ones and zeros for norms, and the
explicit choices the model makes (`set_init`: zero-initialised modulation and output
layer, xavier-uniform patch embedding, the adaLN tables).
"""
from __future__ import annotations

import dataclasses
import functools
import hashlib
import math

import torch
from torch import nn

TILE = 256
INIT_KINDS = ("normal", "uniform", "zeros", "ones")


@dataclasses.dataclass(frozen=True)
class InitRule:
    kind: str
    """One of INIT_KINDS."""
    scale: float = 0.0
    """std for "normal", bound for "uniform"."""

    def __post_init__(self):
        if self.kind not in INIT_KINDS:
            raise ValueError(f"init kind {self.kind!r}; expected one of {INIT_KINDS}")


def set_init(param: torch.Tensor, kind: str, scale: float = 0.0) -> None:
    """Fix the rule of one parameter at construction (read by `init_rules`)."""
    param._vdit_init = InitRule(kind, scale)


def xavier_uniform_bound(fan_out: int, fan_in: int) -> float:
    return math.sqrt(6.0 / (fan_in + fan_out))


def normal_std(init_method) -> float:
    """The std of a megatron init method (`init_method_normal` and its scaled variant
    are `functools.partial(torch.nn.init.normal_, mean=0, std=s)`)."""
    if (isinstance(init_method, functools.partial) and init_method.func is nn.init.normal_
            and init_method.keywords.get("mean", 0.0) == 0.0 and "std" in init_method.keywords):
        return float(init_method.keywords["std"])
    raise ValueError(f"init method {init_method!r} is not megatron's normal(0, std): give the "
                     "layer an explicit rule with models.init.set_init")


def _default_rule(module: nn.Module, pname: str, param: torch.Tensor) -> InitRule | None:
    if isinstance(module, nn.Linear):  # PyTorch's kaiming_uniform(a=sqrt(5)) and its bias
        return InitRule("uniform", 1.0 / math.sqrt(module.in_features))
    if isinstance(module, (nn.LayerNorm, nn.RMSNorm)):
        return InitRule("ones" if pname == "weight" else "zeros")
    return None


def init_rules(model: nn.Module) -> dict[str, InitRule]:
    """Parameter name -> rule, for a freshly built (unwrapped) model; every parameter
    must have one (a new layer without a rule is an error here, not a silent default)."""
    rules = {}
    for module_name, module in model.named_modules():
        for pname, param in module.named_parameters(recurse=False):
            name = f"{module_name}.{pname}" if module_name else pname
            rule = getattr(param, "_vdit_init", None) or _default_rule(module, pname, param)
            if rule is None:
                raise ValueError(f"parameter {name} ({type(module).__name__}) has no init rule: "
                                 "set one with models.init.set_init")
            rules[name] = rule
    return rules


def _tile_seed(seed: int, name: str, i: int, j: int) -> int:
    digest = hashlib.blake2b(f"{seed}/{name}/{i}/{j}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & (2 ** 63 - 1)


def _draw(rule: InitRule, shape, generator) -> torch.Tensor:
    out = torch.empty(shape, dtype=torch.float32)
    if rule.kind == "normal":
        return out.normal_(0.0, rule.scale, generator=generator)
    return out.uniform_(-rule.scale, rule.scale, generator=generator)


def init_piece(rule: InitRule, seed: int, name: str, full_shape, offset, shape) -> torch.Tensor:
    """Values of the piece [offset, offset + shape) of parameter `name` (full shape
    `full_shape`), float32 on CPU; the same whichever piece a rank asks for."""
    if len(full_shape) > 2:
        raise ValueError(f"{name}: init of {len(full_shape)}-D parameters is not supported")
    if rule.kind in ("zeros", "ones"):
        return (torch.zeros if rule.kind == "zeros" else torch.ones)(tuple(shape))
    rows_full = full_shape[0]
    cols_full = full_shape[1] if len(full_shape) == 2 else 1
    r0, c0 = offset[0], offset[1] if len(shape) == 2 else 0
    nr, nc = shape[0], shape[1] if len(shape) == 2 else 1
    out = torch.empty(nr, nc)
    generator = torch.Generator()
    for i in range(r0 // TILE, -(-(r0 + nr) // TILE)):
        for j in range(c0 // TILE, -(-(c0 + nc) // TILE)):
            tr, tc = i * TILE, j * TILE  # this tile's first row and column
            generator.manual_seed(_tile_seed(seed, name, i, j))
            tile = _draw(rule, (min(TILE, rows_full - tr), min(TILE, cols_full - tc)), generator)
            a, b = max(r0, tr), min(r0 + nr, tr + tile.shape[0])
            c, d = max(c0, tc), min(c0 + nc, tc + tile.shape[1])
            out[a - r0:b - r0, c - c0:d - c0] = tile[a - tr:b - tr, c - tc:d - tc]
    return out.reshape(tuple(shape))


@torch.no_grad()
def init_parameters(named_params, rules: dict[str, InitRule], seed: int, *, tp_dim,
                    tp_size: int = 1, tp_rank: int = 0, local_rows=None) -> None:
    """Fill every parameter with its piece of the full tensor. `tp_dim(param)`: the dim
    it is split along over TP (None: replicated), this rank's slice being `tp_rank` of
    `tp_size`; `local_rows(param)`: (tensor to write, its first row within the TP slice)
    when the slice is sharded further (FSDP), else the parameter itself from row 0."""
    for name, param in named_params:
        full, offset = list(param.shape), [0] * param.dim()
        dim = tp_dim(param)
        if dim is not None:
            full[dim] *= tp_size
            offset[dim] = tp_rank * param.shape[dim]
        local, first_row = local_rows(param) if local_rows is not None else (param, 0)
        offset[0] += first_row
        local.copy_(init_piece(rules[name], seed, name, full, offset, local.shape))
