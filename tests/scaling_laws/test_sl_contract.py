"""The run record the trainer writes (megatron_vdit.training.records) is one we accept."""
import json

from megatron_vdit.training import config, records, resolved
from scaling_laws.records import REQUIRED, prepare


def test_trainer_run_record_is_accepted():
    job = config.JobConfig().replace(global_batch_size=16, num_layers=2, hidden_size=64,
                                     num_attention_heads=2, train_iters=10)
    cfg = resolved.resolve(job, 1)
    curve = [{"tokens": 0, "val_loss": 1.0}, {"tokens": 16 * cfg.tokens_per_sample * 5,
                                              "val_loss": 0.6}]
    kwargs = dict(params_nonembed=1000, params_total=1200, flops=1e12, model_flops=1.1e12,
                  train_loss=0.5, val_curve=curve, iterations=10, wall_time_s=1.0)
    identity = resolved.resolved_flat(job, cfg)
    good = records.build_run_record(job, cfg, identity, run_id="good", val_loss=0.4,
                                    status="completed", **_rename(kwargs))
    bad = records.build_run_record(job, cfg, identity, run_id="bad", val_loss=float("nan"),
                                   status="diverged", **_rename(kwargs))
    rows = [json.loads(json.dumps(r, default=str)) for r in (good, bad)]
    assert set(REQUIRED) <= set(rows[0])
    runs = prepare(rows)
    assert list(runs.run_id) == ["good"] and runs.excluded == {"status=diverged": ["bad"]}
    assert runs.batch_tokens[0] == 16 * cfg.tokens_per_sample
    assert list(runs.point_tokens) == [16 * cfg.tokens_per_sample * 5, 16 * cfg.tokens_per_sample * 10]


def _rename(kwargs):
    out = dict(kwargs)
    out["val_loss_curve"] = out.pop("val_curve")
    return out
