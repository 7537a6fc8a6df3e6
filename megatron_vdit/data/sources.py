"""Input discovery for the precompute: video files or WebDataset tars of raw videos, plus captions.

A `Source` is one input video with its caption. Its ``source_id`` is stable across
machines and reruns (a path relative to the input directory, or ``<tar name>/<key>``),
and everything downstream (split, shard plan, sample keys) is a pure function of it.

Captions come from a CSV/JSONL file (``--captions``; columns/keys ``path`` + ``caption``,
optional ``split``) or, without one, from a sidecar ``<stem>.txt`` next to each video
(for tars: the sample's ``txt`` member, or ``caption``/``text`` in its ``json``).
Every input that cannot be used is returned as an error record ``{"path", "reason"}``
rather than dropped.
"""
from __future__ import annotations

import collections
import csv
import dataclasses
import hashlib
import json
import os
import tarfile

from megatron_vdit.data.video_io import VIDEO_EXTENSIONS

SPLITS = ("train", "val")
_PATH_FIELDS = ("path", "file", "video", "filename")
_CAPTION_FIELDS = ("caption", "text", "prompt")
# Files that may sit next to videos without being an input problem.
_SIDE_EXTENSIONS = (".txt", ".csv", ".jsonl", ".json")


@dataclasses.dataclass(frozen=True)
class Source:
    """One input video. ``member`` is set for videos inside an input tar."""

    source_id: str
    path: str
    member: str | None = None
    caption: str | None = None
    split: str | None = None
    member_offset: int = 0
    """Byte offset of the member's data in the tar (read by seeking, not by rescanning)."""
    member_size: int = 0


def split_of(source: Source, val_fraction: float) -> str:
    """Explicit split from the captions file, else a hash of the id (stable, no RNG).

    Hashing whole sources keeps every clip of a video in one split.
    """
    if source.split is not None:
        return source.split
    digest = hashlib.sha1(source.source_id.encode()).hexdigest()
    return "val" if int(digest[:8], 16) / 2 ** 32 < val_fraction else "train"


def read_video_bytes(source: Source) -> str | bytes:
    """What `video_io` opens: the file path, or the member's bytes for tar inputs."""
    if source.member is None:
        return source.path
    with open(source.path, "rb") as handle:
        handle.seek(source.member_offset)
        payload = handle.read(source.member_size)
    assert len(payload) == source.member_size, f"{source.path} shrank under {source.member}"
    return payload


def _error(path: str, reason: str) -> dict:
    return {"path": path, "reason": reason}


def _read_caption_table(captions_file: str) -> tuple[list[dict], list[dict]]:
    """Rows ``{"path", "caption", "split"}`` of a CSV or JSONL captions file, and row errors."""
    rows, errors = [], []
    if captions_file.endswith(".jsonl"):
        with open(captions_file, encoding="utf-8") as handle:
            records = []
            for line_number, line in enumerate(handle, start=1):
                if not line.strip():
                    continue
                try:
                    records.append((line_number, json.loads(line)))
                except json.JSONDecodeError as err:
                    errors.append(_error(f"{captions_file}:{line_number}", f"bad JSON: {err}"))
    elif captions_file.endswith(".csv"):
        with open(captions_file, encoding="utf-8", newline="") as handle:
            records = list(enumerate(csv.DictReader(handle), start=2))
    else:
        raise ValueError(f"--captions {captions_file}: expected a .csv or .jsonl file")
    for line_number, record in records:
        path = next((record[k] for k in _PATH_FIELDS if record.get(k)), None)
        caption = next((record[k] for k in _CAPTION_FIELDS if k in record), None)
        split = record.get("split") or None
        where = f"{captions_file}:{line_number}"
        if not isinstance(record, dict) or path is None:
            errors.append(_error(where, f"no path field (one of {_PATH_FIELDS})"))
        elif split is not None and split not in SPLITS:
            errors.append(_error(where, f"split {split!r} is not one of {SPLITS}"))
        else:
            rows.append({"path": str(path), "caption": caption, "split": split})
    return rows, errors


def _caption_problem(caption) -> str | None:
    if caption is None:
        return "no caption (no sidecar .txt and not in the captions file)"
    if not isinstance(caption, str):
        return f"caption is not text: {type(caption).__name__}"
    if not caption.strip():
        return "empty caption"
    return None


def _sidecar_caption(video_path: str) -> tuple[str | None, str | None]:
    """(caption, problem) from ``<stem>.txt`` next to the video."""
    sidecar = os.path.splitext(video_path)[0] + ".txt"
    if not os.path.exists(sidecar):
        return None, _caption_problem(None)
    try:
        with open(sidecar, encoding="utf-8") as handle:
            caption = handle.read().strip()
    except UnicodeDecodeError as err:
        return None, f"caption file {os.path.basename(sidecar)} is not UTF-8: {err}"
    return caption, _caption_problem(caption)


def _tar_groups(tar_path: str) -> dict[str, dict[str, tarfile.TarInfo]]:
    """WebDataset grouping: key = member path up to the first dot of its basename."""
    groups: dict[str, dict[str, tarfile.TarInfo]] = {}
    with tarfile.open(tar_path) as archive:
        for info in archive.getmembers():
            if not info.isfile():
                continue
            directory, base = os.path.split(info.name)
            if "." not in base or base.startswith("."):
                continue
            stem, extension = base.split(".", 1)
            groups.setdefault(os.path.join(directory, stem), {})[extension.lower()] = info
    return groups


def _tar_sources(tar_path: str) -> tuple[list[Source], list[dict]]:
    sources, errors = [], []
    tar_name = os.path.basename(tar_path)
    video_extensions = {e.lstrip(".") for e in VIDEO_EXTENSIONS}
    with tarfile.open(tar_path) as archive:
        for key, members in sorted(_tar_groups(tar_path).items()):
            source_id = f"{tar_name}/{key}"
            videos = sorted(set(members) & video_extensions)
            if not videos:
                errors.append(_error(source_id, f"no video member (has: {sorted(members)})"))
                continue
            caption, problem = None, _caption_problem(None)
            try:
                if "txt" in members:
                    caption = archive.extractfile(members["txt"]).read().decode("utf-8").strip()
                elif "json" in members:
                    meta = json.loads(archive.extractfile(members["json"]).read())
                    caption = next((meta[k] for k in _CAPTION_FIELDS if k in meta), None)
                problem = _caption_problem(caption)
            except (UnicodeDecodeError, json.JSONDecodeError) as err:
                problem = f"unreadable caption: {type(err).__name__}: {err}"
            if problem:
                errors.append(_error(source_id, problem))
            else:
                video = members[videos[0]]
                sources.append(Source(source_id, tar_path, video.name, caption,
                                      member_offset=video.offset_data, member_size=video.size))
    return sources, errors


def _directory_files(root: str, skip_dir: str | None) -> tuple[list[str], list[str], list[dict]]:
    """(video files, tar files, errors for unknown files) under ``root``, sorted."""
    videos, tars, errors = [], [], []
    for directory, subdirs, names in os.walk(root):
        # Never read our own output back as input (an output dir inside the input dir).
        subdirs[:] = sorted(d for d in subdirs if skip_dir is None or
                            os.path.abspath(os.path.join(directory, d)) != skip_dir)
        for name in sorted(names):
            path = os.path.join(directory, name)
            extension = os.path.splitext(name)[1].lower()
            if name.startswith("."):
                continue
            if extension in VIDEO_EXTENSIONS:
                videos.append(path)
            elif extension == ".tar":
                tars.append(path)
            elif extension not in _SIDE_EXTENSIONS:
                errors.append(_error(os.path.relpath(path, root),
                                     f"not a video file (extension {extension or 'none'!r})"))
    return videos, tars, errors


def discover_sources(inputs: list[str], captions_file: str | None = None,
                     output_dir: str | None = None) -> tuple[list[Source], list[dict]]:
    """All usable sources (sorted by id) and error records for every unusable input.

    ``inputs`` are directories (searched recursively for videos and tars, skipping
    ``output_dir``) or tar files.
    Video paths in the captions file are relative to their input directory; tar inputs
    always take captions from their own ``txt``/``json`` members.
    """
    table, errors = ([], []) if captions_file is None else _read_caption_table(captions_file)
    by_path = {row["path"]: row for row in table}
    used_rows: set[str] = set()
    sources: list[Source] = []
    for root in inputs:
        if os.path.isfile(root) and root.endswith(".tar"):
            videos, tars, found_errors = [], [root], []
            root = os.path.dirname(root)
        elif os.path.isdir(root):
            videos, tars, found_errors = _directory_files(
                root, os.path.abspath(output_dir) if output_dir else None)
        else:
            raise ValueError(f"--input {root} is neither a directory nor a .tar file")
        errors += found_errors
        for video_path in videos:
            source_id = os.path.relpath(video_path, root).replace(os.sep, "/")
            if captions_file is None:
                caption, problem = _sidecar_caption(video_path)
                split = None
            else:
                row = by_path.get(source_id, {})
                used_rows.add(source_id)
                caption, split = row.get("caption"), row.get("split")
                problem = _caption_problem(caption)
            if problem:
                errors.append(_error(source_id, problem))
            else:
                sources.append(Source(source_id, video_path, None, caption.strip(), split))
        for tar_path in tars:
            tar_found, tar_errors = _tar_sources(tar_path)
            sources += tar_found
            errors += tar_errors
    for path in sorted(set(by_path) - used_rows):
        errors.append(_error(path, f"listed in {os.path.basename(captions_file)} but not found"))
    counts = collections.Counter(s.source_id for s in sources)
    duplicates = sorted(i for i, n in counts.items() if n > 1)
    if duplicates:
        raise ValueError(f"inputs give the same source id more than once: {duplicates[:5]}")
    return sorted(sources, key=lambda s: s.source_id), errors
