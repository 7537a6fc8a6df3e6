"""Bad input to `python -m megatron_vdit.train`, each case through the real CLI in a subprocess.

The contract: exit 2, one line `megatron_vdit.train: error: ...` naming the offender, no
traceback, and every file that existed before is byte-identical after. Shards are real
WebDataset tars written with the project's shard format and read by the real loader.
"""
from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Callable

import numpy as np
import pytest

from megatron_vdit.data import shard_format

PROG = "megatron_vdit.train"
ROOT = Path(__file__).resolve().parents[1]
# Tiny model on latents [4, 2, 4, 4] (8 tokens) with 32 x 64 captions.
MODEL = ["--num-layers", "2", "--hidden-size", "64", "--num-attention-heads", "2",
         "--latent-frames", "2", "--latent-height", "4", "--latent-width", "4",
         "--max-text-tokens", "32", "--micro-batch-size", "4", "--global-batch-size", "4",
         "--eval-samples", "8", "--eval-interval", "2", "--wandb-mode", "disabled",
         "--log-interval", "1"]
SYNTHETIC = MODEL + ["--data", "synthetic", "--train-iters", "2"]


def run_cli(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    env.pop("VDIT_DEBUG", None)
    return subprocess.run([sys.executable, "-m", PROG, *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=600)


def snapshot(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file()}


# -- real shards, written by hand so one can be broken on purpose --------------------------
def write_shards(root: Path, latent_shape=(4, 2, 4, 4), nan_sample: str | None = None,
                 checksums: bool = True) -> Path:
    """train: 2 shards x 4 samples, val: 1 shard x 8 samples, and their manifest."""
    rng = np.random.default_rng(0)
    splits = {}
    for split, shard_sizes in (("train", [4, 4]), ("val", [8])):
        (root / split).mkdir(parents=True)
        shards = []
        for index, count in enumerate(shard_sizes):
            members = []
            for j in range(count):
                key = f"{split}{index}s{j}"
                latent = rng.standard_normal(latent_shape).astype(np.float32)
                if key == nan_sample:
                    latent.flat[3] = np.nan
                members += shard_format.sample_members(
                    key, latent, rng.standard_normal((32, 64)).astype(np.float32),
                    np.ones(32, dtype=bool), {"caption": "x"})
            path = root / split / shard_format.shard_name(index)
            size = shard_format.write_tar_atomic(str(path), members)
            entry = {"name": path.name, "num_samples": count, "bytes": size}
            if checksums:
                entry["sha256"] = shard_format.file_sha256(str(path))
            shards.append(entry)
        splits[split] = {"num_samples": sum(shard_sizes), "num_shards": len(shards),
                         "shards": shards}
    manifest = {"format": "megatron_vdit.latent_shards/1", "splits": splits,
                "latent": {"shape": list(latent_shape), "dtype": "float32"},
                "text_emb": {"shape": [32, 64], "dtype": "float32"}}
    (root / "manifest.json").write_text(json.dumps(manifest))
    return root


def truncate(path: Path, keep: int = 1000) -> None:
    path.write_bytes(path.read_bytes()[:keep])


def flip_byte(path: Path, at: int = 700) -> None:
    data = bytearray(path.read_bytes())
    data[at] ^= 0xFF
    path.write_bytes(bytes(data))


@dataclasses.dataclass
class Case:
    id: str
    args: list[str]
    """`{d}` is the case's directory."""
    expect: list[str]
    """Substrings of the error line."""
    setup: Callable[[Path], None] = lambda d: None


def _shards(**kw):
    return lambda d: write_shards(d / "shards", **kw)


def _broken(action, split="train", **kw):
    def setup(d):
        write_shards(d / "shards", **kw)
        action(d / "shards" / split / "shard-000001.tar" if split == "train"
               else d / "shards" / split / "shard-000000.tar")
    return setup


def _file(name, text=""):
    return lambda d: (d / name).write_text(text)


SHARD_ARGS = MODEL + ["--data", "{d}/shards", "--run-dir", "{d}/run", "--train-iters", "2"]
CASES = [
    # --config files
    Case("config-missing", ["--config", "{d}/nope.yaml"], ["--config", "nope.yaml"]),
    Case("config-syntax", ["--config", "{d}/c.yaml"], ["c.yaml line 2", "YAML syntax"],
         _file("c.yaml", "lr: 1e-3\nfoo: bar: baz\n")),
    Case("config-unknown-key", ["--config", "{d}/c.yaml"], ["c.yaml line 2", "'learning_rate'"],
         _file("c.yaml", "lr: 1e-3\nlearning_rate: 3\n")),
    Case("config-nested-wrong-section", ["--config", "{d}/c.yaml"],
         ["c.yaml line 3", "'lr'", "section 'optimizer'"],
         _file("c.yaml", "model:\n  num_layers: 2\n  lr: 3\n")),
    Case("config-bad-value", ["--config", "{d}/c.yaml"], ["c.yaml line 1", "'micro_batch_size'"],
         _file("c.yaml", "micro_batch_size: 2.5\n")),
    Case("config-not-mapping", ["--config", "{d}/c.yaml"], ["c.yaml", "mapping"],
         _file("c.yaml", "- 1\n- 2\n")),
    Case("config-is-directory", ["--config", "{d}"], ["--config"]),
    # flags
    Case("flag-unknown", SYNTHETIC + ["--learning-rate", "1"], ["--learning-rate"]),
    Case("flag-bad-type", SYNTHETIC + ["--lr", "fast"], ["--lr", "'fast'"]),
    Case("flag-bad-choice", SYNTHETIC + ["--objective", "score"], ["--objective", "score"]),
    Case("flag-patch-size-arity", SYNTHETIC + ["--patch-size", "1", "2"], ["--patch-size"]),
    Case("iters-vs-tokens", SYNTHETIC + ["--train-tokens", "96"], ["--train-iters=2",
                                                                   "--train-tokens=96"]),
    Case("min-lr-above-lr", SYNTHETIC + ["--min-lr", "0.1", "--lr", "0.01"], ["--min-lr=0.1",
                                                                              "--lr=0.01"]),
    Case("lr-nan", SYNTHETIC + ["--lr", "nan"], ["--lr=nan"]),
    Case("micro-batch-zero", SYNTHETIC + ["--micro-batch-size", "0"], ["--micro-batch-size=0"]),
    Case("tp-vs-world", SYNTHETIC + ["--tensor-model-parallel-size", "2"], ["world size 1"]),
    Case("vpp-without-pp", SYNTHETIC + ["--num-layers-per-virtual-pipeline-stage", "1"],
         ["pipeline_model_parallel_size > 1"]),
    Case("heads-vs-hidden", SYNTHETIC + ["--num-attention-heads", "3"], ["num_attention_heads=3"]),
    Case("unknown-preset", SYNTHETIC + ["--model-size", "huge"], ["--model-size", "huge"]),
    Case("data-verify-choice", SYNTHETIC + ["--data-verify", "md5"], ["--data-verify"]),
    # output paths
    Case("run-dir-is-file", SYNTHETIC + ["--run-dir", "{d}/f"], ["--run-dir", "/f"], _file("f", "x")),
    Case("natural-cache-is-file", SYNTHETIC + ["--run-dir", "{d}/run", "--natural-cache-dir", "{d}/f"],
         ["--natural-cache-dir", "/f"], _file("f", "x")),
    Case("save-is-file", SYNTHETIC + ["--run-dir", "{d}/run", "--save", "{d}/f"], ["--save"],
         _file("f", "x")),
    Case("load-is-file", SYNTHETIC + ["--run-dir", "{d}/run", "--load", "{d}/f"], ["--load"],
         _file("f", "x")),
    Case("load-missing-strict", SYNTHETIC + ["--run-dir", "{d}/run", "--load", "{d}/ck",
                                             "--exit-on-missing-checkpoint"],
         ["--load", "exit-on-missing-checkpoint"]),
    # data
    Case("data-missing-dir", SYNTHETIC + ["--data", "{d}/nothing", "--run-dir", "{d}/run"],
         ["--data", "does not exist"]),
    Case("natural-data-channels", MODEL + ["--data", "natural", "--train-iters", "2"],
         ["--data natural", "12 channels", "--in-channels=4"]),
    Case("data-is-file", SYNTHETIC + ["--data", "{d}/f", "--run-dir", "{d}/run"],
         ["--data", "is a file"], _file("f", "x")),
    Case("manifest-missing", SHARD_ARGS, ["shards", "manifest.json"],
         lambda d: (write_shards(d / "shards"), (d / "shards" / "manifest.json").unlink())),
    Case("manifest-corrupt", SHARD_ARGS, ["manifest.json", "JSON"],
         lambda d: (write_shards(d / "shards"), truncate(d / "shards" / "manifest.json", 40))),
    Case("manifest-lacks-keys", SHARD_ARGS, ["manifest.json", "latent"],
         lambda d: (d / "shards").mkdir() or _file("shards/manifest.json",
                                                    '{"splits": {}}')(d)),
    Case("shard-truncated", SHARD_ARGS, ["train/shard-000001.tar", "bytes"], _broken(truncate)),
    Case("shard-corrupt", SHARD_ARGS, ["train/shard-000001.tar", "sha256"], _broken(flip_byte)),
    Case("shard-missing", SHARD_ARGS, ["train/shard-000001.tar", "missing"],
         _broken(Path.unlink)),
    Case("tar-corrupt-no-checksum", SHARD_ARGS + ["--data-verify", "size"],
         ["val/shard-000000.tar"],
         _broken(lambda p: p.write_bytes(b"\x07" * p.stat().st_size), split="val",
                 checksums=False)),
    Case("shard-shape-mismatch", SHARD_ARGS, ["manifest.json", "[4, 2, 8, 8]", "[4, 2, 4, 4]"],
         _shards(latent_shape=(4, 2, 8, 8))),
    Case("nan-in-data", SHARD_ARGS, ["train1s2", "shard-000001.tar", "non-finite"],
         _shards(nan_sample="train1s2")),
    Case("nan-in-val-data", SHARD_ARGS, ["val0s5", "non-finite"], _shards(nan_sample="val0s5")),
    Case("eval-samples-vs-val", SHARD_ARGS + ["--eval-samples", "16"], ["--eval-samples=16"],
         _shards()),
    Case("dry-run-bad-world", SYNTHETIC + ["--dry-run", "--world-size", "3",
                                           "--pipeline-model-parallel-size", "2"],
         ["world size 3"]),
]


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input_is_refused_by_name(tmp_path, case):
    case.setup(tmp_path)
    before = snapshot(tmp_path)
    proc = run_cli([a.replace("{d}", str(tmp_path)) for a in case.args], tmp_path)
    assert proc.returncode == 2, (proc.returncode, proc.stderr[-2000:])
    assert "Traceback" not in proc.stderr, proc.stderr[-2000:]
    errors = [line for line in proc.stderr.splitlines() if f"{PROG}: error:" in line]
    assert len(errors) == 1, proc.stderr[-2000:]
    for expected in case.expect:
        assert expected in errors[0], (expected, errors[0])
    after = snapshot(tmp_path)
    assert {k: after.get(k) for k in before} == before, "a file that existed was changed"
    assert not (tmp_path / "run" / "run.json").exists(), "no run record for a refused run"


# Refused by the checks that run before torch is imported (one per kind of check).
TORCH_FREE = ["config-syntax", "flag-bad-type", "iters-vs-tokens", "heads-vs-hidden",
              "tp-vs-world", "vpp-without-pp", "run-dir-is-file", "load-missing-strict",
              "data-missing-dir", "natural-data-channels", "manifest-corrupt", "shard-corrupt",
              "shard-shape-mismatch", "eval-samples-vs-val", "dry-run-bad-world"]


def test_refusals_come_before_torch_is_imported(tmp_path):
    """Config, layout, path and manifest mistakes cost no torch or megatron-core import
    (seconds of CPU): every such case, run through `main` in one fresh interpreter, is
    refused with exit 2 and leaves both out of `sys.modules`."""
    by_id = {c.id: c for c in CASES}
    argvs = []
    for name in TORCH_FREE:
        (tmp_path / name).mkdir()
        by_id[name].setup(tmp_path / name)
        argvs.append([a.replace("{d}", str(tmp_path / name)) for a in by_id[name].args])
    script = ("import json, sys\n"
              "from megatron_vdit.train import main\n"
              "codes = [main(argv) for argv in json.loads(sys.argv[1])]\n"
              "heavy = [m for m in ('torch', 'megatron.core') if m in sys.modules]\n"
              "print(json.dumps({'codes': codes, 'heavy': heavy}))\n")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("VDIT_DEBUG", None)
    proc = subprocess.run([sys.executable, "-c", script, json.dumps(argvs)], cwd=tmp_path,
                          env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["codes"] == [2] * len(TORCH_FREE), (result, proc.stderr[-3000:])
    assert result["heavy"] == [], result
    assert proc.stderr.count(f"{PROG}: error:") == len(TORCH_FREE), proc.stderr[-3000:]


# -- the run directory: finished runs are kept, resumes work ------------------------------
@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    d = tmp_path_factory.mktemp("finished")
    proc = run_cli(SYNTHETIC + ["--run-dir", str(d / "run"), "--save-interval", "2"], d)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return d / "run"


def test_finished_run_with_another_config_is_refused(finished_run):
    before = snapshot(finished_run)
    args = SYNTHETIC + ["--run-dir", str(finished_run), "--lr", "3e-3"]
    proc = run_cli(args, finished_run.parent)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    # A checkpoint exists, so the resume check names what changed.
    assert "lr: 0.001 -> 0.003" in proc.stderr and "--overwrite" in proc.stderr
    assert snapshot(finished_run) == before


def test_finished_run_without_checkpoint_same_config_does_nothing(tmp_path):
    first = run_cli(SYNTHETIC + ["--run-dir", str(tmp_path / "run")], tmp_path)
    assert first.returncode == 0, first.stderr[-3000:]
    before = snapshot(tmp_path / "run")
    again = run_cli(SYNTHETIC + ["--run-dir", str(tmp_path / "run"), "--wandb-mode", "offline"],
                    tmp_path)
    assert again.returncode == 0 and "nothing to do" in again.stdout
    other = run_cli(SYNTHETIC + ["--run-dir", str(tmp_path / "run"), "--seed", "5"], tmp_path)
    assert other.returncode == 2 and "Traceback" not in other.stderr
    line = other.stderr.strip().splitlines()[-1]
    assert "holds a finished run 'run'" in line and "seed: 1234 -> 5" in line
    assert "--overwrite" in line
    assert snapshot(tmp_path / "run") == before
    replaced = run_cli(SYNTHETIC + ["--run-dir", str(tmp_path / "run"), "--seed", "5",
                                    "--overwrite"], tmp_path)
    assert replaced.returncode == 0, replaced.stderr[-3000:]
    assert json.loads((tmp_path / "run" / "run.json").read_text())["config"]["seed"] == 5


def test_resume_into_a_new_run_dir(finished_run, tmp_path):
    before = snapshot(finished_run)
    proc = run_cli(MODEL + ["--data", "synthetic", "--train-iters", "4", "--load", str(finished_run / "checkpoints"),
                           "--run-dir", str(tmp_path / "new")], tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "resumed from" in proc.stdout and "at iteration 2" in proc.stdout
    record = json.loads((tmp_path / "new" / "run.json").read_text())
    assert record["iterations"] == 4 and record["val_loss_curve"][-1]["iteration"] == 4
    assert snapshot(finished_run) == before, "the source run is left alone"


def test_save_and_load_the_same_empty_dir_starts_fresh(tmp_path):
    ck = str(tmp_path / "ck")
    proc = run_cli(SYNTHETIC + ["--run-dir", str(tmp_path / "run"), "--save", ck, "--load", ck],
                   tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "WARNING: --load" in proc.stdout and "starting from iteration 0" in proc.stdout
    assert (tmp_path / "ck" / "latest").exists()


def test_dry_run_validates_and_estimates_memory(tmp_path):
    proc = run_cli(SYNTHETIC + ["--run-dir", str(tmp_path / "run"), "--dry-run",
                                "--pipeline-model-parallel-size", "2", "--world-size", "4",
                                "--micro-batch-size", "1"],
                   tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "PP2" in proc.stdout and "DP2" in proc.stdout and "GiB" in proc.stdout
    assert not (tmp_path / "run").exists(), "a dry run writes nothing"
