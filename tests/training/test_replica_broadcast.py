"""A data-parallel replica reads its batches once: its first rank reads, the rest receive.

Two gloo ranks at TP2 form one replica on the embedded default shards: rank 0 reads
through its prefetch worker and broadcasts, rank 1 starts no train reader at all, and
both train on exactly the batches a single process reads (same losses)."""
import sys
from pathlib import Path

import pytest

from megatron_vdit.training.config import load_config
from megatron_vdit.training.loop import Trainer, prepare

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "parallel"))
from dist_utils import spawn_world  # noqa: E402
from test_train_shards import ARGS  # noqa: E402


def _three_steps(argv):
    trainer = Trainer(prepare(load_config(argv)))
    try:
        losses = [float(trainer.train_step()[0]) for _ in range(3)]
        source = trainer.source
        own = getattr(source, "inner", source)  # the rank's own shard source
        return {"losses": losses, "reads": getattr(source, "reads", True),
                "train_reader": own._prefetch is not None}
    finally:
        trainer.source.close()


def test_one_rank_of_a_replica_reads_and_the_losses_match_one_process(tmp_path):
    argv = ARGS + ["--default-data-dir", str(tmp_path / "data"), "--train-iters", "3",
                   "--run-dir", str(tmp_path / "run")]
    prepare(load_config(argv))  # build the shards once, before the ranks start
    single, = spawn_world(_three_steps, 1, argv, daemon=False)
    tp2 = spawn_world(_three_steps, 2, argv + ["--tensor-model-parallel-size", "2"],
                      daemon=False)
    assert single["reads"] and single["train_reader"]
    assert [r["reads"] for r in tp2] == [True, False]
    assert [r["train_reader"] for r in tp2] == [True, False], "rank 1 opened train data"
    for rank in tp2:
        assert rank["losses"] == pytest.approx(single["losses"], rel=1e-5)


def test_a_receiving_rank_refuses_bad_shards_as_the_reader_does(tmp_path):
    """Startup checks run on every rank: a rank that will only receive its batches still
    reads the manifest, so bad data stops it with the reader's error instead of leaving
    it waiting in a broadcast."""
    from megatron_vdit.training.data import ShardSource

    argv = ARGS + ["--default-data-dir", str(tmp_path / "data"), "--train-iters", "3",
                   "--run-dir", str(tmp_path / "run")]
    prepared = prepare(load_config(argv))
    root = prepared.data_root
    manifest = Path(root) / "manifest.json"
    text = manifest.read_text()
    manifest.write_text(text.replace('"train"', '"training"'))  # no train split any more
    errors = []
    for train in (True, False):
        with pytest.raises(ValueError) as err:
            ShardSource(root, prepared.job, prepared.resolved, 0, 1, train=train)
        errors.append(str(err.value))
    assert errors[0] == errors[1] and "split 'train' not in" in errors[0]
