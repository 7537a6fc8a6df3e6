"""The frozen encoders of the precompute: a diffusers video VAE and a T5-family text encoder.

Either comes from a local checkpoint directory (``from_pretrained(..., local_files_only=True)``,
never a download) or from a tiny built-in config with seeded random weights, which the
tests and the embedded default use. Tiny weights are a pure function of the seed, so a
rerun (or another rank) produces identical bytes.

Latents leave `VideoVAE.encode` already normalised the way the matching pipeline does it
before the DiT sees them: Wan ``(mu - latents_mean) / latents_std`` per channel,
CogVideoX ``(mu - shift_factor) * scaling_factor``. The posterior mode (mean) is stored,
not a sample, so shards are deterministic; `identity()` records both choices.

Shape legend: B = batch, C = channels, F = frames, H = height, W = width,
S = text tokens (padded), D = text embedding width.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os

import torch

# Defined with the precompute's arguments, which the CLI checks before importing torch.
from megatron_vdit.data.precompute_config import TEXT_ENCODER_CONFIGS, VAE_CONFIGS  # noqa: F401
from megatron_vdit.data.precompute_config import (TINY_COGVIDEOX, TINY_WAN, vae_compression,
                                                  vae_latent_shape)

# Tiny text encoder: byte-level tokenizer (ByT5: 256 bytes + 3 specials + 125 extra ids,
# no vocab file), 64-wide embeddings.
_TINY_T5 = dict(vocab_size=384, d_model=64, d_kv=16, num_heads=4, d_ff=128, num_layers=2,
                relative_attention_num_buckets=8, dropout_rate=0.0)


@contextlib.contextmanager
def _seeded(seed: int):
    """Seed the global RNG for weight init without disturbing the caller's RNG stream."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


def _weights_sha256(model: torch.nn.Module) -> str:
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().float().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def _json_config(config) -> dict:
    """A diffusers/transformers config as plain JSON (tuples become lists, private keys dropped)."""
    as_dict = config.to_dict() if hasattr(config, "to_dict") else dict(config)
    return json.loads(json.dumps({k: v for k, v in as_dict.items() if not k.startswith("_")},
                                 default=str))


class VideoVAE:
    """A diffusers video autoencoder (Wan or CogVideoX) with its latent normalisation."""

    def __init__(self, model: torch.nn.Module, source: str, seed: int | None):
        from diffusers import AutoencoderKLCogVideoX, AutoencoderKLWan
        self.model = model.eval().requires_grad_(False)
        self.source = source
        self.seed = seed
        config = model.config
        if isinstance(model, AutoencoderKLWan):
            self.kind = "wan"
            self.latent_channels = config.z_dim
            self._mean_C = torch.tensor(config.latents_mean, dtype=torch.float32)
            self._std_C = torch.tensor(config.latents_std, dtype=torch.float32)
        elif isinstance(model, AutoencoderKLCogVideoX):
            self.kind = "cogvideox"
            self.latent_channels = config.latent_channels
            self._scale = float(config.scaling_factor)
            self._shift = float(config.shift_factor or 0.0)
        else:
            raise ValueError(f"unsupported VAE class {type(model).__name__} from {source}; "
                             "expected AutoencoderKLWan or AutoencoderKLCogVideoX")
        self.temporal_ratio, self.spatial_ratio = vae_compression(self.kind, dict(config))
        if self.kind == "cogvideox":
            # Tiling changes numerics with input size; clips are small enough without it.
            model.disable_tiling()
        self.scaling_type = "wan_mean_std" if self.kind == "wan" else "scaling_factor"
        self._identity = None

    def latent_shape(self, num_frames: int, height: int, width: int) -> tuple[int, int, int, int]:
        """``(C, F', H', W')`` of one clip; `ValueError` if the VAE cannot take these dims
        (`precompute_config.vae_latent_shape`, which the precompute's preflight also runs
        before loading anything)."""
        return (self.latent_channels, *vae_latent_shape(
            self.kind, self.temporal_ratio, self.spatial_ratio, num_frames, height, width))

    @torch.no_grad()
    def encode(self, video_BCFHW: torch.Tensor) -> torch.Tensor:
        """[-1, 1] video ``[B, 3, F, H, W]`` -> normalised latent ``[B, C, F', H', W']`` float32."""
        param = next(self.model.parameters())
        posterior = self.model.encode(video_BCFHW.to(param.device, param.dtype)).latent_dist
        mu_BCFHW = posterior.mode().float().cpu()
        if self.kind == "wan":
            shape = (1, -1, 1, 1, 1)
            return (mu_BCFHW - self._mean_C.view(shape)) / self._std_C.view(shape)
        return (mu_BCFHW - self._shift) * self._scale

    def identity(self) -> dict:
        """What produced the latents and how they were normalised (goes into the manifest)."""
        if self._identity is None:
            self._identity = self._describe()
        return self._identity

    def _describe(self) -> dict:
        scaling = ({"type": self.scaling_type, "latents_mean": self._mean_C.tolist(),
                    "latents_std": self._std_C.tolist(),
                    "formula": "(mu - latents_mean) / latents_std"}
                   if self.kind == "wan" else
                   {"type": self.scaling_type, "scaling_factor": self._scale,
                    "shift_factor": self._shift, "formula": "(mu - shift_factor) * scaling_factor"})
        return {"class": type(self.model).__name__, "kind": self.kind, "source": self.source,
                "seed": self.seed, "config": _json_config(self.model.config),
                "weights_sha256": _weights_sha256(self.model) if self.seed is not None else None,
                "latent": "posterior mode", "scaling": scaling,
                "temporal_ratio": self.temporal_ratio, "spatial_ratio": self.spatial_ratio}


def load_vae(path: str | None = None, config: str | None = None, seed: int = 0,
             device: str = "cpu", dtype: torch.dtype = torch.float32) -> VideoVAE:
    """A local checkpoint (``path``: a VAE dir or a pipeline dir with ``vae/``) or a tiny config."""
    from diffusers import AutoencoderKLCogVideoX, AutoencoderKLWan
    if (path is None) == (config is None):
        raise ValueError(f"give exactly one of vae path ({path!r}) or vae config ({config!r})")
    if config is not None:
        if config not in VAE_CONFIGS:
            raise ValueError(f"unknown VAE config {config!r}; choose from {VAE_CONFIGS}")
        with _seeded(seed):
            model = (AutoencoderKLCogVideoX(**TINY_COGVIDEOX) if config == "tiny-cogvideox"
                     else AutoencoderKLWan(**TINY_WAN))
        if dtype != torch.float32:
            model = model.to(dtype=dtype)
        return VideoVAE(model.to(device), source=f"config:{config}", seed=seed)
    if os.path.isfile(os.path.join(path, "vae", "config.json")):
        path = os.path.join(path, "vae")
    config_path = os.path.join(path, "config.json")
    if not os.path.isfile(config_path):
        raise ValueError(f"--vae-path {path} has no config.json (nor vae/config.json)")
    with open(config_path) as handle:
        class_name = json.load(handle).get("_class_name", "")
    classes = {"AutoencoderKLWan": AutoencoderKLWan,
               "AutoencoderKLCogVideoX": AutoencoderKLCogVideoX}
    if class_name not in classes:
        raise ValueError(f"--vae-path {path}: _class_name {class_name!r} is not one of "
                         f"{list(classes)}")
    model = classes[class_name].from_pretrained(path, local_files_only=True, torch_dtype=dtype)
    return VideoVAE(model.to(device), source=os.path.abspath(path), seed=None)


class TextEncoder:
    """Tokenizer + T5-family encoder producing padded embeddings and a mask.

    Padding positions are zeroed (as the Wan pipeline does) so stored bytes do not depend
    on what the encoder computes for padding.
    """

    def __init__(self, tokenizer, model: torch.nn.Module, max_tokens: int, source: str,
                 seed: int | None):
        if max_tokens < 1:
            raise ValueError(f"text tokens must be >= 1, got {max_tokens}")
        self.tokenizer, self.model = tokenizer, model.eval().requires_grad_(False)
        self.max_tokens, self.source, self.seed = max_tokens, source, seed
        self.embed_dim = model.config.d_model

    @torch.no_grad()
    def encode(self, captions: list[str]) -> tuple[torch.Tensor, torch.Tensor, list[bool]]:
        """Captions -> (``emb_BSD`` float32, ``mask_BS`` bool, truncated flag per caption)."""
        full_lengths = [len(ids) for ids in self.tokenizer(captions)["input_ids"]]
        batch = self.tokenizer(captions, padding="max_length", truncation=True,
                               max_length=self.max_tokens, return_tensors="pt")
        param = next(self.model.parameters())
        mask_BS = batch["attention_mask"].bool()
        emb_BSD = self.model(input_ids=batch["input_ids"].to(param.device),
                             attention_mask=batch["attention_mask"].to(param.device)
                             ).last_hidden_state.float().cpu()
        emb_BSD = emb_BSD * mask_BS[..., None]
        return emb_BSD, mask_BS, [n > self.max_tokens for n in full_lengths]

    def identity(self) -> dict:
        return {"class": type(self.model).__name__, "tokenizer": type(self.tokenizer).__name__,
                "source": self.source, "seed": self.seed, "max_tokens": self.max_tokens,
                "embed_dim": self.embed_dim, "config": _json_config(self.model.config),
                "weights_sha256": _weights_sha256(self.model) if self.seed is not None else None,
                "padding": "zeros where mask is False"}


def _load_tokenizer(path: str):
    """The class named in ``tokenizer_config.json`` when transformers has it, else AutoTokenizer.

    AutoTokenizer would route a byte-level (ByT5) tokenizer saved next to a UMT5 config
    to the sentencepiece tokenizer of the model type; honouring the saved class avoids that.
    """
    import transformers
    config_path = os.path.join(path, "tokenizer_config.json")
    class_name = None
    if os.path.isfile(config_path):
        with open(config_path) as handle:
            class_name = json.load(handle).get("tokenizer_class")
    tokenizer_class = getattr(transformers, class_name or "", None) or transformers.AutoTokenizer
    return tokenizer_class.from_pretrained(path, local_files_only=True)


def load_text_encoder(path: str | None = None, config: str | None = None, max_tokens: int = 128,
                      seed: int = 0, device: str = "cpu",
                      dtype: torch.dtype = torch.float32) -> TextEncoder:
    """A local T5/UMT5 checkpoint (``path``, or a pipeline dir with ``text_encoder/`` and
    ``tokenizer/``) or a tiny config with a byte-level tokenizer."""
    from transformers import (AutoConfig, ByT5Tokenizer, MT5EncoderModel,
                              T5Config, T5EncoderModel, UMT5Config,
                              UMT5EncoderModel)
    if (path is None) == (config is None):
        raise ValueError(f"give exactly one of text encoder path ({path!r}) or config ({config!r})")
    if config is not None:
        if config not in TEXT_ENCODER_CONFIGS:
            raise ValueError(f"unknown text encoder config {config!r}; choose from "
                             f"{TEXT_ENCODER_CONFIGS}")
        with _seeded(seed):
            model = (T5EncoderModel(T5Config(**_TINY_T5)) if config == "tiny-t5"
                     else UMT5EncoderModel(UMT5Config(**_TINY_T5)))
        return TextEncoder(ByT5Tokenizer(), model.to(device, dtype), max_tokens,
                           source=f"config:{config}", seed=seed)
    model_path, tokenizer_path = path, path
    if os.path.isdir(os.path.join(path, "text_encoder")):
        model_path = os.path.join(path, "text_encoder")
        tokenizer_path = os.path.join(path, "tokenizer")
    model_type = AutoConfig.from_pretrained(model_path, local_files_only=True).model_type
    classes = {"t5": T5EncoderModel, "umt5": UMT5EncoderModel, "mt5": MT5EncoderModel}
    if model_type not in classes:
        raise ValueError(f"--text-encoder-path {path}: model_type {model_type!r} is not one of "
                         f"{list(classes)}")
    tokenizer = _load_tokenizer(tokenizer_path)
    model = classes[model_type].from_pretrained(model_path, local_files_only=True, dtype=dtype)
    return TextEncoder(tokenizer, model.to(device), max_tokens,
                       source=os.path.abspath(path), seed=None)
