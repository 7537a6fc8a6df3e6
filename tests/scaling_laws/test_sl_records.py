"""Run-record loading, validation and exclusion accounting."""
import json
import math

import numpy as np
import pytest

from scaling_laws.records import load_records, prepare


def _record(run_id, **kw):
    rec = {"run_id": run_id, "params_nonembed": 1e8, "params_total": 1.1e8, "hidden_size": 512,
           "num_layers": 24, "tokens_per_sample": 1280, "train_tokens": 4e9,
           "batch_tokens": 1280 * 64, "batch_samples": 64, "lr": 1e-4, "val_loss": 0.55,
           "status": "completed"}
    rec.update(kw)
    return rec


def test_load_directory_jsonl_and_wandb(tmp_path):
    (tmp_path / "runs" / "a").mkdir(parents=True)
    (tmp_path / "runs" / "a" / "run.json").write_text(json.dumps(_record("a")))
    (tmp_path / "runs" / "a" / "metrics.jsonl").write_text('{"iteration": 1, "loss": 1.0}\n')
    (tmp_path / "more.jsonl").write_text("\n".join(json.dumps(_record(r)) for r in "bc"))
    wb = tmp_path / "wandb" / "offline-run-20250101_000000-xyz" / "files"
    wb.mkdir(parents=True)
    (wb / "wandb-summary.json").write_text(json.dumps({**_record("d"), "_runtime": 3}))
    wb2 = tmp_path / "wandb" / "offline-run-20250101_000001-abc" / "files"
    wb2.mkdir(parents=True)
    (wb2 / "run.json").write_text(json.dumps(_record("a")))  # duplicate of runs/a
    records = load_records([tmp_path, tmp_path / "more.jsonl"])
    runs = prepare(records)
    assert sorted(runs.run_id) == ["a", "b", "c", "d"]


def test_exclusions_are_counted_not_silent():
    records = [_record("ok"), _record("div", status="diverged", val_loss=float("nan")),
               _record("nan", val_loss=float("nan")), _record("inf", val_loss=math.inf),
               _record("run", status="running")]
    runs = prepare(records)
    assert list(runs.run_id) == ["ok"]
    assert runs.excluded == {"status=diverged": ["div"], "non-finite or non-positive val_loss":
                             ["nan", "inf"], "status=running": ["run"]}


def test_all_diverged_fails_clearly():
    with pytest.raises(ValueError, match="all 2 runs were excluded"):
        prepare([_record("x", status="diverged"), _record("y", status="failed")])


def test_missing_field_is_named():
    rec = _record("x")
    del rec["lr"]
    with pytest.raises(ValueError, match=r"lacks required fields \['lr'\]"):
        prepare([rec])


def test_mixed_context_needs_batch_tokens():
    a = _record("a")
    b = _record("b", tokens_per_sample=2560)
    del b["batch_tokens"]
    with pytest.raises(ValueError, match="tokens_per_sample differs"):
        prepare([a, b])


def test_mixed_context_inconsistent_batch_fails():
    b = _record("b", tokens_per_sample=2560)  # batch_tokens still 64 * 1280
    with pytest.raises(ValueError, match="cannot be reconciled"):
        prepare([_record("a"), b])


def test_mixed_context_reconcilable_is_accepted():
    b = _record("b", tokens_per_sample=2560, batch_tokens=64 * 2560)
    runs = prepare([_record("a"), b])
    assert runs.num_runs == 2


def test_uniform_context_derives_batch_tokens():
    rec = _record("a")
    del rec["batch_tokens"]
    assert prepare([rec]).batch_tokens[0] == 64 * 1280


def test_curve_points_expand_and_bad_points_counted():
    curve = [{"tokens": 1e9, "val_loss": 0.6}, {"tokens": 2e9, "val_loss": float("nan")},
             {"tokens": 3e9, "val_loss": 0.57}]
    runs = prepare([_record("a", val_loss_curve=curve)])
    assert np.allclose(runs.point_tokens, [1e9, 3e9, 4e9])
    assert runs.dropped_curve_points == 1
    assert prepare([_record("a", val_loss_curve=curve)], use_curves=False).point_loss.size == 1


def test_conflicting_duplicates_fail():
    with pytest.raises(ValueError, match="appears twice"):
        prepare([_record("a"), _record("a", val_loss=0.7)])


def test_missing_path_fails(tmp_path):
    with pytest.raises(ValueError, match="not found"):
        load_records(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no run records"):
        load_records(tmp_path / "empty")


def test_failed_run_without_loss_is_excluded_not_an_error():
    # A wandb summary of a diverged run carries no val_loss (it was NaN).
    runs = prepare([_record("ok"), {"run_id": "d", "status": "diverged"}])
    assert runs.excluded == {"status=diverged": ["d"]}


def test_step_zero_eval_is_skipped_silently():
    curve = [{"tokens": 0, "val_loss": 1.2}, {"tokens": 1e9, "val_loss": 0.6}]
    runs = prepare([_record("a", val_loss_curve=curve)])
    assert runs.dropped_curve_points == 0 and runs.point_loss.size == 2
