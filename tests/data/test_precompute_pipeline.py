"""End-to-end precompute on real files: shipped mp4s, odd-sized mp4/webm/mkv/mov, bad inputs."""
import csv
import io
import json
import os
import tarfile

import numpy as np
import pytest

from data_testlib import BAD_INPUTS, make_mixed_input, run_tool, shard_files, tool_command
from megatron_vdit.data.loader import ShardLoader, read_manifest
from megatron_vdit.data.precompute import PrecomputeConfig, run_precompute
from megatron_vdit.data.procedural import render_clip
from megatron_vdit.data.video_io import write_video

FRAMES, SIZE, CLIPS_PER_VIDEO = 9, 32, 2


def _config(inputs, output, **overrides):
    args = dict(inputs=inputs, output=output, num_frames=FRAMES, height=SIZE, width=SIZE,
                clips_per_video=CLIPS_PER_VIDEO, vae_config="tiny", text_encoder_config="tiny",
                text_tokens=32, max_samples_per_shard=4, val_fraction=0.3, threads=1,
                progress=False)
    return PrecomputeConfig(**{**args, **overrides})


def _all_samples(output):
    """Every sample of both splits, via a finite loader (also checks the loader reads them)."""
    manifest = read_manifest(output)
    samples = []
    for split in ("train", "val"):
        if manifest["splits"][split]["num_samples"]:
            for batch in ShardLoader(output, split, batch_size=5, infinite=False):
                samples += [(split, key) for key in batch["keys"]]
    return samples


def _metas(output):
    metas = []
    for split in ("train", "val"):
        for name in sorted(os.listdir(os.path.join(output, split))):
            with tarfile.open(os.path.join(output, split, name)) as archive:
                metas += [json.load(archive.extractfile(m)) for m in archive.getmembers()
                          if m.name.endswith(".json")]
    return metas


@pytest.fixture(scope="module")
def mixed_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("mixed")
    usable = make_mixed_input(str(root / "in"))
    summary = run_precompute(_config([str(root / "in")], str(root / "out")))
    return root, usable, summary


def test_bad_inputs_are_recorded_and_nothing_else_is_lost(mixed_run):
    root, usable, summary = mixed_run
    out = str(root / "out")
    with open(os.path.join(out, "errors.jsonl")) as handle:
        errors = {e["path"]: e["reason"] for e in map(json.loads, handle)}
    assert set(errors) == set(BAD_INPUTS)
    for path, reason in BAD_INPUTS.items():
        assert reason in errors[path], (path, errors[path])
    assert summary["errors"] == len(BAD_INPUTS)  # truncated.mp4: one failed clip
    # Every usable video contributes min(clips_per_video, frames // clip length) clips.
    expected = {(name, c) for name, n in usable.items()
                for c in range(min(CLIPS_PER_VIDEO, n // FRAMES))}
    expected.add(("truncated.mp4", 0))  # its first clip decodes; clip 1 is an error
    with open(os.path.join(out, "errors.jsonl")) as handle:
        truncated = [e for e in map(json.loads, handle) if e["path"] == "truncated.mp4"]
    assert [e["clip_index"] for e in truncated] == [1]
    metas = _metas(out)
    assert {(m["source"], m["clip_index"]) for m in metas} == expected
    assert len(metas) == len(expected) == summary["clips_encoded"]
    keys = _all_samples(out)
    assert len(keys) == len(set(k for _, k in keys)) == len(expected)


def test_manifest_and_sample_contract(mixed_run):
    root, _, _ = mixed_run
    out = str(root / "out")
    manifest = read_manifest(out)
    assert manifest["latent"] == {"shape": [4, 3, 4, 4], "dtype": "float16"}
    assert manifest["text_emb"] == {"shape": [32, 64], "dtype": "float16"}
    assert manifest["text_mask"] == {"shape": [32], "dtype": "bool"}
    assert manifest["vae"]["class"] == "AutoencoderKLWan"
    assert manifest["vae"]["scaling"]["type"] == "wan_mean_std"
    assert manifest["text_encoder"]["class"] == "UMT5EncoderModel"
    assert manifest["num_errors"] == len(BAD_INPUTS)
    for split, info in manifest["splits"].items():
        assert sorted(os.listdir(os.path.join(out, split))) == [s["name"] for s in info["shards"]]
        assert info["num_samples"] == sum(s["num_samples"] for s in info["shards"])
        assert all(s["num_samples"] <= 4 for s in info["shards"])
    metas = _metas(out)
    by_source = {}
    for meta in metas:
        by_source.setdefault(meta["source"], set()).add(meta["split"])
        assert len(meta["frame_indices"]) == FRAMES and meta["latent_shape"] == [4, 3, 4, 4]
    assert all(len(splits) == 1 for splits in by_source.values()), "a video in two splits"
    with tarfile.open(os.path.join(out, "train", "shard-000000.tar")) as archive:
        names = archive.getnames()
        assert names[0].endswith(".latent.npy") and names[1].endswith(".text_emb.npy")
        latent = np.load(io.BytesIO(archive.extractfile(names[0]).read()))
        mask = np.load(io.BytesIO(archive.extractfile(names[2]).read()))
        meta = json.load(archive.extractfile(names[3]))
    assert latent.dtype == np.float16 and latent.shape == (4, 3, 4, 4) and np.isfinite(latent).all()
    # Byte tokenizer: one token per UTF-8 byte plus </s>, cut at 32.
    num_tokens = len(meta["caption"].encode()) + 1
    assert mask.dtype == np.bool_ and mask.sum() == min(num_tokens, 32) and mask[0]
    assert meta["caption_truncated"] == (num_tokens > 32)


def test_rerun_skips_finished_shards_and_refuses_other_args(mixed_run):
    root, _, _ = mixed_run
    out = str(root / "out")
    before = shard_files(out)
    summary = run_precompute(_config([str(root / "in")], out))
    assert summary["shards_written"] == 0 and summary["shards_skipped"] == summary["shards_planned"]
    assert summary["sources_probed"] == 0  # probe outcomes come from the cache
    assert shard_files(out) == before
    with pytest.raises(ValueError, match=r"different args \(changed: \['num_frames'\]\)"):
        run_precompute(_config([str(root / "in")], out, num_frames=13))


def test_frames_mismatch_is_an_error_before_work(tmp_path):
    frames, caption = render_clip(6, 0, 9, 32, 32)
    write_video(str(tmp_path / "v.mp4"), frames, fps=8)
    (tmp_path / "v.txt").write_text(caption)
    with pytest.raises(ValueError, match=r"--frames 8 .*k\*4\+1"):
        run_precompute(_config([str(tmp_path)], str(tmp_path / "out"), num_frames=8))
    assert not os.path.exists(tmp_path / "out")


def test_webdataset_tar_input_and_csv_captions_with_splits(tmp_path):
    # Raw-video WebDataset tar: <key>.mp4 + <key>.txt; one key lacks its video.
    tar_path = tmp_path / "raw-000000.tar"
    with tarfile.open(tar_path, "w") as archive:
        for index in range(3):
            video = str(tmp_path / f"v{index}.mp4")
            frames, caption = render_clip(3, index, 9, 40, 48)
            write_video(video, frames, fps=8)
            archive.add(video, arcname=f"clips/v{index}.mp4")
            _add_bytes(archive, f"clips/v{index}.txt", caption.encode())
        _add_bytes(archive, "clips/orphan.txt", b"caption without video")
    summary = run_precompute(_config([str(tar_path)], str(tmp_path / "out_tar")))
    metas = _metas(str(tmp_path / "out_tar"))
    assert sorted(m["source"] for m in metas) == [f"raw-000000.tar/clips/v{i}" for i in range(3)]
    assert summary["errors"] == 1
    # A directory with a CSV captions file that pins splits.
    video_dir = tmp_path / "videos"
    video_dir.mkdir()
    rows = []
    for index, split in enumerate(["train", "val", "val"]):
        frames, caption = render_clip(4, index, 9, 32, 32)
        write_video(str(video_dir / f"c{index}.webm"), frames, fps=8)
        rows.append({"path": f"c{index}.webm", "caption": caption, "split": split})
    captions = str(tmp_path / "captions.csv")
    out = str(tmp_path / "out_csv")
    # A row naming no input is refused by file and line (header = line 1), nothing written.
    _write_csv(captions, rows + [{"path": "missing.mp4", "caption": "gone", "split": "train"}])
    with pytest.raises(ValueError, match=r"captions\.csv:5: missing\.mp4 is not a video"):
        run_precompute(_config([str(video_dir)], out, captions=captions, val_fraction=0.0))
    assert not os.path.exists(out)
    _write_csv(captions, rows)
    run_precompute(_config([str(video_dir)], out, captions=captions, val_fraction=0.0))
    assert read_manifest(out)["splits"]["val"]["num_samples"] == 2
    assert {(m["source"], m["split"]) for m in _metas(out)} == {
        ("c0.webm", "train"), ("c1.webm", "val"), ("c2.webm", "val")}
    assert os.path.getsize(os.path.join(out, "errors.jsonl")) == 0


def _write_csv(path, rows):
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, ["path", "caption", "split"])
        writer.writeheader()
        writer.writerows(rows)


def _add_bytes(archive, name, payload):
    info = tarfile.TarInfo(name)
    info.size = len(payload)
    archive.addfile(info, io.BytesIO(payload))


def test_cli_runs_with_cogvideox_vae(tmp_path):
    video_dir = tmp_path / "in"
    video_dir.mkdir()
    for index in range(2):
        frames, caption = render_clip(5, index, 10, 33, 47)
        write_video(str(video_dir / f"v{index}.mp4"), frames, fps=8)
        (video_dir / f"v{index}.txt").write_text(caption)
    args = tool_command(str(video_dir), str(tmp_path / "out"), "--val-fraction", "0")
    args[args.index("--vae-config") + 1] = "tiny-cogvideox"
    result = run_tool(args, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert summary["samples"] == {"train": 2, "val": 0} and summary["errors"] == 0
    assert read_manifest(str(tmp_path / "out"))["vae"]["scaling"]["type"] == "scaling_factor"
    args[args.index("--frames") + 1] = "10"
    args[args.index("--output") + 1] = str(tmp_path / "out_bad")
    result = run_tool(args, timeout=120)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "error: --frames 10 does not fit the cogvideox VAE" in result.stderr


def test_output_inside_the_input_directory_is_not_read_back(tmp_path):
    for index in range(2):
        frames, caption = render_clip(6, index, 9, 32, 32)
        write_video(str(tmp_path / f"v{index}.mp4"), frames, fps=8)
        (tmp_path / f"v{index}.txt").write_text(caption)
    out = str(tmp_path / "shards")
    first = run_precompute(_config([str(tmp_path)], out, val_fraction=0.0))
    again = run_precompute(_config([str(tmp_path)], out, val_fraction=0.0))
    assert first["sources"] == again["sources"] == 2
    assert first["errors"] == again["errors"] == 0
