"""EMA weights: the update rule by hand, and checkpoints that carry them across layouts."""

import pytest
import torch

import pp_testlib as lib
from dist_utils import spawn_world

from megatron_vdit.training.ema import EMA


def test_update_rule_by_hand():
    p = torch.nn.Parameter(torch.zeros(3))
    ema = EMA([("w", p)], decay=0.5)
    with torch.no_grad():
        p.fill_(1.0)
    ema.update()  # warm-up decay min(0.5, 1/10) = 0.1: 0.1 * 0 + 0.9 * 1
    torch.testing.assert_close(ema.shadow["w"], torch.full((3,), 0.9))
    with torch.no_grad():
        p.fill_(2.0)
    ema.update()  # min(0.5, 2/11) = 2/11
    torch.testing.assert_close(ema.shadow["w"], torch.full((3,), 0.9 * 2 / 11 + 2 * 9 / 11))
    with ema.applied():
        assert torch.equal(p.detach(), ema.shadow["w"])
    assert torch.equal(p.detach(), torch.full((3,), 2.0))
    with pytest.raises(ValueError, match="ema-decay"):
        EMA([("w", p)], decay=1.0)


def _train_save(path: str, **degrees):
    cfg = lib.tiny_config()
    engine, layout, groups = lib.make_engine(cfg, **degrees)
    opt = torch.optim.AdamW(engine.parameters(), lr=lib.LR)
    ema = EMA(engine.named_parameters(), decay=0.9)
    for step in range(3):
        local = lib.dp_slice(lib.global_batch(cfg, step), layout, groups)
        engine.forward_backward(*local, num_microbatches=2)
        opt.step()
        ema.update()
    engine.save(path, opt, ema=ema)
    raw = engine.full_model_state_dict()
    with ema.applied():
        averaged = engine.full_model_state_dict()
    return raw, averaged


def _load(path: str, **degrees):
    engine, _, _ = lib.make_engine(lib.tiny_config(), **degrees)
    ema = EMA(engine.named_parameters(), decay=0.9)
    engine.load(path, None, ema=ema)
    with ema.applied():
        return engine.full_model_state_dict()


@pytest.mark.parametrize("save_degrees", [dict(tensor_model_parallel_size=2), {}],
                         ids=["tp2", "dp2-fsdp"])
def test_ema_checkpoint_loads_at_another_layout(tmp_path, save_degrees):
    path = str(tmp_path / "ckpt")
    raw, averaged = spawn_world(_train_save, 2, path, **save_degrees)[0]
    loaded = spawn_world(_load, 1, path)[0]
    for name, value in averaged.items():
        torch.testing.assert_close(loaded[name], value, rtol=0, atol=0)
    assert any(not torch.equal(raw[n], averaged[n]) for n in raw), "EMA saved as the raw weights"
