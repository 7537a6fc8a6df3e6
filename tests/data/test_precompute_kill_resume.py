"""Real processes: SIGKILL mid-run then rerun, and torchrun with 2 ranks, both give the
shards of an uninterrupted single-process run, byte for byte."""
import os
import signal
import subprocess
import sys
import tarfile
import time

import pytest

from data_testlib import REPO, run_tool, shard_files, tool_command
from megatron_vdit.data.procedural import render_clip
from megatron_vdit.data.video_io import write_audio_only, write_video
from megatron_vdit.utils.atomic_io import temp_path

NUM_VIDEOS = 20  # x 2 clips, one sample per shard: 40 shards, a wide window to kill in


def _make_input(root):
    os.makedirs(root)
    for index in range(NUM_VIDEOS):
        frames, caption = render_clip(11, index, 20, 40, 48)
        extension = ".webm" if index % 3 == 0 else ".mp4"
        write_video(os.path.join(root, f"v{index:02d}{extension}"), frames, fps=8)
        with open(os.path.join(root, f"v{index:02d}.txt"), "w") as handle:
            handle.write(caption)
    with open(os.path.join(root, "corrupt.mp4"), "wb") as handle:
        handle.write(b"not a video" * 100)
    write_audio_only(os.path.join(root, "audio.mkv"))
    for name in ("corrupt", "audio"):
        with open(os.path.join(root, f"{name}.txt"), "w") as handle:
            handle.write("caption")


def _args(input_dir, output_dir):
    return tool_command(input_dir, output_dir, "--clips-per-video", "2",
                        "--max-samples-per-shard", "1", "--val-fraction", "0.2",
                        "--batch-size", "1")


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    root = tmp_path_factory.mktemp("kill")
    _make_input(str(root / "in"))
    result = run_tool(_args(str(root / "in"), str(root / "ref")), timeout=180)
    assert result.returncode == 0, result.stderr[-3000:]
    return root, shard_files(str(root / "ref"))


def _num_shards(output_dir):
    """Published shards only: a writer's temp file (".shard-….tmp-PID-….tar") also ends
    in .tar but is hidden, and counting it would count a shard the kill cut short."""
    return sum(len([n for n in os.listdir(os.path.join(output_dir, split))
                    if n.startswith("shard-") and n.endswith(".tar")])
               for split in ("train", "val") if os.path.isdir(os.path.join(output_dir, split)))


def _keys(output_dir):
    keys = []
    for split in ("train", "val"):
        for name in sorted(os.listdir(os.path.join(output_dir, split))):
            with tarfile.open(os.path.join(output_dir, split, name)) as archive:
                keys += [m.name.split(".")[0] for m in archive.getmembers()
                         if m.name.endswith("json")]
    return keys


def test_sigkill_then_rerun_equals_uninterrupted(reference):
    root, expected = reference
    assert sum(1 for name in expected if name.endswith(".tar")) == 2 * NUM_VIDEOS
    out = str(root / "killed")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": REPO}
    process = subprocess.Popen([sys.executable] + _args(str(root / "in"), out), env=env,
                               cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while _num_shards(out) < 3 and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    assert process.returncode == -signal.SIGKILL
    done = _num_shards(out)
    assert 3 <= done < 2 * NUM_VIDEOS and not os.path.exists(os.path.join(out, "manifest.json"))
    # A partial shard as a kill during a write leaves it: a temp file, never a final name.
    with open(temp_path(os.path.join(out, "train", "shard-000001.tar")), "wb") as handle:
        handle.write(b"partial")
    result = run_tool(_args(str(root / "in"), out), timeout=180)
    assert result.returncode == 0, result.stderr[-3000:]
    assert '"shards_skipped": %d' % done in result.stdout
    assert shard_files(out) == expected  # also: no temp file, no extra shard
    keys = _keys(out)
    assert len(keys) == len(set(keys)) == 2 * NUM_VIDEOS


def test_torchrun_two_ranks_equals_single_process(reference):
    root, expected = reference
    out = str(root / "torchrun")
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone",
                "--nproc_per_node", "2"]
    result = run_tool(_args(str(root / "in"), out), launcher=launcher, timeout=240)
    assert result.returncode == 0, result.stderr[-3000:]
    assert '"world_size": 2' in result.stdout
    assert shard_files(out) == expected
