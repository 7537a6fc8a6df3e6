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


def _csv_records(captions_file: str, handle) -> list[tuple[int, dict]]:
    """(line, row) of a CSV with a header; strict: a row must have the header's fields."""
    reader = csv.reader(handle, strict=True)
    try:
        header = next(reader, None)
        if header is None:
            raise ValueError(f"--captions {captions_file} is empty (expected a header row "
                             "with a path and a caption column)")
        for fields, what in ((_PATH_FIELDS, "path"), (_CAPTION_FIELDS, "caption")):
            if not set(fields) & set(header):
                raise ValueError(f"--captions {captions_file}:1: the header {header} has no "
                                 f"{what} column (one of {fields})")
        records = []
        for row in reader:
            if not row:
                continue  # blank line
            where = f"--captions {captions_file}:{reader.line_num}"
            if len(row) > len(header):
                raise ValueError(f"{where}: {len(row)} fields but the header has "
                                 f"{len(header)}; quote captions that contain commas")
            if len(row) < len(header):
                raise ValueError(f"{where}: {len(row)} fields but the header has "
                                 f"{len(header)} ({', '.join(header)})")
            records.append((reader.line_num, dict(zip(header, row))))
    except csv.Error as err:
        raise ValueError(f"--captions {captions_file}:{reader.line_num}: not valid CSV "
                         f"({err})") from err
    return records


def _jsonl_records(captions_file: str, handle) -> list[tuple[int, dict]]:
    records = []
    for line_number, line in enumerate(handle, start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            raise ValueError(f"--captions {captions_file}:{line_number}: not valid JSON "
                             f"({err})") from err
        if not isinstance(record, dict):
            raise ValueError(f"--captions {captions_file}:{line_number}: expected an object "
                             f"with path and caption, got {type(record).__name__}")
        records.append((line_number, record))
    return records


def _read_caption_table(captions_file: str) -> list[dict]:
    """Rows ``{"path", "caption", "split", "line"}`` of a CSV or JSONL captions file.

    Strict: a malformed row (bad quoting, a field too many or too few, no path, no or an
    empty caption, an unknown split, a path given twice) is a ``ValueError`` naming the
    file and line, because it would otherwise mis-caption or drop a video silently.
    """
    if not captions_file.endswith((".csv", ".jsonl")):
        raise ValueError(f"--captions {captions_file}: expected a .csv or .jsonl file")
    try:
        with open(captions_file, encoding="utf-8", newline="") as handle:
            read = _jsonl_records if captions_file.endswith(".jsonl") else _csv_records
            records = read(captions_file, handle)
    except UnicodeDecodeError as err:
        raise ValueError(f"--captions {captions_file}: not UTF-8 ({err})") from err
    rows, seen = [], {}
    for line_number, record in records:
        where = f"--captions {captions_file}:{line_number}"
        path = next((record[k] for k in _PATH_FIELDS if record.get(k)), None)
        caption = next((record[k] for k in _CAPTION_FIELDS if k in record), None)
        split = record.get("split") or None
        if not isinstance(path, str):
            raise ValueError(f"{where}: no path (a field named one of {_PATH_FIELDS})")
        problem = _caption_problem(caption)
        if problem:
            raise ValueError(f"{where}: {path}: {problem}")
        if split is not None and split not in SPLITS:
            raise ValueError(f"{where}: {path}: split {split!r} is not one of {SPLITS}")
        if path in seen:
            raise ValueError(f"{where}: {path} was already captioned on line {seen[path]}")
        seen[path] = line_number
        rows.append({"path": path, "caption": caption, "split": split, "line": line_number})
    return rows


def _caption_problem(caption) -> str | None:
    if caption is None:
        return "no caption"
    if not isinstance(caption, str):
        return f"caption is not text: {type(caption).__name__}"
    if not caption.strip():
        return "empty caption"
    return None


def _sidecar_caption(video_path: str) -> tuple[str | None, str | None]:
    """(caption, problem) from ``<stem>.txt`` next to the video."""
    sidecar = os.path.splitext(video_path)[0] + ".txt"
    if not os.path.exists(sidecar):
        return None, "no caption (no sidecar .txt)"
    try:
        with open(sidecar, encoding="utf-8") as handle:
            caption = handle.read().strip()
    except UnicodeDecodeError as err:
        return None, f"caption file {os.path.basename(sidecar)} is not UTF-8: {err}"
    return caption, _caption_problem(caption)


def _tar_members(tar_path: str) -> tuple[list[tarfile.TarInfo], str | None]:
    """The complete file members of a tar, and why reading stopped early (None: it didn't).

    A cut-short or corrupt tar keeps the members that lie wholly before the damage.
    """
    members, problem = [], None
    size = os.path.getsize(tar_path)
    try:
        with tarfile.open(tar_path) as archive:
            for info in archive:
                if info.offset_data + info.size > size:
                    problem = f"cut short inside {info.name}"
                    break
                members.append(info)
    except (tarfile.TarError, EOFError) as err:
        problem = " ".join(str(err).split()) or type(err).__name__
    if problem is None and size % tarfile.RECORDSIZE:  # tar writers pad to whole records
        problem = f"{size} bytes is not a whole number of tar records: cut short?"
    return members, problem


def _tar_groups(members: list[tarfile.TarInfo]) -> dict[str, dict[str, tarfile.TarInfo]]:
    """WebDataset grouping: key = member path up to the first dot of its basename."""
    groups: dict[str, dict[str, tarfile.TarInfo]] = {}
    for info in members:
        if not info.isfile():
            continue
        directory, base = os.path.split(info.name)
        if "." not in base or base.startswith("."):
            continue
        stem, extension = base.split(".", 1)
        groups.setdefault(os.path.join(directory, stem), {})[extension.lower()] = info
    return groups


def _member_text(tar_path: str, info: tarfile.TarInfo) -> bytes:
    with open(tar_path, "rb") as handle:
        handle.seek(info.offset_data)
        return handle.read(info.size)


def _tar_sources(tar_path: str) -> tuple[list[Source], list[dict]]:
    sources, errors = [], []
    tar_name = os.path.basename(tar_path)
    video_extensions = {e.lstrip(".") for e in VIDEO_EXTENSIONS}
    members, damage = _tar_members(tar_path)
    if damage:
        errors.append(_error(tar_name, f"unreadable tar after {len(members)} members "
                                       f"({damage}); the members before it are used"))
    for key, group in sorted(_tar_groups(members).items()):
        source_id = f"{tar_name}/{key}"
        videos = sorted(set(group) & video_extensions)
        if not videos:
            errors.append(_error(source_id, f"no video member (has: {sorted(group)})"))
            continue
        caption, problem = None, _caption_problem(None)
        try:
            if "txt" in group:
                caption = _member_text(tar_path, group["txt"]).decode("utf-8").strip()
            elif "json" in group:
                meta = json.loads(_member_text(tar_path, group["json"]))
                caption = (next((meta[k] for k in _CAPTION_FIELDS if k in meta), None)
                           if isinstance(meta, dict) else None)
            problem = _caption_problem(caption)
        except (UnicodeDecodeError, json.JSONDecodeError) as err:
            problem = f"unreadable caption: {type(err).__name__}: {err}"
        if problem:
            errors.append(_error(source_id, problem))
        else:
            video = group[videos[0]]
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
    table = [] if captions_file is None else _read_caption_table(captions_file)
    by_path = {row["path"]: row for row in table}
    errors: list[dict] = []
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
                problem = None if row else f"no caption (not in {captions_file})"
            if problem:
                errors.append(_error(source_id, problem))
            else:
                sources.append(Source(source_id, video_path, None, caption.strip(), split))
        for tar_path in tars:
            tar_found, tar_errors = _tar_sources(tar_path)
            sources += tar_found
            errors += tar_errors
    unused = sorted(set(by_path) - used_rows, key=lambda p: by_path[p]["line"])
    if unused:
        first = by_path[unused[0]]
        more = f" (and {len(unused) - 1} more rows)" if len(unused) > 1 else ""
        raise ValueError(f"--captions {captions_file}:{first['line']}: {first['path']} is not "
                         f"a video under any --input (paths are relative to their input "
                         f"directory){more}")
    counts = collections.Counter(s.source_id for s in sources)
    duplicates = sorted(i for i, n in counts.items() if n > 1)
    if duplicates:
        raise ValueError(f"inputs give the same source id more than once: {duplicates[:5]}")
    return sorted(sources, key=lambda s: s.source_id), errors
