"""tools/sample.py end to end: a trained run -> a playable mp4 of the right size, + latents."""
import json
import os
import subprocess
import sys
from pathlib import Path

import av
import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[2]


def run_cli(*args):
    env = dict(os.environ, PYTHONPATH=str(REPO))
    env.pop("RANK", None)
    env.pop("WORLD_SIZE", None)
    return subprocess.run([sys.executable, str(REPO / "tools" / "sample.py"), *args],
                          capture_output=True, text=True, env=env, timeout=600)


def test_writes_playable_mp4_and_latents(trained_run, tmp_path):
    out = tmp_path / "videos" / "red.mp4"
    proc = run_cli("--run-dir", str(trained_run), "--prompt", "a red square moving right",
                   "--out", str(out), "--num-steps", "3", "--sampler", "euler",
                   "--guidance-scale", "2", "--seed", "1", "--frames", "9", "--height", "64",
                   "--width", "48")
    assert proc.returncode == 0, proc.stderr[-2000:]
    with av.open(str(out)) as container:
        stream = container.streams.video[0]
        frames = [f.to_ndarray(format="rgb24") for f in container.decode(stream)]
    assert len(frames) == 9 and frames[0].shape == (64, 48, 3)
    saved = np.load(str(out).replace(".mp4", ".latents.npz"))
    # tiny Wan VAE: 4 channels, (9 - 1) / 4 + 1 = 3 latent frames, 8x spatial compression
    assert saved["latents"].shape == (4, 3, 8, 6)
    meta = json.loads(str(saved["meta"]))
    assert meta["weights"] == "ema" and meta["prompt"] == "a red square moving right"
    assert np.isfinite(saved["latents"]).all()


def test_prompts_file_writes_one_video_per_prompt(trained_run, tmp_path):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red square\n\na green bar\n")
    proc = run_cli("--run-dir", str(trained_run), "--prompts-file", str(prompts),
                   "--out", str(tmp_path / "s.mp4"), "--num-steps", "2")
    assert proc.returncode == 0, proc.stderr[-2000:]
    for i in range(2):
        with av.open(str(tmp_path / f"s_{i:03d}.mp4")) as container:  # default size: training's
            stream = container.streams.video[0]
            assert (stream.width, stream.height) == (32, 32)
            assert sum(1 for _ in container.decode(stream)) == 5


def test_bad_input_is_one_line_and_exit_2(trained_run, tmp_path):
    cases = [
        (["--run-dir", str(tmp_path / "nope"), "--prompt", "x", "--out", str(tmp_path / "a.mp4")],
         "--run-dir"),
        (["--run-dir", str(trained_run), "--prompt", "x", "--out", str(tmp_path / "a.gif")],
         "--out"),
        (["--run-dir", str(trained_run), "--prompt", "x", "--out", str(tmp_path / "a.mp4"),
          "--frames", "8"], "--frames 8"),
        (["--run-dir", str(trained_run), "--prompt", "x", "--out", str(tmp_path / "a.mp4"),
          "--num-steps", "0"], "--num-steps"),
        (["--run-dir", str(trained_run), "--prompt", "x", "--out", str(tmp_path / "a.mp4"),
          "--width", "40"], "--width 40"),
    ]
    for args, needle in cases:
        proc = run_cli(*args)
        lines = proc.stderr.strip().splitlines()
        assert proc.returncode == 2, (args, proc.stderr[-1500:])
        assert lines[-1].startswith("sample.py: error:") and needle in lines[-1], lines[-1]
        assert "Traceback" not in proc.stderr
    existing = tmp_path / "keep.mp4"
    existing.write_bytes(b"precious")
    proc = run_cli("--run-dir", str(trained_run), "--prompt", "x", "--out", str(existing))
    assert proc.returncode == 2 and "--overwrite" in proc.stderr
    assert existing.read_bytes() == b"precious"


DOCUMENTED_PROMPT = "astronaut camera pans left slow zooms steady turns level coins disc moves up fast"


@pytest.mark.xdist_group("natural_run")  # one worker trains natural_run once (conftest)
def test_make_train_run_documented_command_writes_its_video(natural_run, tmp_path):
    """docs/inference.md's one command on a run of `make train`'s config (`--data natural`:
    no VAE, the sampler inverts the space-to-depth pixel encoding): 4 latent frames of
    16x16 -> an mp4 of 4 frames of 32x32, and 12-channel latents."""
    out = tmp_path / "samples" / "astronaut.mp4"
    proc = run_cli("--run-dir", str(natural_run), "--prompt", DOCUMENTED_PROMPT, "--out", str(out))
    assert proc.returncode == 0, proc.stderr[-2000:]
    with av.open(str(out)) as container:
        frames = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    assert len(frames) == 4 and frames[0].shape == (32, 32, 3)
    assert np.load(str(out).replace(".mp4", ".latents.npz"))["latents"].shape == (12, 4, 16, 16)
