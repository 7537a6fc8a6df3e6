"""What a training run left behind, as the sampler needs it: config, checkpoint, encoders.

A run directory holds `checkpoints/latest` (or the `--save` directory its config names)
and, inside each checkpoint, `trainer_state.json` with the run's config. The config
names the shard directory it trained on (`data`); that directory's `manifest.json`
records how the latents and text embeddings were made (`vae`, `text_encoder`: a local
checkpoint path, or a tiny built-in config and its seed, with a hash of the weights).
The sampler rebuilds the same encoder and decoder from that record and checks the hash,
so a sample is decoded by exactly the VAE whose latents the model learned.

Config lookup tolerates flat and nested config layouts (`find_field`). Torch-free, so
the sampling CLI finds a wrong run directory before it imports torch.
"""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from ..training.checkpoint import latest_checkpoint


@dataclasses.dataclass(frozen=True)
class RunFiles:
    run_dir: Path
    checkpoint: Path
    config: dict
    """The run's config as saved with the checkpoint."""
    manifest: dict | None
    """The shard manifest of the run's data (None for --data synthetic)."""
    data_dir: str | None = None
    """The shard directory the run trained on ("natural" for the in-memory animated
    photographs, None for --data synthetic)."""


def find_field(config: dict, name: str, default=None):
    """`name` from a flat config dict, or from any nested section of one."""
    if name in config:
        return config[name]
    for value in config.values():
        if isinstance(value, dict):
            found = find_field(value, name, _MISSING)
            if found is not _MISSING:
                return found
    if default is _MISSING:
        return _MISSING
    return default


_MISSING = object()


def _checkpoint_dir(run_dir: Path) -> Path:
    record = run_dir / "run.json"
    saved = None
    if record.exists():
        saved = find_field(json.loads(record.read_text()).get("config", {}), "save")
    for candidate in ([Path(saved)] if saved else []) + [run_dir / "checkpoints"]:
        if (candidate / "latest").exists():
            return candidate
    raise ValueError(f"--run-dir {run_dir}: no checkpoint (no checkpoints/latest): train "
                     "with --save-interval N or --save DIR so the run keeps its weights")


def open_run(run_dir: str) -> RunFiles:
    """Locate the newest checkpoint of `run_dir` and read its config and data manifest."""
    root = Path(run_dir)
    if not root.is_dir():
        raise ValueError(f"--run-dir {run_dir} is not a directory")
    checkpoint = latest_checkpoint(str(_checkpoint_dir(root)))
    state_path = checkpoint / "trainer_state.json"
    if not state_path.exists():
        raise ValueError(f"{checkpoint} has no trainer_state.json: not a training checkpoint")
    state = json.loads(state_path.read_text())
    config = state["config"]
    # The shards the run trained on: recorded with the checkpoint; older checkpoints
    # have only the config's (resolved) `data`.
    data = state.get("data_dir") or find_field(config, "data")  # in-memory data: no dir
    if data in (None, "synthetic"):
        return RunFiles(root, checkpoint, config, None, None)
    if data == "natural":  # a fixed, invertible encoding: no shards, no VAE to rebuild
        return RunFiles(root, checkpoint, config, None, "natural")
    return RunFiles(root, checkpoint, config, _read_manifest(data), data)


def latents_path(video_path: str) -> str:
    """Where the sampler writes the latents of `FILE.mp4`: `FILE.latents.npz`."""
    return video_path[:-len(".mp4")] + ".latents.npz"


def _read_manifest(data: str) -> dict:
    from ..data.shard_format import read_manifest
    try:
        return read_manifest(data)
    except ValueError as err:
        raise ValueError(f"the run's data directory (moved or deleted?): {err}; the sampler "
                         "needs it to rebuild the VAE and text encoder") from None


def load_encoders(manifest: dict):
    """(VideoVAE, TextEncoder) rebuilt from the manifest, weights checked against its hash."""
    from ..data.encoders import load_text_encoder, load_vae
    vae_id, text_id = manifest["vae"], manifest["text_encoder"]
    vae = load_vae(**_source_kwargs(vae_id), seed=vae_id.get("seed") or 0)
    text = load_text_encoder(**_source_kwargs(text_id), max_tokens=text_id["max_tokens"],
                             seed=text_id.get("seed") or 0)
    for what, built, recorded in (("VAE", vae, vae_id), ("text encoder", text, text_id)):
        expected = recorded.get("weights_sha256")
        if expected and built.identity()["weights_sha256"] != expected:
            raise ValueError(f"the rebuilt {what} ({recorded['source']}) does not match the "
                             "weights that made the training data (hash differs)")
    return vae, text


def _source_kwargs(identity: dict) -> dict:
    source = identity["source"]
    if source.startswith("config:"):
        return {"config": source[len("config:"):]}
    return {"path": source}
