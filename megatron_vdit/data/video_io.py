"""Video decoding, clip sampling and writing with PyAV.

Every per-input problem (unreadable container, no video stream, too few frames, fps
too low) raises `VideoError` with a human-readable reason, so the precompute can record
it in ``errors.jsonl`` and move on. Programming mistakes stay ``ValueError``/``assert``.

Shape legend: F = frames, H = height, W = width, C = channels (3, RGB).
Decoded frames are ``frames_FHWC`` uint8 (channels last, as decoders return);
model input is ``video_CFHW`` float32 in [-1, 1].
"""
from __future__ import annotations

import dataclasses
import io
import os

import av
import numpy as np

VIDEO_EXTENSIONS = (".mp4", ".webm", ".mov", ".mkv")
# Allow targets up to 5% above the source rate (29.97 fps source, 30 fps target) by
# sampling every frame; anything further would duplicate frames and is an error.
_FPS_TOLERANCE = 0.95


class VideoError(Exception):
    """A problem with one input video; the message is the reason recorded in errors."""


@dataclasses.dataclass(frozen=True)
class VideoInfo:
    """What the planner needs to know about a video before decoding it."""

    num_frames: int
    fps: float
    width: int
    height: int


@dataclasses.dataclass(frozen=True)
class ClipSpec:
    """One clip to cut: source frame indices (ascending) and its effective rate."""

    clip_index: int
    frame_indices: tuple[int, ...]
    fps: float


VideoSource = str | bytes
"""A path on disk or the raw bytes of a container (e.g. a member of an input tar)."""


def _open(source: VideoSource) -> av.container.InputContainer:
    try:
        return av.open(io.BytesIO(source) if isinstance(source, bytes) else source)
    except (av.FFmpegError, OSError, ValueError) as err:  # UnicodeDecodeError is a ValueError
        raise VideoError(f"cannot open container: {type(err).__name__}: {err}") from err


def probe_video(source: VideoSource) -> VideoInfo:
    """Frame count and rate of the first video stream, without decoding.

    MP4/MOV index every sample in the header, so their count is read from it (no data
    read); other containers (webm stores 0) are counted by demuxing packets. If a damaged
    file holds fewer frames than its header says, the clips that run past the end fail
    at decode time and are recorded there.
    """
    with _open(source) as container:
        if not container.streams.video:
            kinds = sorted({s.type for s in container.streams}) or ["none"]
            raise VideoError(f"no video stream (streams: {', '.join(kinds)})")
        stream = container.streams.video[0]
        rate = stream.average_rate or stream.guessed_rate
        if not rate or float(rate) <= 0:
            raise VideoError("video stream has no frame rate")
        indexed = {"mp4", "mov"} & set(container.format.name.split(","))
        num_frames = stream.frames if indexed else 0
        if num_frames <= 0:
            try:
                num_frames = sum(1 for packet in container.demux(stream) if packet.size)
            except av.FFmpegError as err:
                raise VideoError(f"demux failed: {type(err).__name__}: {err}") from err
        if num_frames == 0:
            raise VideoError("video stream has no frames")
        return VideoInfo(num_frames, float(rate), stream.width, stream.height)


def plan_clips(info: VideoInfo, num_frames: int, target_fps: float | None,
               max_clips: int) -> list[ClipSpec]:
    """Cut up to ``max_clips`` non-overlapping clips of ``num_frames`` frames, evenly spaced.

    With ``target_fps`` the source is sampled every ``source_fps / target_fps`` frames
    (rounded per frame, so non-integer ratios keep the right timing on average); with
    None every frame is used. Raises `VideoError` when the video is too short for one clip
    or its frame rate is below the target.
    """
    if num_frames < 1 or max_clips < 1:
        raise ValueError(f"num_frames={num_frames} and max_clips={max_clips} must be >= 1")
    step = 1.0 if target_fps is None else info.fps / target_fps
    if step < _FPS_TOLERANCE:
        raise VideoError(f"source fps {info.fps:.3f} is below target fps {target_fps}")
    step = max(step, 1.0)
    offsets = [round(k * step) for k in range(num_frames)]
    span_frames = offsets[-1] + 1
    num_clips = min(max_clips, info.num_frames // span_frames)
    if num_clips == 0:
        raise VideoError(f"too short: {info.num_frames} frames, a clip needs {span_frames} "
                         f"({num_frames} frames at stride {step:.3f})")
    free_frames = info.num_frames - span_frames
    clips = []
    for clip_index in range(num_clips):
        start = 0 if num_clips == 1 else round(clip_index * free_frames / (num_clips - 1))
        clips.append(ClipSpec(clip_index, tuple(start + o for o in offsets), info.fps / step))
    return clips


def resize_center_crop(frame: av.VideoFrame, height: int, width: int) -> np.ndarray:
    """Scale so the frame covers ``height x width`` (aspect kept), then crop the centre.

    Returns ``[H, W, 3]`` uint8 RGB. Scaling runs in swscale (area filter) on the
    decoder's frame, which avoids converting full-resolution frames to numpy.
    """
    scale = max(height / frame.height, width / frame.width)
    scaled_h = max(height, round(frame.height * scale))
    scaled_w = max(width, round(frame.width * scale))
    image_HWC = frame.reformat(width=scaled_w, height=scaled_h, format="rgb24",
                               interpolation="AREA").to_ndarray()
    top, left = (scaled_h - height) // 2, (scaled_w - width) // 2
    return np.ascontiguousarray(image_HWC[top:top + height, left:left + width])


def _decode_pass(source: VideoSource, wanted: dict, frames: list, height: int, width: int,
                 threaded: bool) -> tuple[list[int], str | None]:
    """Fill ``frames`` with the wanted frames; returns (frames filled per clip, failure)."""
    filled = [0] * len(frames)
    last_needed = max(wanted)
    failure = None
    with _open(source) as container:
        stream = container.streams.video[0]
        if threaded:
            stream.thread_type = "AUTO"
        try:
            for frame_index, frame in enumerate(container.decode(stream)):
                if frame_index in wanted:
                    image_HWC = resize_center_crop(frame, height, width)
                    for slot, position in wanted[frame_index]:
                        frames[slot][position] = image_HWC
                        filled[slot] += 1
                if frame_index >= last_needed:
                    break
        except (av.FFmpegError, ValueError) as err:  # ValueError: frames swscale cannot convert
            failure = f"decode failed: {type(err).__name__}: {err}"
    return filled, failure


def decode_clips(source: VideoSource, clips: list[ClipSpec], height: int, width: int
                 ) -> list[np.ndarray | VideoError]:
    """Decode the frames of ``clips`` in one pass; one ``frames_FHWC`` uint8 per clip.

    A clip whose frames cannot all be decoded (truncated or damaged stream) comes back
    as a `VideoError` in its slot, so the other clips of the same video survive.
    Decoding uses frame threads; after an error it is redone single-threaded, because a
    threaded decoder drops the good frames still in flight when a later packet fails.
    """
    wanted = {}
    for slot, clip in enumerate(clips):
        for position, frame_index in enumerate(clip.frame_indices):
            wanted.setdefault(frame_index, []).append((slot, position))
    frames = [np.zeros((len(c.frame_indices), height, width, 3), np.uint8) for c in clips]
    filled, failure = _decode_pass(source, wanted, frames, height, width, threaded=True)
    if failure is not None:
        filled, failure = _decode_pass(source, wanted, frames, height, width, threaded=False)
    results: list[np.ndarray | VideoError] = []
    for slot, clip in enumerate(clips):
        if filled[slot] == len(clip.frame_indices):
            results.append(frames[slot])
        else:
            reason = failure or "stream ended early"
            results.append(VideoError(f"clip {clip.clip_index}: decoded {filled[slot]} of "
                                      f"{len(clip.frame_indices)} frames ({reason})"))
    return results


def frames_to_model_input(frames_FHWC: np.ndarray) -> "torch.Tensor":
    """uint8 ``[F, H, W, 3]`` -> float32 ``[3, F, H, W]`` in [-1, 1] (what video VAEs expect)."""
    import torch  # here, not at the top: discovery and probing stay torch-free
    video_FHWC = torch.from_numpy(frames_FHWC).float()
    return (video_FHWC / 127.5 - 1.0).permute(3, 0, 1, 2).contiguous()


_CODEC_BY_EXTENSION = {".mp4": "libx264", ".mov": "libx264", ".mkv": "libx264",
                       ".webm": "libvpx"}


def write_video(path: str, frames_FHWC: np.ndarray, fps: int, codec: str | None = None) -> None:
    """Encode uint8 ``[F, H, W, 3]`` frames to ``path`` (codec chosen by extension).

    Odd sizes are allowed (H.264 then uses 4:4:4 chroma, VP8 handles them natively).
    """
    extension = os.path.splitext(path)[1].lower()
    if codec is None and extension not in _CODEC_BY_EXTENSION:
        raise ValueError(f"no default codec for extension {extension!r} of {path}")
    if frames_FHWC.dtype != np.uint8 or frames_FHWC.ndim != 4 or frames_FHWC.shape[-1] != 3:
        raise ValueError(f"frames must be uint8 [F, H, W, 3], got {frames_FHWC.dtype} "
                         f"{tuple(frames_FHWC.shape)}")
    with av.open(path, "w") as container:
        stream = container.add_stream(codec or _CODEC_BY_EXTENSION[extension], rate=fps)
        stream.width, stream.height = frames_FHWC.shape[2], frames_FHWC.shape[1]
        # H.264 4:2:0 needs even sizes; 4:4:4 keeps odd sizes exact instead of padding.
        odd = frames_FHWC.shape[1] % 2 or frames_FHWC.shape[2] % 2
        stream.pix_fmt = "yuv444p" if odd and stream.codec_context.name == "libx264" else "yuv420p"
        for image_HWC in frames_FHWC:
            frame = av.VideoFrame.from_ndarray(image_HWC, format="rgb24")
            container.mux(stream.encode(frame))
        container.mux(stream.encode())


def write_audio_only(path: str, seconds: float = 1.0, sample_rate: int = 16000) -> None:
    """Write a container with a single audio stream (a sine tone) and no video."""
    with av.open(path, "w") as container:
        stream = container.add_stream("aac", rate=sample_rate)
        num_samples = int(seconds * sample_rate)
        tone = np.sin(np.arange(num_samples) * 2 * np.pi * 440 / sample_rate)
        samples = (0.2 * tone).astype(np.float32)[None, :]
        block = 1024
        for start in range(0, num_samples, block):
            frame = av.AudioFrame.from_ndarray(samples[:, start:start + block], format="fltp",
                                               layout="mono")
            frame.sample_rate = sample_rate
            frame.pts = start
            container.mux(stream.encode(frame))
        container.mux(stream.encode())
