from ..torch_floor import require_torch as _require_torch

_require_torch()  # fail here, with the fix, rather than deep inside a parallel step
