"""ShardLoader on shards made by the real precompute (the embedded default dataset)."""
import json
import os

import pytest
import torch

from megatron_vdit.data.loader import ShardLoader, ensure_default_shards

NUM_TRAIN, NUM_VAL = 44, 12  # 8 samples per shard: 6 train shards (last holds 4), 2 val


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return ensure_default_shards(str(tmp_path_factory.mktemp("default")), NUM_TRAIN, NUM_VAL,
                                 frames=9, height=32, width=32, seed=0)


def _take(loader, num_batches):
    iterator = iter(loader)
    return [next(iterator) for _ in range(num_batches)]


def _keys(batches):
    return [k for b in batches for k in b["keys"]]


def _all_keys(root, split):
    return _keys(list(ShardLoader(root, split, batch_size=64, infinite=False)))


def test_default_shards_contract_and_rebuild(root):
    manifest = json.load(open(os.path.join(root, "manifest.json")))
    assert manifest["splits"]["train"]["num_samples"] == NUM_TRAIN
    assert [s["num_samples"] for s in manifest["splits"]["val"]["shards"]] == [8, 4]
    assert manifest["default_dataset"]["frames"] == 9
    stamp = os.stat(os.path.join(root, "manifest.json")).st_mtime_ns
    assert ensure_default_shards(root, NUM_TRAIN, NUM_VAL, 9, 32, 32) == root
    assert os.stat(os.path.join(root, "manifest.json")).st_mtime_ns == stamp  # not rebuilt
    batch = _take(ShardLoader(root, "train", batch_size=5), 1)[0]
    assert batch["latent"].dtype == torch.float32
    assert tuple(batch["latent"].shape) == (5, 4, 3, 4, 4)
    assert batch["text_emb"].dtype == torch.float32
    assert tuple(batch["text_emb"].shape) == (5, 128, 64)
    assert batch["text_mask"].dtype == torch.bool and tuple(batch["text_mask"].shape) == (5, 128)
    assert len(batch["keys"]) == 5 and batch["text_mask"][:, 0].all()


def test_default_shards_rebuild_on_other_args(tmp_path):
    small = ensure_default_shards(str(tmp_path), 3, 1, frames=5, height=16, width=16, seed=1)
    assert json.load(open(os.path.join(small, "manifest.json")))["latent"]["shape"] == [4, 2, 2, 2]
    ensure_default_shards(str(tmp_path), 2, 1, frames=5, height=16, width=16, seed=1)
    manifest = json.load(open(os.path.join(small, "manifest.json")))
    assert manifest["splits"]["train"]["num_samples"] == 2
    assert len(os.listdir(os.path.join(small, "videos"))) == 3 + 1  # 3 mp4 + captions.jsonl
    with pytest.raises(ValueError, match="--frames 8"):
        ensure_default_shards(str(tmp_path / "bad"), 2, 1, frames=8, height=16, width=16)


@pytest.mark.parametrize("dp_size", [1, 2])
def test_resume_yields_the_same_batches(root, dp_size):
    kwargs = dict(batch_size=3, dp_rank=dp_size - 1, dp_size=dp_size, seed=5, shuffle_buffer=10)
    # 40 batches of 3 cross several epochs of this rank's ~22-44 samples.
    uninterrupted = _take(ShardLoader(root, "train", **kwargs), 40)
    first = ShardLoader(root, "train", **kwargs)
    _take(first, 17)
    state = json.loads(json.dumps(first.state_dict()))  # must survive a JSON checkpoint
    resumed = ShardLoader(root, "train", **kwargs)
    resumed.load_state_dict(state)
    for expected, got in zip(uninterrupted[17:], _take(resumed, 23)):
        assert got["keys"] == expected["keys"]
        torch.testing.assert_close(got["latent"], expected["latent"], rtol=0, atol=0)
        torch.testing.assert_close(got["text_emb"], expected["text_emb"], rtol=0, atol=0)


def test_dp_ranks_disjoint_and_model_parallel_ranks_identical(root):
    loaders = [ShardLoader(root, "train", batch_size=4, dp_rank=r, dp_size=2, seed=1,
                           shuffle_buffer=4) for r in (0, 1)]
    shards = [set(loader.epoch_shards(0)) for loader in loaders]
    assert not shards[0] & shards[1] and len(shards[0] | shards[1]) == 6
    epoch0 = [_keys(_take(loader, 4)) for loader in loaders]  # 16 samples, < 20 per rank/epoch
    assert not set(epoch0[0]) & set(epoch0[1])
    twin = ShardLoader(root, "train", batch_size=4, dp_rank=0, dp_size=2, seed=1, shuffle_buffer=4)
    assert _keys(_take(twin, 4)) == epoch0[0]  # a TP/CP peer with the same dp_rank


def test_one_epoch_visits_each_sample_once_and_epochs_reshuffle(root):
    loader = ShardLoader(root, "train", batch_size=4, seed=2, shuffle_buffer=1)
    keys = _keys(_take(loader, 22))  # 88 samples = exactly two epochs, no buffer spill
    assert sorted(keys[:NUM_TRAIN]) == sorted(keys[NUM_TRAIN:]) == sorted(_all_keys(root, "train"))
    assert keys[:NUM_TRAIN] != keys[NUM_TRAIN:]
    shuffled = _keys(_take(ShardLoader(root, "train", batch_size=4, seed=2, shuffle_buffer=16), 5))
    assert shuffled != keys[:20] and len(set(shuffled)) == 20


def test_validation_is_fixed_and_split_across_dp_ranks(root):
    val = ShardLoader(root, "val", batch_size=5, seed=9, infinite=False)
    first, second = list(val), list(val)
    assert len(first) == len(val) == 3 and [len(b["keys"]) for b in first] == [5, 5, 2]
    assert _keys(first) == _keys(second)
    torch.testing.assert_close(torch.cat([b["latent"] for b in first]),
                               torch.cat([b["latent"] for b in second]), rtol=0, atol=0)
    other_batching = ShardLoader(root, "val", batch_size=3, seed=0, infinite=False)
    assert _keys(list(other_batching)) == _keys(first)
    parts = [_keys(list(ShardLoader(root, "val", 4, dp_rank=r, dp_size=3, infinite=False)))
             for r in range(3)]
    assert [len(p) for p in parts] == [4, 4, 4] and sorted(sum(parts, [])) == sorted(_keys(first))
    assert parts[1] == _keys(first)[1::3]
    assert not set(_keys(first)) & set(_all_keys(root, "train"))


def test_validation_resume_mid_pass(root):
    val = ShardLoader(root, "val", batch_size=5, infinite=False)
    expected = _keys(list(val))
    iterator = iter(val)
    next(iterator)
    state = val.state_dict()
    resumed = ShardLoader(root, "val", batch_size=5, infinite=False)
    resumed.load_state_dict(state)
    assert _keys(list(resumed)) == expected[5:]


def test_user_errors(root, tmp_path):
    with pytest.raises(ValueError, match="6 shards but dp_size=8"):
        ShardLoader(root, "train", batch_size=2, dp_rank=0, dp_size=8)
    with pytest.raises(ValueError, match="split 'test'"):
        ShardLoader(root, "test", batch_size=2)
    with pytest.raises(ValueError, match="no manifest.json"):
        ShardLoader(str(tmp_path), "train", batch_size=2)
    state = ShardLoader(root, "train", batch_size=2, dp_rank=0, dp_size=2).state_dict()
    with pytest.raises(ValueError, match="dp_rank"):
        ShardLoader(root, "train", batch_size=2, dp_rank=1, dp_size=2).load_state_dict(state)


def test_concurrent_default_builds_serialise(tmp_path):
    """Every rank of a job may call ensure_default_shards at once; one builds, all read."""
    import concurrent.futures
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        roots = list(pool.map(lambda _: ensure_default_shards(str(tmp_path), 4, 2, 5, 16, 16),
                              range(2)))
    assert roots == [str(tmp_path)] * 2
    train_keys = _all_keys(str(tmp_path), "train")
    assert len(set(train_keys)) == len(train_keys) == 4
    assert len(_all_keys(str(tmp_path), "val")) == 2


def test_prefetch_gives_the_same_batches_and_resumes_exactly(root):
    """The trainer reads one batch ahead in a worker process (data/prefetch.py); its
    position is still that of the last batch handed out, so checkpoints and rewinds
    stay exact."""
    import functools

    from megatron_vdit.data.prefetch import Prefetcher
    from megatron_vdit.training.data import open_reader

    kwargs = dict(batch_size=3, dp_rank=1, dp_size=2, seed=5, shuffle_buffer=10)
    plain = _take(ShardLoader(root, "train", **kwargs), 30)

    def prefetcher(split="train", **extra):
        return Prefetcher(functools.partial(open_reader, root, split, **(extra or kwargs)),
                          pin_memory=False)

    def same(got, expected):
        assert [b["keys"] for b in got] == [b["keys"] for b in expected]
        for g, e in zip(got, expected):
            assert torch.equal(g["latent"], e["latent"]) and torch.equal(g["text_emb"], e["text_emb"])

    ahead = prefetcher()
    first = [ahead.next() for _ in range(5)]
    after_5 = json.loads(json.dumps(ahead.state_dict()))
    first += [ahead.next() for _ in range(7)]
    same(first, plain[:12])
    after_12 = json.loads(json.dumps(ahead.state_dict()))  # batch 13 is already read ahead
    resumed = prefetcher()
    resumed.load_state_dict(after_12)
    same([resumed.next() for _ in range(18)], plain[12:30])
    resumed.close()
    ahead.load_state_dict(after_5)  # a rewind mid-run (the cooldown branches do this)
    same([ahead.next() for _ in range(4)], plain[5:9])
    ahead.close()
    # The reader's errors reach the consumer: a finite split ends with StopIteration.
    val = prefetcher("val", batch_size=64, infinite=False)
    assert len(val.next()["keys"]) == NUM_VAL
    with pytest.raises(StopIteration):
        val.next()
    assert val._process is None  # the worker is gone after its error
