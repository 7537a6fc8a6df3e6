"""The on-disk sample format shared by the precompute (writer) and the loader (reader).

A shard is a plain WebDataset tar: members ``<key>.latent.npy``, ``<key>.text_emb.npy``,
``<key>.text_mask.npy`` and ``<key>.json``, samples contiguous, in plan order. Tar headers
carry fixed metadata (mtime 0, uid 0, mode 0444) so a shard's bytes are a pure function of
its samples: a resumed or multi-rank run writes byte-identical shards. The manifest is
read and checked here too (`read_manifest`, `verify_shards`): numpy and stdlib only, so
the training CLI checks shards before it imports torch.

Shape legend: C = latent channels, F = latent frames, H/W = latent height/width,
S = text tokens, D = text embedding width.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import tarfile

import numpy as np

from ..utils.atomic_io import atomic_path

LATENT = "latent.npy"
TEXT_EMB = "text_emb.npy"
TEXT_MASK = "text_mask.npy"
META = "json"
FIELDS = (LATENT, TEXT_EMB, TEXT_MASK, META)
# Per-sample tar overhead: a 512-byte header per member plus padding to 512 bytes.
TAR_OVERHEAD_BYTES_PER_SAMPLE = len(FIELDS) * 1024 + 2048


class DataError(ValueError):
    """Bad data on disk (a shard, a sample, a manifest); the message names the file."""


def shard_name(index: int) -> str:
    return f"shard-{index:06d}.tar"


def npy_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, np.ascontiguousarray(array), allow_pickle=False)
    return buffer.getvalue()


def sample_members(key: str, latent_CFHW: np.ndarray, text_emb_SD: np.ndarray,
                   text_mask_S: np.ndarray, meta: dict) -> list[tuple[str, bytes]]:
    """The tar members of one sample. Keys must not contain dots (WebDataset splits there)."""
    assert "." not in key and "/" not in key, f"bad sample key {key!r}"
    assert text_mask_S.dtype == np.bool_, text_mask_S.dtype
    meta_bytes = json.dumps(meta, sort_keys=True, separators=(",", ":")).encode()
    return [(f"{key}.{LATENT}", npy_bytes(latent_CFHW)),
            (f"{key}.{TEXT_EMB}", npy_bytes(text_emb_SD)),
            (f"{key}.{TEXT_MASK}", npy_bytes(text_mask_S)),
            (f"{key}.{META}", meta_bytes)]


def write_tar(path, members: list[tuple[str, bytes]]) -> None:
    """Write ``members`` to a new tar at ``path`` (a temp path of `atomic_path`, usually)."""
    with open(path, "xb") as handle:
        with tarfile.open(fileobj=handle, mode="w", format=tarfile.USTAR_FORMAT) as archive:
            for name, payload in members:
                info = tarfile.TarInfo(name)
                info.size, info.mtime, info.mode = len(payload), 0, 0o444
                info.uid = info.gid = 0
                info.uname = info.gname = ""
                archive.addfile(info, io.BytesIO(payload))


def write_tar_atomic(path: str, members: list[tuple[str, bytes]]) -> int:
    """Write ``members`` to ``path`` atomically (temp + fsync + rename); returns the byte size."""
    with atomic_path(path) as temp:
        write_tar(temp, members)
    return os.path.getsize(path)


def member_names(keys: list[str]) -> list[str]:
    """The tar member names of samples ``keys``, in the order the writer adds them."""
    return [f"{key}.{field}" for key in keys for field in FIELDS]


def shard_problem(path: str, num_bytes: int | None = None, sha256: str | None = None,
                  names: list[str] | None = None) -> str | None:
    """Why the shard at ``path`` is not the one recorded (None: it is).

    The size is checked first (a cut-short copy, cheap), then the checksum. A record
    without them (older outputs) is checked for a complete tar holding ``names``.
    """
    if not os.path.isfile(path):
        return "missing"
    size = os.path.getsize(path)
    if num_bytes is not None and size != num_bytes:
        return f"{size} bytes, {num_bytes} recorded (cut short or replaced)"
    if sha256 is not None:
        return None if file_sha256(path) == sha256 else "sha256 differs from the record"
    if size % tarfile.RECORDSIZE:  # the writer pads the archive to whole records
        return f"{size} bytes is not a whole number of tar records (cut short)"
    try:
        with tarfile.open(path) as archive:
            found = [(info.name, info.offset_data + info.size) for info in archive]
    except (tarfile.TarError, EOFError, OSError) as err:
        return f"not a readable tar ({' '.join(str(err).split())})"
    if any(end > size for _, end in found):
        return "a member is cut short"
    if names is not None and [name for name, _ in found] != names:
        return f"holds {len(found)} members, {len(names)} recorded"
    return None


def read_manifest(root: str) -> dict:
    """The precompute's manifest.json; DataError naming the file if absent or unreadable."""
    path = os.path.join(root, "manifest.json")
    if not os.path.exists(path):
        raise DataError(f"{root} has no manifest.json: not a (finished) precompute output; "
                        "run tools/precompute_latents.py or rerun it to completion")
    try:
        with open(path) as handle:
            manifest = json.load(handle)
    except (OSError, ValueError) as err:
        raise DataError(f"{path} is not readable JSON ({err}); rerun the precompute") from None
    if not isinstance(manifest, dict) or not isinstance(manifest.get("splits"), dict):
        raise DataError(f"{path} has no 'splits' mapping: not a precompute manifest")
    return manifest


def verify_shards(root: str, manifest: dict, *, checksum: bool, part: tuple[int, int] = (0, 1),
                  progress: bool = False) -> int:
    """Check every shard named by the manifest against its recorded size (and sha256 when
    `checksum` and the manifest has one); DataError naming the first bad shard.

    `part = (i, n)` checks only every n-th shard from the i-th, so n ranks share the
    reading. Returns the number of shards checked. A shard cut short (disk full, an
    interrupted copy) fails the size check without reading it."""
    entries = [(split, shard) for split, info in sorted(manifest["splits"].items())
               for shard in info.get("shards", [])]
    mine = entries[part[0]::part[1]]
    from tqdm import tqdm
    for split, shard in tqdm(mine, desc="verify shards", unit="shard",
                             disable=not progress or not checksum):
        path = os.path.join(root, split, shard["name"])
        if not os.path.isfile(path):
            raise DataError(f"shard {path} is listed in {root}/manifest.json but missing")
        size, want = os.path.getsize(path), shard.get("bytes")
        if want is not None and size != want:
            raise DataError(f"shard {path} has {size} bytes but the manifest records {want}: "
                            "truncated or replaced; copy it again or rerun the precompute")
        if checksum and shard.get("sha256") and file_sha256(path) != shard["sha256"]:
            raise DataError(f"shard {path} does not match its sha256 in {root}/manifest.json: "
                            "corrupt; copy it again or rerun the precompute")
    return len(mine)


def file_sha256(path: str, chunk_bytes: int = 1 << 22) -> str:
    """Hex sha256 of a file's bytes (the manifest's per-shard checksum)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(chunk_bytes), b""):
            digest.update(chunk)
    return digest.hexdigest()


def decode_sample(sample: dict) -> dict:
    """A WebDataset sample (member bytes by suffix) -> numpy arrays + parsed metadata.

    Raises DataError naming the shard and the sample when a member is missing or
    unreadable, or when a tensor holds NaN/Inf (which would otherwise look like a run
    that diverged on its own)."""
    where = f"sample {sample.get('__key__')!r} in shard {sample.get('__url__')}"
    missing = [f for f in FIELDS if f not in sample]
    if missing:
        raise DataError(f"{where} lacks {missing}")
    try:
        decoded = {"key": sample["__key__"],
                   "latent": np.load(io.BytesIO(sample[LATENT]), allow_pickle=False),
                   "text_emb": np.load(io.BytesIO(sample[TEXT_EMB]), allow_pickle=False),
                   "text_mask": np.load(io.BytesIO(sample[TEXT_MASK]), allow_pickle=False),
                   "meta": json.loads(sample[META])}
    except (ValueError, OSError, EOFError) as err:
        raise DataError(f"{where} is corrupt: {err}") from None
    for name in ("latent", "text_emb"):
        array = decoded[name]
        if array.dtype.kind == "f" and not np.isfinite(array).all():
            bad = int(np.size(array) - np.isfinite(array).sum())
            raise DataError(f"{where}: {name} holds {bad} non-finite values (NaN/Inf); "
                            "recompute or drop this sample")
    return decoded
