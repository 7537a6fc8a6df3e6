"""Bad input to the command lines is refused by name, before work, and destroys nothing.

Each case runs the real CLI in a subprocess and checks the contract of docs/errors.md:
exit status 2, one ``<prog>: error: ...`` line (the last on stderr) naming the offender,
no traceback, and every file that existed before byte-identical after (for refusals: no
new file either). Training (``megatron_vdit.train``) and the sweep have their own tests.
"""
from __future__ import annotations

import copy
import importlib
import json
import os
import re
import subprocess
import sys
import tarfile

import pytest

from megatron_vdit.data.procedural import render_clip
from megatron_vdit.data.video_io import write_video
from scaling_laws import lawfile
from scaling_laws.synthetic import PlantedSweep

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# (the program name its errors start with, how to run it)
PRECOMPUTE = ("precompute_latents.py", (os.path.join(REPO, "tools", "precompute_latents.py"),))
PREDICT = ("predict_config.py", (os.path.join(REPO, "tools", "predict_config.py"),))
LAWS = ("python -m scaling_laws", ("-m", "scaling_laws"))


def run(cli: tuple, *args: str, cwd: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": REPO, "OMP_NUM_THREADS": "1"}
    env.pop("VDIT_DEBUG", None)
    return subprocess.run([sys.executable, *cli[1], *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)


def snapshot(root: str) -> dict[str, bytes | None]:
    """Relative path -> bytes (None for a directory) of everything under ``root``."""
    found = {}
    for directory, subdirs, names in os.walk(root):
        for name in subdirs:
            found[os.path.relpath(os.path.join(directory, name), root)] = None
        for name in names:
            path = os.path.join(directory, name)
            with open(path, "rb") as handle:
                found[os.path.relpath(path, root)] = handle.read()
    return found


def assert_refused(result, prog: str, *named: str) -> None:
    assert result.returncode == 2, (result.returncode, result.stderr[-2000:])
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    lines = result.stderr.strip().splitlines()
    errors = [line for line in lines if "error:" in line]
    assert errors == [lines[-1]] and lines[-1].startswith(prog), result.stderr[-2000:]
    for text in named:
        assert text in lines[-1], (text, lines[-1])


# ---------------------------------------------------------------- inputs on disk

def _videos(root: str, count: int = 2, sidecars: bool = True) -> None:
    os.makedirs(root, exist_ok=True)
    for index in range(count):
        frames, caption = render_clip(13, index, 9, 32, 32)
        write_video(os.path.join(root, f"v{index}.mp4"), frames, fps=8)
        if sidecars:
            with open(os.path.join(root, f"v{index}.txt"), "w") as handle:
                handle.write(caption)


def _write(path: str, text: str) -> None:
    with open(path, "w") as handle:
        handle.write(text)


def _law(path: str, change) -> None:
    law = copy.deepcopy(lawfile.paper_law())
    change(law)
    _write(path, json.dumps(law))


def _records(path: str, change=None) -> None:
    """A planted sweep; ``change`` edits a completed run, which goes to line 1."""
    records = PlantedSweep().records(seed=4)
    if change:
        first = next(i for i, r in enumerate(records) if r["status"] == "completed")
        records.insert(0, records.pop(first))
        change(records[0])
    _write(path, "\n".join(json.dumps(r) for r in records))


def _setup(tmp: str) -> None:
    """Every file any table case refers to (cheap; the cases must not change them)."""
    _videos(os.path.join(tmp, "videos"))
    _videos(os.path.join(tmp, "uncaptioned"), sidecars=False)
    _write(os.path.join(tmp, "plain.txt"), "a regular file\n")
    _write(os.path.join(tmp, "comma.csv"), "path,caption\nv0.mp4,a cat\nv1.mp4,a dog, running\n")
    _write(os.path.join(tmp, "short.csv"), "path,caption\nv0.mp4\nv1.mp4,a dog\n")
    _write(os.path.join(tmp, "extra.csv"), "path,caption\nv0.mp4,a\nv1.mp4,b\ngone.mp4,c\n")
    _write(os.path.join(tmp, "quote.csv"), 'path,caption\nv0.mp4,"a cat\nv1.mp4,b\n')
    _write(os.path.join(tmp, "bad.jsonl"), '{"path": "v0.mp4", "caption": "a"}\n{"path": \n')
    with open(os.path.join(tmp, "corrupt.tar"), "wb") as handle:
        handle.write(os.urandom(3000))
    _write(os.path.join(tmp, "notjson.json"), "eta_opt: {alpha: 1}\n")
    _write(os.path.join(tmp, "list.json"), "[1, 2]\n")
    _law(os.path.join(tmp, "neg_lr.json"), lambda law: law["eta_opt"].update(alpha=-2e-4))
    _law(os.path.join(tmp, "n_opt_a.json"), lambda law: law["n_opt"].update(a=1.7))
    _law(os.path.join(tmp, "string.json"), lambda law: law["batch_opt"].update(beta="0.8"))
    _law(os.path.join(tmp, "schema.json"), lambda law: law.update(schema="other/v9"))
    _law(os.path.join(tmp, "compute.json"), lambda law: law["compute"].pop("hidden_size_rule"))
    _law(os.path.join(tmp, "samples.json"), lambda law: law.update(
        bootstrap_samples={"n_opt": [[0.8, 0.4, 7]]}))
    _law(os.path.join(tmp, "ci95.json"), lambda law: law.update(ci95="wide"))
    _law(os.path.join(tmp, "existing_law.json"), lambda law: None)
    _records(os.path.join(tmp, "runs.jsonl"))
    _records(os.path.join(tmp, "missing_key.jsonl"), lambda r: r.pop("lr"))
    _records(os.path.join(tmp, "string_lr.jsonl"), lambda r: r.update(lr="1e-3"))
    _records(os.path.join(tmp, "nan_params.jsonl"),
             lambda r: r.update(params_nonembed=float("nan")))
    _records(os.path.join(tmp, "bad_curve.jsonl"), lambda r: r.update(val_loss_curve=[3]))
    _write(os.path.join(tmp, "broken.jsonl"), '{"run_id": "a"}\n{"run_id": \n')
    os.makedirs(os.path.join(tmp, "a_dir"))


def _pre(*args: str) -> tuple:
    """A precompute command over ``videos`` (relative paths: the cases run in tmp)."""
    base = {"--input": "videos", "--output": "out", "--frames": "9", "--height": "32",
            "--width": "32", "--vae-config": "tiny", "--text-encoder-config": "tiny",
            "--text-tokens": "16", "--threads": "1"}
    pairs = dict(zip(args[::2], args[1::2]))
    argv = [x for k, v in {**base, **pairs}.items() if v is not None for x in (k, v)]
    return (*argv, "--no-progress")


FIT = ("fit", "runs.jsonl", "--out", "law.json", "--resamples", "0", "--no-extrapolation")

# (id, cli, args, words the error line must contain)
CASES = [
    # precompute
    ("pre-missing-input", PRECOMPUTE, _pre("--input", "nope"), ["--input nope"]),
    ("pre-input-plain-file", PRECOMPUTE, _pre("--input", "plain.txt"), ["--input plain.txt"]),
    ("pre-output-regular-file", PRECOMPUTE, _pre("--output", "plain.txt"),
     ["--output plain.txt", "not a directory"]),
    ("pre-output-is-input", PRECOMPUTE, _pre("--output", "videos"), ["--output videos"]),
    ("pre-output-under-file", PRECOMPUTE, _pre("--output", "plain.txt/out"),
     ["--output plain.txt/out"]),
    ("pre-missing-captions", PRECOMPUTE, _pre("--captions", "nope.csv"), ["--captions nope.csv"]),
    ("pre-captions-unquoted-comma", PRECOMPUTE, _pre("--captions", "comma.csv"),
     ["comma.csv:3", "quote captions"]),
    ("pre-captions-no-caption", PRECOMPUTE, _pre("--captions", "short.csv"),
     ["short.csv:2", "1 fields"]),
    ("pre-captions-not-an-input", PRECOMPUTE, _pre("--captions", "extra.csv"),
     ["extra.csv:4", "gone.mp4"]),
    ("pre-captions-bad-quote", PRECOMPUTE, _pre("--captions", "quote.csv"), ["quote.csv"]),
    ("pre-captions-bad-jsonl", PRECOMPUTE, _pre("--captions", "bad.jsonl"),
     ["bad.jsonl:2", "not valid JSON"]),
    ("pre-captions-not-csv", PRECOMPUTE, _pre("--captions", "plain.txt"), ["plain.txt"]),
    ("pre-all-rejected", PRECOMPUTE, _pre("--input", "uncaptioned"),
     ["all 2 inputs were rejected", "v0.mp4: no caption"]),
    ("pre-corrupt-tar-only", PRECOMPUTE, _pre("--input", "corrupt.tar"),
     ["all 1 inputs were rejected", "corrupt.tar"]),
    ("pre-frames", PRECOMPUTE, _pre("--frames", "8"), ["--frames 8"]),
    ("pre-frames-zero", PRECOMPUTE, _pre("--frames", "0"), ["--frames 0"]),
    ("pre-height", PRECOMPUTE, _pre("--height", "30"), ["--height 30"]),
    ("pre-shard-size-nan", PRECOMPUTE, _pre("--shard-size-mb", "nan"), ["--shard-size-mb nan"]),
    ("pre-val-fraction", PRECOMPUTE, _pre("--val-fraction", "1.5"), ["--val-fraction 1.5"]),
    ("pre-fps", PRECOMPUTE, _pre("--fps", "-8"), ["--fps -8"]),
    ("pre-batch-size", PRECOMPUTE, _pre("--batch-size", "0"), ["--batch-size 0"]),
    ("pre-text-tokens", PRECOMPUTE, _pre("--text-tokens", "0"), ["--text-tokens 0"]),
    ("pre-threads", PRECOMPUTE, _pre("--threads", "0"), ["--threads 0"]),
    ("pre-device", PRECOMPUTE, _pre("--device", "warp9"), ["--device 'warp9'"]),
    ("pre-vae-path", PRECOMPUTE, _pre("--vae-config", None, "--vae-path", "nope"),
     ["--vae-path nope"]),
    ("pre-text-encoder-path", PRECOMPUTE, _pre("--text-encoder-config", None,
                                               "--text-encoder-path", "nope"),
     ["--text-encoder-path nope"]),
    ("pre-clips-per-video", PRECOMPUTE, _pre("--clips-per-video", "0"), ["--clips-per-video 0"]),
    ("pre-max-samples", PRECOMPUTE, _pre("--max-samples-per-shard", "0"),
     ["--max-samples-per-shard 0"]),
    ("pre-decode-threads", PRECOMPUTE, _pre("--decode-threads", "0"), ["--decode-threads 0"]),
    ("pre-dtype", PRECOMPUTE, _pre("--dtype", "int8"), ["--dtype"]),
    ("pre-vae-config", PRECOMPUTE, _pre("--vae-config", "huge"), ["--vae-config"]),
    # scaling_laws
    ("fit-window-zero", LAWS, (*FIT, "--window", "0"), ["--window", "> 0"]),
    ("fit-window-nan", LAWS, (*FIT, "--window", "nan"), ["--window"]),
    ("fit-resamples", LAWS, (*FIT, "--resamples", "-1"), ["--resamples"]),
    ("fit-min-curve-tokens", LAWS, (*FIT, "--min-curve-tokens", "inf"), ["--min-curve-tokens"]),
    ("fit-fixed-lr", LAWS, (*FIT, "--fixed-lr", "-1e-3"), ["--fixed-lr"]),
    ("fit-plots-regular-file", LAWS, (*FIT, "--plots", "plain.txt"), ["--plots plain.txt"]),
    ("fit-out-exists", LAWS, (*FIT[:3], "existing_law.json", *FIT[4:]),
     ["--out existing_law.json", "--force"]),
    ("fit-out-directory", LAWS, (*FIT[:3], "a_dir", *FIT[4:]), ["--out a_dir"]),
    ("fit-records-missing", LAWS, ("fit", "nope.jsonl", "--out", "law.json"), ["nope.jsonl"]),
    ("fit-records-not-json", LAWS, ("fit", "broken.jsonl", "--out", "law.json"),
     ["broken.jsonl:2", "not valid JSON"]),
    ("fit-records-missing-key", LAWS, ("fit", "missing_key.jsonl", "--out", "law.json"),
     ["missing_key.jsonl:1", "['lr']"]),
    ("fit-records-string", LAWS, ("fit", "string_lr.jsonl", "--out", "law.json"),
     ["string_lr.jsonl:1", "lr must be a number"]),
    ("fit-records-nan", LAWS, ("fit", "nan_params.jsonl", "--out", "law.json"),
     ["nan_params.jsonl:1", "params_nonembed"]),
    ("fit-records-bad-curve", LAWS, ("fit", "bad_curve.jsonl", "--out", "law.json"),
     ["bad_curve.jsonl:1", "val_loss_curve"]),
    ("report-not-json", LAWS, ("report", "notjson.json"), ["notjson.json is not a law file"]),
    ("report-not-object", LAWS, ("report", "list.json"), ["list.json is not a law file"]),
    ("report-records-not-law", LAWS, ("report", "runs.jsonl"), ["runs.jsonl is not a law file"]),
    ("report-ci95-string", LAWS, ("report", "ci95.json"), ["ci95.json", "'ci95'"]),
    ("report-directory", LAWS, ("report", "a_dir"), ["a_dir is not a law file"]),
    ("plan-negative-lr-constant", LAWS, ("plan", "--budget", "1e21", "--law", "neg_lr.json"),
     ["neg_lr.json", "eta_opt.alpha"]),
    ("plan-n-opt-exponent", LAWS, ("plan", "--budget", "1e21", "--law", "n_opt_a.json"),
     ["n_opt_a.json", "n_opt.a = 1.7"]),
    ("plan-string-coefficient", LAWS, ("plan", "--budget", "1e21", "--law", "string.json"),
     ["string.json", "batch_opt.beta"]),
    ("plan-schema", LAWS, ("plan", "--budget", "1e21", "--law", "schema.json"), ["schema"]),
    ("plan-compute", LAWS, ("plan", "--budget", "1e21", "--law", "compute.json"), ["compute"]),
    ("plan-samples", LAWS, ("plan", "--budget", "1e21", "--law", "samples.json"),
     ["bootstrap_samples.n_opt"]),
    ("plan-law-missing", LAWS, ("plan", "--budget", "1e21", "--law", "nope.json"), ["nope.json"]),
    ("plan-budget-negative", LAWS, ("plan", "--budget", "-1"), ["--budget"]),
    ("plan-budget-inf", LAWS, ("plan", "--budget", "inf"), ["--budget"]),
    ("plan-tokens-per-sample", LAWS, ("plan", "--budget", "1e21", "--tokens-per-sample", "0"),
     ["--tokens-per-sample"]),
    ("plan-max-params", LAWS, ("plan", "--budget", "1e21", "--max-params", "nan"),
     ["--max-params"]),
    # predict_config
    ("predict-gpus-negative", PREDICT, ("--budget", "1e22", "--gpus", "-4"), ["--gpus"]),
    ("predict-no-layout-fits", PREDICT, ("--budget", "1e22", "--gpus", "7", "--gpu-memory-gib",
                                         "0.5"), ["--gpus 7", "smallest layout needs"]),
    ("predict-memory-zero", PREDICT, ("--budget", "1e22", "--gpu-memory-gib", "0"),
     ["--gpu-memory-gib"]),
    ("predict-gpus-per-node", PREDICT, ("--budget", "1e22", "--gpus", "8", "--gpus-per-node",
                                        "0"), ["--gpus-per-node"]),
    ("predict-budget-tiny", PREDICT, ("--budget", "1e3",), ["--budget 1000", "smallest model"]),
    ("predict-max-params-tiny", PREDICT, ("--budget", "1e21", "--max-params", "10"),
     ["--max-params 10"]),
    ("predict-budget-text", PREDICT, ("--budget", "lots"), ["--budget"]),
    ("predict-unknown-flag", PREDICT, ("--budget", "1e21", "--gpu", "8"), ["--gpu"]),
    ("predict-unrecognized-flag", PREDICT, ("--budget", "1e21", "--nodes", "8"), ["--nodes"]),
    ("predict-bad-law", PREDICT, ("--budget", "1e21", "--law", "n_opt_a.json"), ["n_opt.a"]),
    ("predict-unknown-gpu", PREDICT, ("--budget", "1e22", "--gpus", "8", "--gpu", "v100-16gb"),
     ["--gpu 'v100-16gb'", "unknown GPU type", "h100-80gb"]),
    ("predict-cluster-too-small", PREDICT, ("--budget", "1e24", "--gpus", "1"),
     ["--gpus 1", "no layout fits", "smallest layout needs"]),
    ("predict-frames-not-causal", PREDICT, ("--budget", "1e22", "--frames", "16", "--height",
                                            "256", "--width", "256"), ["--frames 16"]),
    ("predict-video-incomplete", PREDICT, ("--budget", "1e22", "--frames", "17"),
     ["--height", "--width"]),
    ("predict-video-and-tokens", PREDICT, ("--budget", "1e22", "--frames", "17", "--height",
                                           "256", "--width", "256", "--tokens-per-sample",
                                           "1280"), ["--tokens-per-sample"]),
    ("predict-mfu", PREDICT, ("--budget", "1e22", "--mfu", "1.5"), ["--mfu"]),
    ("predict-budget-unit", PREDICT, ("--budget", "1", "--budget-unit", "exaflops"),
     ["--budget-unit"]),
    ("predict-write-config-exists", PREDICT, ("--budget", "1e22", "--write-config",
                                              "n_opt_a.json"), ["--write-config", "exists"]),
]


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("bad_input"))
    _setup(root)
    return root


@pytest.mark.parametrize("name, cli, args, named", CASES, ids=[c[0] for c in CASES])
def test_refused_by_name_and_nothing_changes(workdir, name, cli, args, named):
    before = snapshot(workdir)
    result = run(cli, *args, cwd=workdir)
    assert_refused(result, cli[0], *named)
    assert snapshot(workdir) == before


def test_refusals_need_no_torch():
    """Flags, paths and captions are checked before torch is imported; scaling_laws never
    imports it. The command lines load torch only once the input is checked."""
    code = ("import sys, megatron_vdit.cli.precompute_latents, scaling_laws.__main__, "
            "megatron_vdit.cli.sample, megatron_vdit.cli.sweep, megatron_vdit.cli.predict_config, "
            "megatron_vdit.train, megatron_vdit.training.prepare, megatron_vdit.training.dry_run; "
            "sys.exit('torch' in sys.modules)")
    result = subprocess.run([sys.executable, "-c", code], env={**os.environ, "PYTHONPATH": REPO},
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]


def test_sample_refusals_need_no_torch(tmp_path):
    """The sampler refuses a bad flag, output or run directory before importing torch."""
    code = ("import sys\n"
            "from megatron_vdit.cli.sample import main\n"
            "for argv in sys.argv[1:]:\n"
            "    try:\n"
            "        main(argv.split())\n"
            "    except SystemExit as stop:\n"
            "        assert stop.code == 2, stop.code\n"
            "sys.exit(10 if 'torch' in sys.modules else 0)\n")
    out = str(tmp_path / "a.mp4")
    cases = [f"--run-dir {tmp_path}/nope --prompt x --out {out}",
             f"--run-dir {tmp_path} --prompt x --out {tmp_path}/a.gif",
             f"--run-dir {tmp_path} --prompt x --out {out} --num-steps 0",
             f"--run-dir {tmp_path} --prompt x --out {out}"]  # no checkpoint in it
    result = subprocess.run([sys.executable, "-c", code, *cases],
                            env={**os.environ, "PYTHONPATH": REPO}, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    errors = [line for line in result.stderr.splitlines() if line.startswith("sample.py: error:")]
    assert len(errors) == len(cases), result.stderr[-2000:]
    assert "--run-dir" in errors[0] and "--out" in errors[1] and "--num-steps" in errors[2]
    assert "no checkpoint" in errors[3]


def test_console_scripts_resolve():
    """Every console script of setup.py names a callable that exists (the tools/ scripts
    are wrappers over the same functions)."""
    with open(os.path.join(REPO, "setup.py")) as handle:
        scripts = re.findall(r'"([\w-]+)=([\w.]+):(\w+)"', handle.read())
    assert {name for name, _, _ in scripts} >= {"vdit-train", "vdit-precompute", "vdit-plan",
                                                 "vdit-sweep", "vdit-sample"}
    for _, module, function in scripts:
        assert callable(getattr(importlib.import_module(module), function))


def test_debug_shows_the_traceback(workdir):
    result = run(LAWS, "report", "list.json", "--debug", cwd=workdir)
    assert result.returncode == 1 and "Traceback" in result.stderr
    assert "list.json is not a law file" in result.stderr


def test_fit_overwrites_a_law_only_with_force(tmp_path):
    _law(str(tmp_path / "law.json"), lambda law: None)
    _records(str(tmp_path / "runs.jsonl"))
    before = (tmp_path / "law.json").read_bytes()
    assert_refused(run(LAWS, *FIT, cwd=str(tmp_path)), LAWS[0], "--force")
    assert (tmp_path / "law.json").read_bytes() == before
    result = run(LAWS, *FIT, "--force", cwd=str(tmp_path))
    assert result.returncode == 0, result.stderr[-2000:]
    assert json.loads((tmp_path / "law.json").read_text())["kind"] == "fitted"
    assert not list(tmp_path.glob(".*tmp*"))


def _shards(out: str) -> dict[str, bytes]:
    return {k: v for k, v in snapshot(out).items() if k.endswith(".tar")}


def test_precompute_failed_start_damaged_shard_and_changed_args(tmp_path):
    """The precompute's state rules, in the order a user meets them."""
    _videos(str(tmp_path / "videos"), count=3)
    # A failed start leaves nothing behind.
    refused = run(PRECOMPUTE, *_pre("--input", "typo"), cwd=str(tmp_path))
    assert_refused(refused, PRECOMPUTE[0], "--input typo")
    assert not (tmp_path / "out").exists()
    # State that an older version's failed start left (args, no shard) does not block.
    (tmp_path / "out" / "_state").mkdir(parents=True)
    (tmp_path / "out" / "_state" / "args.json").write_text('{"inputs": ["elsewhere"]}\n')
    first = run(PRECOMPUTE, *_pre("--max-samples-per-shard", "1"), cwd=str(tmp_path))
    assert first.returncode == 0, first.stderr[-3000:]
    out = str(tmp_path / "out")
    shards = _shards(out)
    assert len(shards) == 3
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    listed = {f"{split}/{s['name']}": s for split, info in manifest["splits"].items()
              for s in info["shards"]}
    assert set(listed) == set(shards)
    for name, payload in shards.items():  # size and checksum, computed independently
        assert listed[name]["bytes"] == len(payload)
        assert listed[name]["sha256"] == __import__("hashlib").sha256(payload).hexdigest()
    # A shard cut short after the run finished is redone, not accepted as done; a torn
    # manifest and probe cache (an interrupted copy) are rebuilt, not a traceback.
    victim = sorted(shards)[0]
    with open(os.path.join(out, victim), "r+b") as handle:
        handle.truncate(len(shards[victim]) // 2)
    manifest_bytes = (tmp_path / "out" / "manifest.json").read_bytes()
    (tmp_path / "out" / "manifest.json").write_bytes(manifest_bytes[:40])
    (tmp_path / "out" / "_state" / "probe.json").write_text('{"v0.mp4": ')
    again = run(PRECOMPUTE, *_pre("--max-samples-per-shard", "1"), cwd=str(tmp_path))
    assert again.returncode == 0, again.stderr[-3000:]
    assert f"{victim} is damaged" in again.stderr
    summary = json.loads(again.stdout.strip().splitlines()[-1])
    assert summary["shards_redone"] == 1 and summary["shards_skipped"] == 2
    assert summary["sources_probed"] == 3
    assert _shards(out) == shards
    assert (tmp_path / "out" / "manifest.json").read_bytes() == manifest_bytes
    # A changed command over real finished shards is refused; nothing changes.
    before = snapshot(out)
    changed = run(PRECOMPUTE, *_pre("--max-samples-per-shard", "1", "--frames", "13"),
                  cwd=str(tmp_path))
    assert_refused(changed, PRECOMPUTE[0], "different args", "num_frames")
    assert snapshot(out) == before


def test_precompute_truncated_input_tar_keeps_its_complete_members(tmp_path):
    _videos(str(tmp_path / "videos"), count=2)
    with tarfile.open(tmp_path / "raw.tar", "w") as archive:
        for name in ("v0.mp4", "v0.txt", "v1.mp4", "v1.txt"):
            archive.add(tmp_path / "videos" / name, arcname=name)
    payload = (tmp_path / "raw.tar").read_bytes()
    second_video = payload.index(b"v1.mp4")  # the header of the second video
    (tmp_path / "cut.tar").write_bytes(payload[:second_video + 700])
    result = run(PRECOMPUTE, *_pre("--input", "cut.tar", "--val-fraction", "0"),
                 cwd=str(tmp_path))
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert summary["samples"] == {"train": 1, "val": 0}
    errors = [json.loads(line) for line in (tmp_path / "out" / "errors.jsonl").open()]
    assert [e["path"] for e in errors] == ["cut.tar"] and "cut short" in errors[0]["reason"]
