"""Generate videos from a trained run: prompts -> latents (any TP/CP layout) -> mp4.

`Generator` builds this rank's share of the model with the run's weights (EMA when the
checkpoint has them) under a parallel layout, exactly as training builds it, minus
FSDP and the pipeline (inference keeps whole weights per TP shard). Every rank runs the
same sampler on the same full prediction (the model's edges gather tokens over CP and
TP), so the sampler's arithmetic is identical on all ranks and to one process;
only rank 0 decodes and writes.

Shape legend: B prompts, C channels, F/H/W latent frames/height/width, X text tokens,
T text width.
"""
from __future__ import annotations

import dataclasses
import json

import numpy as np
import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp

from ..diffusion.guidance import null_caption
from ..diffusion.objectives import DiffusionObjective
from ..diffusion.samplers import combine_guidance, predict_x0_eps, sample
from ..models.config import VDiTConfig, validate_model_config
from ..parallel.checkpoint import saved_keys
from ..parallel.layout import ParallelLayout, build_parallel_groups
from ..parallel.parallelize import build_parallel_model
from ..parallel.tensor_parallel import param_role
from ..utils.atomic_io import atomic_path
from .run_files import RunFiles, find_field, latents_path, load_encoders

FPS = 8


@dataclasses.dataclass(frozen=True)
class SampleOptions:
    sampler: str = "ddim"
    num_steps: int = 50
    guidance_scale: float = 1.0
    seed: int = 0
    flow_shift: float | None = None
    """None: the run's training shift (1 when it had none)."""
    clip_x0: bool | None = None
    """Clip each step's clean-latent estimate to the box of latents the decoder maps
    into valid pixels (`clip_denoised`); None: when the decoder has such a box (the
    pixel encoding of --data natural), not for VAE latents, which have none."""


def model_config(config: dict, latent_shape_CFHW: tuple[int, int, int, int],
                 layout: ParallelLayout) -> VDiTConfig:
    """The run's model at latent shape `latent_shape_CFHW` (RoPE is per grid, so any
    grid the patch sizes divide works with the same weights)."""
    pt, ph, pw = find_field(config, "patch_size")
    c, f, h, w = latent_shape_CFHW
    return VDiTConfig(
        num_layers=find_field(config, "num_layers"), hidden_size=find_field(config, "hidden_size"),
        num_attention_heads=find_field(config, "num_attention_heads"), in_channels=c,
        latent_frames=f, latent_height=h, latent_width=w, patch_size_t=pt, patch_size_h=ph,
        patch_size_w=pw, text_hidden_size=find_field(config, "text_hidden_size"),
        max_text_tokens=find_field(config, "max_text_tokens"), use_cpu_initialization=True)


def load_weights(model: torch.nn.Module, checkpoint: str, tp_group: dist.ProcessGroup,
                 prefer_ema: bool = True) -> str:
    """Copy the checkpoint's EMA (else raw) weights into this rank's TP shards.

    Returns "ema" or "model": which weights were loaded. Reads full tensors through DCP
    (any saved layout) and keeps this rank's slice along each parameter's TP dim.
    """
    keys = saved_keys(checkpoint)
    prefix = "ema" if prefer_ema and any(k.startswith("ema.") for k in keys) else "model"
    meta = dcp.FileSystemReader(str(checkpoint)).read_metadata().state_dict_metadata
    names = [n for n, _ in model.named_parameters()]
    missing = [n for n in names if f"{prefix}.{n}" not in keys]
    if missing:
        raise ValueError(f"{checkpoint} lacks {len(missing)} parameters of this model "
                         f"(first: {missing[0]}): it was trained with another architecture")
    state = {f"{prefix}.{n}": torch.empty(meta[f"{prefix}.{n}"].size) for n in names}
    dcp.load(state, checkpoint_id=str(checkpoint))
    with torch.no_grad():
        for name, param in model.named_parameters():
            full = state[f"{prefix}.{name}"]
            dim = param_role(param).tp_partition_dim
            if dim is not None and tp_group.size() > 1:
                full = full.chunk(tp_group.size(), dim=dim)[dist.get_rank(tp_group)]
            param.copy_(full)
    return prefix


def clip_denoised(denoiser, objective: DiffusionObjective, low_C: torch.Tensor,
                  high_C: torch.Tensor):
    """`denoiser` whose clean-latent estimate is clipped per channel to [low_C, high_C].

    Why: an eps-predicting model turns its output into x0 = (x - sigma eps) / alpha, so
    at the noisiest steps (alpha = 0.0064 at step 999 of the linear schedule) an eps
    error of 0.1 is an x0 error of 16; the sampler then steers far outside the data and
    never returns. Ho et al.'s DDPM sampler clips x0 to the pixel range for this reason.
    The output is rebuilt in the objective's own parametrisation from the clipped x0 and
    the eps consistent with it, eps = (x - alpha x0) / sigma, so every sampler applies.
    """
    shape = (1, -1) + (1,) * 3

    def wrapped(x_BCFHW, t_B):
        out = denoiser(x_BCFHW, t_B).float().cpu()
        view = (-1,) + (1,) * (x_BCFHW.dim() - 1)
        if objective.kind == "flow":
            sigma = (t_B.double() / objective.num_timesteps).view(view)
            alpha = 1 - sigma
        else:
            alpha_bar = objective._alpha_bar.double()[t_B.round().long()].view(view)
            alpha, sigma = alpha_bar.sqrt(), (1 - alpha_bar).sqrt()
        x0, _ = predict_x0_eps(objective.kind, out.double(), x_BCFHW.double(), alpha, sigma)
        x0 = torch.maximum(torch.minimum(x0, high_C.double().view(shape)), low_C.double().view(shape))
        eps = (x_BCFHW - alpha * x0) / sigma
        raw = {"ddpm": eps, "v": alpha * eps - sigma * x0, "flow": eps - x0}[objective.kind]
        return raw.float()
    return wrapped


class NaturalCodec:
    """The encoding of `--data natural` (data/natural.py) seen as a VAE and a text
    encoder: 2x2 space-to-depth of normalised RGB, captions by the same seeded word
    table the training data used, so prompts in the data's vocabulary condition."""

    def __init__(self, config: dict):
        from ..data.natural import SPACE_TO_DEPTH
        from ..data.synthetic import CaptionEmbedder
        self.k = SPACE_TO_DEPTH
        self.video = {"frames": find_field(config, "latent_frames"),
                      "height": find_field(config, "latent_height") * self.k,
                      "width": find_field(config, "latent_width") * self.k}
        self.captions = CaptionEmbedder(find_field(config, "text_hidden_size"),
                                        find_field(config, "max_text_tokens"),
                                        find_field(config, "data_seed", 0) or 0)

    def latent_shape(self, frames: int, height: int, width: int) -> tuple[int, int, int, int]:
        from ..data.natural import LATENT_CHANNELS
        if height % self.k or width % self.k:
            raise ValueError(f"--height {height} --width {width}: --data natural needs "
                             f"multiples of {self.k}")
        return (LATENT_CHANNELS, frames, height // self.k, width // self.k)

    def latent_box(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Per latent channel, the values that decode to pixels in [0, 1] [12], [12]."""
        from ..data.natural import channel_stats
        mean, std = channel_stats()
        rgb = np.arange(3 * self.k ** 2) // self.k ** 2    # channel = k*k * rgb + ...
        return (torch.from_numpy(-mean[rgb] / std[rgb]),
                torch.from_numpy((1 - mean[rgb]) / std[rgb]))

    def encode(self, prompts: list[str]):
        embs, masks = zip(*(self.captions(p) for p in prompts))
        return (torch.from_numpy(np.stack(embs)), torch.from_numpy(np.stack(masks)),
                [True] * len(prompts))

    def decode(self, latents_BCFHW: torch.Tensor) -> np.ndarray:
        from ..data.natural import decode
        frames = [decode(x.float().cpu().numpy()) for x in latents_BCFHW]
        return np.stack([(np.clip(f, 0, 1) * 255).round().astype(np.uint8) for f in frames])


class Generator:
    """The run's model on this rank, its objective, text encoder and VAE."""

    def __init__(self, run: RunFiles, layout: ParallelLayout, frames: int | None = None,
                 height: int | None = None, width: int | None = None, prefer_ema: bool = True):
        if run.manifest is None and run.data_dir != "natural":
            raise ValueError(f"{run.run_dir} trained on --data synthetic: there is no VAE to "
                             "decode its latents; train on shards (--data default or DIR) "
                             "or --data natural")
        self.run = run
        if run.data_dir == "natural":
            self.vae = self.text_encoder = NaturalCodec(run.config)
            video = self.vae.video
        else:
            video = run.manifest["video"]
            self.vae, self.text_encoder = load_encoders(run.manifest)
        self.frames = frames or video["frames"]
        self.height, self.width = height or video["height"], width or video["width"]
        self.latent_shape = self.vae.latent_shape(self.frames, self.height, self.width)
        try:
            self.config = model_config(run.config, self.latent_shape, layout)
            validate_model_config(self.config)
        except ValueError as err:
            raise ValueError(f"--frames {self.frames} --height {self.height} --width "
                             f"{self.width} give latents {list(self.latent_shape)}: {err}") from None
        self.objective = DiffusionObjective(find_field(run.config, "objective"),
                                            find_field(run.config, "beta_schedule", "linear"))
        self.train_flow_shift = float(find_field(run.config, "flow_shift", 1.0) or 1.0)
        layout.validate(dist.get_world_size(), self.config.num_layers,
                        self.config.num_attention_heads, self.config.tokens_per_sample)
        self.groups = build_parallel_groups(layout, "cpu",
                                            num_attention_heads=self.config.num_attention_heads)
        self.model = build_parallel_model(self.config, self.groups, seed=0).eval()
        self.weights = load_weights(self.model, run.checkpoint, self.groups.tp, prefer_ema)

    def encode_prompts(self, prompts: list[str]):
        emb_BXT, mask_BX, _ = self.text_encoder.encode(prompts)
        return emb_BXT, mask_BX

    @torch.no_grad()
    def predict(self, x_BCFHW, t_B, text_BXT, mask_BX, guidance_scale: float):
        """Raw model output; with guidance, captioned and null caption in one batch."""
        if guidance_scale == 1.0:
            return self.model(x_BCFHW, t_B, text_BXT, mask_BX)
        null_text, null_mask = null_caption(*text_BXT.shape)
        both = self.model(torch.cat([x_BCFHW, x_BCFHW]), torch.cat([t_B, t_B]),
                          torch.cat([text_BXT, null_text]), torch.cat([mask_BX, null_mask]))
        cond, uncond = both.chunk(2)
        return combine_guidance(cond, uncond, guidance_scale)

    def sample_latents(self, prompts: list[str], options: SampleOptions, progress=None):
        return self.sample_from_text(*self.encode_prompts(prompts), options, progress)

    def sample_from_text(self, text_BXT, mask_BX, options: SampleOptions, progress=None):
        """Latents for already-encoded captions (e.g. the held-out set's embeddings)."""
        shift = self.train_flow_shift if options.flow_shift is None else options.flow_shift
        box = getattr(self.vae, "latent_box", None)
        if options.clip_x0 and box is None:
            raise ValueError("clip_x0: this run's latents (a VAE's) have no bounded range")

        def denoiser(x, t):
            return self.predict(x, t, text_BXT, mask_BX, options.guidance_scale)
        if box is not None and options.clip_x0 is not False:
            denoiser = clip_denoised(denoiser, self.objective, *box())
        return sample(denoiser, self.objective, (text_BXT.shape[0], *self.latent_shape),
                      sampler=options.sampler, num_steps=options.num_steps, seed=options.seed,
                      flow_shift=shift, progress=progress)

    @torch.no_grad()
    def decode(self, latents_BCFHW: torch.Tensor) -> np.ndarray:
        """Normalised latents -> uint8 frames [B, F, H, W, 3] (the precompute's inverse)."""
        vae = self.vae
        if isinstance(vae, NaturalCodec):
            return vae.decode(latents_BCFHW)
        if vae.kind == "wan":
            shape = (1, -1, 1, 1, 1)
            mu = latents_BCFHW * vae._std_C.view(shape) + vae._mean_C.view(shape)
        else:
            mu = latents_BCFHW / vae._scale + vae._shift
        param = next(vae.model.parameters())
        video_BCFHW = vae.model.decode(mu.to(param.device, param.dtype)).sample.float().cpu()
        pixels = ((video_BCFHW.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
        return pixels.permute(0, 2, 3, 4, 1).numpy()


def write_outputs(out_paths: list[str], frames_BFHWC: np.ndarray, latents_BCFHW: torch.Tensor,
                  meta: dict) -> None:
    """Each video to its mp4 and its latents to `<stem>.latents.npz`, atomically."""
    from ..data.video_io import write_video
    for i, path in enumerate(out_paths):
        with atomic_path(path) as tmp:
            write_video(str(tmp), frames_BFHWC[i], FPS)
        with atomic_path(latents_path(path)) as tmp:
            np.savez(tmp, latents=latents_BCFHW[i].numpy(),
                     meta=json.dumps({**meta, "prompt": meta["prompts"][i], "index": i}))

