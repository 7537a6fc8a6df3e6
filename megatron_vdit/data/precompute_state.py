"""The precompute's output directory: path checks, resume bookkeeping, undoing a failed start.

``<output>/_state`` holds ``args.json`` (the content args that made the shards),
``probe.json`` (cached probe outcomes) and one record per finished shard
(``<split>/shard-XXXXXX.json``: planned clips, sample keys, errors, and the tar's byte
size and sha256). The rules, in the order a run meets them:

- paths are checked before anything is created (:func:`check_paths`);
- different args over an output holding finished shards are refused; over one without
  (a failed start), the old state is discarded, since it describes nothing
  (:func:`args_state`);
- a shard counts as finished only when its tar still matches its record (size and
  checksum), so a cut-short or replaced shard is redone (:func:`shard_problem`);
- a run refused after it created directories removes them again (:func:`undo_fresh`).
"""
from __future__ import annotations

import json
import os
import shutil

from megatron_vdit.data import shard_format
from megatron_vdit.data.sources import SPLITS
from megatron_vdit.utils.atomic_io import write_json_atomic

STATE_DIR = "_state"


def tar_path(output: str, split: str, index: int) -> str:
    return os.path.join(output, split, shard_format.shard_name(index))


def record_path(output: str, split: str, index: int) -> str:
    return os.path.join(output, STATE_DIR, split, shard_format.shard_name(index) + ".json")


def read_json(path: str):
    """The parsed file, or None when it is missing or unreadable (a torn copy)."""
    try:
        with open(path, encoding="utf-8") as handle:
            return json.load(handle)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None


def check_paths(cfg) -> None:
    """Every path flag, before any directory is made or model loaded (``ValueError``)."""
    output = os.path.abspath(cfg.output)
    for given in cfg.inputs:
        path = os.path.abspath(given)
        if not os.path.exists(path):
            raise ValueError(f"--input {given}: no such file or directory")
        if not (os.path.isdir(path) or (os.path.isfile(path) and path.endswith(".tar"))):
            raise ValueError(f"--input {given} is neither a directory nor a .tar file")
        if path == output:
            raise ValueError(f"--output {cfg.output} is also an --input; write the shards "
                             "to their own directory")
    if cfg.captions is not None and not os.path.isfile(cfg.captions):
        raise ValueError(f"--captions {cfg.captions}: no such file")
    for flag, path in (("--vae-path", cfg.vae_path),
                       ("--text-encoder-path", cfg.text_encoder_path)):
        if path is not None and not os.path.isdir(path):
            raise ValueError(f"{flag} {path}: not a directory")
    if os.path.exists(output) and not os.path.isdir(output):
        raise ValueError(f"--output {cfg.output} exists and is not a directory")
    parent = os.path.dirname(output)
    while not os.path.exists(parent):
        parent = os.path.dirname(parent)
    if not os.path.isdir(parent):
        raise ValueError(f"--output {cfg.output}: {parent} is not a directory")


def finished_tars(output: str) -> list[str]:
    """Published shards (``<split>/shard-*.tar``) in ``output``."""
    found = []
    for split in SPLITS:
        directory = os.path.join(output, split)
        if os.path.isdir(directory):
            found += [f"{split}/{n}" for n in sorted(os.listdir(directory))
                      if n.startswith("shard-") and n.endswith(".tar")]
    return found


def args_state(output: str, wanted: dict) -> str:
    """``"same"``, ``"new"`` (no args recorded) or ``"stale"`` (other args, no shards).

    Raises ``ValueError`` when other args made shards that exist: they are a result.
    """
    path = os.path.join(output, STATE_DIR, "args.json")
    if not os.path.exists(path):
        return "new"
    found = read_json(path)
    if found == wanted:
        return "same"
    shards = finished_tars(output)
    if not shards:
        return "stale"
    if not isinstance(found, dict):
        raise ValueError(f"--output {output} holds {len(shards)} shards but its "
                         f"{STATE_DIR}/args.json is unreadable, so which args made them is "
                         "unknown; use a new output directory")
    changed = sorted(k for k in set(found) | set(wanted) if found.get(k) != wanted.get(k))
    raise ValueError(f"--output {output} holds shards made with different args "
                     f"(changed: {changed}); use a new output directory")


def record_args(output: str, wanted: dict, state: str) -> None:
    """Write ``args.json``; stale state (probe cache, shard records) goes first."""
    state_dir = os.path.join(output, STATE_DIR)
    if state == "stale":
        for name in ["probe.json", *SPLITS]:
            path = os.path.join(state_dir, name)
            if os.path.isdir(path):
                shutil.rmtree(path)
                os.makedirs(path)
            elif os.path.exists(path):
                os.remove(path)
    if state != "same":
        write_json_atomic(os.path.join(state_dir, "args.json"), wanted, sort_keys=True)


def shard_problem(output: str, split: str, index: int, item_ids: list) -> str | None:
    """Why the planned shard is not finished (None: finished and intact).

    Records of older runs lack ``bytes``/``sha256``: their tar is checked for the
    recorded members and the record gains both fields, so later runs compare checksums.
    """
    record_file = record_path(output, split, index)
    record = read_json(record_file)
    if not isinstance(record, dict) or record.get("items") != item_ids:
        return "not written by this plan"
    tar = tar_path(output, split, index)
    names = shard_format.member_names(record.get("keys", []))
    problem = shard_format.shard_problem(tar, record.get("bytes"), record.get("sha256"), names)
    if problem is None and "sha256" not in record:
        record["bytes"], record["sha256"] = os.path.getsize(tar), shard_format.file_sha256(tar)
        write_json_atomic(record_file, record, sort_keys=True)
    return problem


def fresh_dirs(output: str) -> list[str]:
    """The directories a run will create, outermost first (for :func:`undo_fresh`)."""
    candidates = [output, os.path.join(output, STATE_DIR)]
    candidates += [os.path.join(output, s) for s in SPLITS]
    candidates += [os.path.join(output, STATE_DIR, s) for s in SPLITS]
    return [d for d in candidates if not os.path.exists(d)]


def undo_fresh(output: str, created: list[str]) -> None:
    """Remove what a refused run created, unless a shard was published meanwhile."""
    if finished_tars(output):
        return
    for directory in created:
        if os.path.isdir(directory):
            shutil.rmtree(directory)
