"""One small interface over a diffusers text-to-image model kept in a local folder.

The folder has the Stable Diffusion layout (what ``StableDiffusionPipeline.save_pretrained``
writes)::

    model_index.json
    unet/          config.json + weights      UNet2DConditionModel
    text_encoder/  config.json + weights      CLIPTextModel (transformers)
    tokenizer/     tokenizer files            anything AutoTokenizer reads
    scheduler/     scheduler_config.json      the training noise schedule
    vae/           config.json + weights      AutoencoderKL; ABSENT = a pixel-space model

A real Stable Diffusion 1.x/2.x folder (latent space, with ``vae/``) is the way a GPU user runs the
token branch; cmav's offline default (:func:`build_pixel_diffusion`, trained by
:class:`cmav.tasks.diffusion.DiffusionBaseTask`) is a small pixel-space model with no ``vae/``: its
UNet denoises the frames themselves. Both load through :func:`load_pipeline`, from a local path
only: nothing is ever downloaded (``local_files_only``). The folder of a pixel-space model is read
by cmav, not by ``DiffusionPipeline.from_pretrained`` (diffusers has no pixel-space text-to-image
pipeline class).

``diffusers`` and ``transformers`` are imported inside the functions, so importing cmav stays fast.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

REQUIRED_PARTS: tuple[str, ...] = ("unet", "text_encoder", "tokenizer", "scheduler")
PIXEL_PIPELINE_CLASS = "CmavPixelDiffusionPipeline"
"""``_class_name`` in ``model_index.json`` of a pixel-space (no ``vae/``) folder written by cmav."""

SCHEDULERS: dict[str, str] = {
    "ddim": "DDIMScheduler",
    "ddpm": "DDPMScheduler",
    "pndm": "PNDMScheduler",
    "euler": "EulerDiscreteScheduler",
    "dpm": "DPMSolverMultistepScheduler",
}
"""Sampling schedulers by short name (``--scheduler``); each is built from the folder's noise schedule."""

MIN_STEPS: dict[str, int] = {"pndm": 4}
"""Fewest sampling steps a scheduler runs with (PNDM's linear multistep start takes 4; diffusers
fails below that with a numpy broadcasting error)."""

TIMESTEP_SPACING = "trailing"
"""How samplers place their steps on the training timesteps, unless :data:`SAMPLER_SPACING` says
otherwise. ``trailing`` starts at the last training timestep (pure noise); diffusers' default
``leading`` starts ``T/steps - 1`` earlier (t=900 of 1000 at 10 steps), where pure noise is taken
for a partly clean sample (Lin et al., 2024, "Common Diffusion Noise Schedules and Sample Steps are
Flawed")."""

SAMPLER_SPACING: dict[str, str] = {"pndm": "leading"}
"""Samplers that keep diffusers' ``leading`` spacing. PNDM run from the last timestep of a schedule
that ends at almost pure noise (the offline default's squaredcos_cap_v2, ``alpha_bar(999) =
2.4e-9``) does not converge: fed the exact noise of a known image, ``trailing`` PNDM ends a mean 1.0
away from it at 10 steps and 0.73 at 50 (``leading``: 0.005). Its updates scale the sample by
``sqrt(alpha_bar(t_prev) / alpha_bar(t))``, in the hundreds there, and its multistep noise
estimates (mixed over several timesteps) are not exact enough for that. DDIM, DDPM, Euler and DPM
are exact with ``trailing``."""

AUTO_SPACING = "auto"
"""``timestep_spacing`` value meaning "the sampler's own" (:func:`sampler_spacing`)."""


def sampler_spacing(name: str) -> str:
    """The timestep spacing sampler ``name`` runs with: :data:`SAMPLER_SPACING`, else :data:`TIMESTEP_SPACING`."""
    return SAMPLER_SPACING.get(name, TIMESTEP_SPACING)


PREDICTION_TYPES: tuple[str, ...] = ("epsilon", "v_prediction", "sample")
"""What the UNet predicts (``prediction_type``): the noise, the velocity or the clean sample."""

BETA_SCHEDULES: tuple[str, ...] = ("linear", "scaled_linear", "squaredcos_cap_v2")
"""Noise schedules (``beta_schedule``) that every sampler of :data:`SCHEDULERS` can read."""


@dataclass(frozen=True)
class PixelDiffusionConfig:
    """The offline default model: a pixel-space ``UNet2DConditionModel`` and a small CLIP text encoder.

    ``block_out_channels``: UNet widths per resolution level (every level but the first has
    cross-attention to the text); ``attention_heads``: heads of each cross-attention layer
    (diffusers' ``attention_head_dim``, which counts heads); ``text_*``: the CLIP text encoder
    (width = the token width the audio embedder maps into); ``max_length``: padded prompt length;
    the noise schedule (``num_train_timesteps``, ``beta_schedule``, ``prediction_type``) is saved
    as ``scheduler/``.
    """

    image_size: int = 64
    block_out_channels: tuple[int, ...] = (64, 128, 256, 256)
    layers_per_block: int = 2
    attention_heads: int = 8
    norm_num_groups: int = 32
    text_width: int = 256
    text_layers: int = 4
    text_heads: int = 4
    max_length: int = 16
    num_train_timesteps: int = 1000
    beta_schedule: str = "squaredcos_cap_v2"
    prediction_type: str = "epsilon"


def make_scheduler(name: str, config: dict[str, Any], timestep_spacing: str | None = AUTO_SPACING,
                   source: str | None = None):  # fmt: skip
    """A diffusers scheduler ``name`` (see :data:`SCHEDULERS`) with the noise schedule ``config``.

    ``timestep_spacing`` overrides the folder's: ``'auto'`` (the default) is the sampler's own
    (:func:`sampler_spacing`), ``None`` keeps the folder's. ``source`` (the folder) names the
    schedule in errors.
    """
    import diffusers

    if name not in SCHEDULERS:
        raise ValueError(f"unknown scheduler {name!r}; expected one of {sorted(SCHEDULERS)}")
    if timestep_spacing == AUTO_SPACING:
        timestep_spacing = sampler_spacing(name)
    # a keyword, not a config entry: from_config drops entries the source scheduler left at its default
    kw = {} if timestep_spacing is None else {"timestep_spacing": timestep_spacing}
    try:
        return getattr(diffusers, SCHEDULERS[name]).from_config(config, **kw)
    except NotImplementedError as exc:  # e.g. a beta_schedule only the DDPM scheduler has (sigmoid)
        raise ValueError(f"{source or 'pipeline'}: the {name} sampler cannot use its noise schedule ({exc})") from exc


class TextToImageDiffusion(nn.Module):
    """A text-conditioned diffusion model: UNet, text encoder, tokenizer, noise schedule, optional VAE.

    Everything a caller needs: :meth:`tokenize`, :meth:`encode_ids` (with a hook on the text
    encoder's input embeddings, where the audio token goes), :meth:`text_embeddings`,
    :meth:`denoising_loss` (the model's own training loss) and :meth:`sample`. Images are float
    ``(N, 3, S, S)`` in [-1, 1] at :attr:`image_size`; other sizes are resized on the way in.
    """

    def __init__(self, unet: nn.Module, text_encoder: nn.Module, tokenizer: Any, scheduler_config: dict[str, Any],
                 vae: nn.Module | None = None, source: str | None = None) -> None:  # fmt: skip
        super().__init__()
        from diffusers import DDPMScheduler

        self.unet = unet
        self.text_encoder = text_encoder
        self.vae = vae
        self.tokenizer = tokenizer
        self.scheduler_config = dict(scheduler_config)
        self.noise_scheduler = DDPMScheduler.from_config(self.scheduler_config)
        self.source = source
        width = int(text_encoder.config.hidden_size)
        cross = unet.config.cross_attention_dim
        if cross != width:
            raise ValueError(f"{source or 'pipeline'}: the UNet's cross_attention_dim {cross} differs from the text "
                             f"encoder's width {width}")  # fmt: skip
        channels = vae.config.latent_channels if vae is not None else 3
        if unet.config.in_channels != channels:
            what = f"the VAE's latent_channels {channels}" if vae is not None else "3 (pixel space: no vae/)"
            raise ValueError(f"{source or 'pipeline'}: the UNet takes {unet.config.in_channels} channels, "
                             f"expected {what}")  # fmt: skip

    # ------------------------------------------------------------------ sizes

    @property
    def text_width(self) -> int:
        """Width of the text encoder's token embeddings (the audio token's size)."""
        return int(self.text_encoder.config.hidden_size)

    @property
    def max_length(self) -> int:
        """Padded prompt length: the tokenizer's, capped by the text encoder's position table."""
        limit = int(self.text_encoder.config.max_position_embeddings)
        return min(int(self.tokenizer.model_max_length), limit)

    @property
    def latent_scale(self) -> int:
        """Pixels per UNet sample cell (1 in pixel space)."""
        return 2 ** (len(self.vae.config.block_out_channels) - 1) if self.vae is not None else 1

    @property
    def image_size(self) -> int:
        """Side of the images the model generates and trains on."""
        return int(self.unet.config.sample_size) * self.latent_scale

    @property
    def device(self) -> torch.device:
        return next(self.unet.parameters()).device

    def freeze(self) -> TextToImageDiffusion:
        """No gradients for any weight, eval mode (dropout off)."""
        self.requires_grad_(False)
        return self.eval()

    # ------------------------------------------------------------------ text

    def tokenize(self, texts: Sequence[str]) -> Tensor:
        """``(N, max_length)`` token ids, padded and truncated."""
        return self.tokenizer(list(texts), padding="max_length", max_length=self.max_length, truncation=True,
                              return_tensors="pt").input_ids  # fmt: skip

    def input_embeddings(self) -> nn.Embedding:
        """The text encoder's token-embedding table."""
        return self.text_encoder.get_input_embeddings()

    def encode_ids(self, ids: Tensor, inject: Callable[[Tensor], Tensor] | None = None) -> Tensor:
        """``(N, L, D)`` text-encoder output of token ids (what the UNet attends to).

        ``inject(embeddings) -> embeddings`` rewrites the ``(N, L, D)`` input embeddings (the token
        lookup) before the transformer runs: how an audio token replaces a placeholder word.
        """
        handle = None
        if inject is not None:
            handle = self.input_embeddings().register_forward_hook(lambda _m, _i, out: inject(out))
        try:
            return self.text_encoder(input_ids=ids.to(self.device))[0]
        finally:
            if handle is not None:
                handle.remove()

    def text_embeddings(self, prompts: Sequence[str]) -> Tensor:
        """``(N, L, D)`` conditioning of plain text prompts."""
        return self.encode_ids(self.tokenize(prompts))

    def word_embedding(self, text: str) -> Tensor:
        """``(D,)``: the mean input embedding of the tokens of ``text`` (no start/end tokens)."""
        ids = self.tokenizer(text, add_special_tokens=False).input_ids
        unk = getattr(self.tokenizer, "unk_token_id", None)
        if not ids or (unk is not None and unk in ids):
            raise ValueError(f"{self.source or 'pipeline'}: the tokenizer does not know {text!r}")
        table = self.input_embeddings().weight
        return table[torch.tensor(ids, device=table.device)].mean(0)

    # ------------------------------------------------------------------ images

    def encode_images(self, images: Tensor) -> Tensor:
        """Frames in [-1, 1] -> what the UNet denoises (resized; VAE latents when there is a VAE)."""
        x = images.to(self.device, torch.float32)
        if x.shape[-1] != self.image_size or x.shape[-2] != self.image_size:
            x = F.interpolate(x, size=(self.image_size, self.image_size), mode="bilinear", antialias=True,
                              align_corners=False)  # fmt: skip
        if self.vae is None:
            return x
        return self.vae.encode(x).latent_dist.sample() * self.vae.config.scaling_factor

    def decode(self, samples: Tensor) -> Tensor:
        """UNet samples -> images in [-1, 1]."""
        if self.vae is not None:
            samples = self.vae.decode(samples / self.vae.config.scaling_factor).sample
        return samples.clamp(-1.0, 1.0)

    def denoising_loss(self, images: Tensor, cond: Tensor) -> Tensor:
        """The model's own training loss: MSE of the UNet's prediction (noise, velocity or sample, as
        the schedule's ``prediction_type`` says) at a random timestep, conditioned on ``cond``."""
        x0 = self.encode_images(images)
        noise = torch.randn_like(x0)
        steps = self.noise_scheduler.config.num_train_timesteps
        t = torch.randint(0, steps, (x0.shape[0],), device=x0.device)
        noisy = self.noise_scheduler.add_noise(x0, noise, t)
        pred = self.unet(noisy, t, encoder_hidden_states=cond).sample
        kind = self.noise_scheduler.config.prediction_type
        if kind == "epsilon":
            target = noise
        elif kind == "v_prediction":
            target = self.noise_scheduler.get_velocity(x0, noise, t)
        elif kind == "sample":
            target = x0
        else:
            raise ValueError(f"{self.source or 'pipeline'}: unsupported prediction_type {kind!r}")
        return F.mse_loss(pred.float(), target.float())

    @torch.no_grad()
    def sample(self, cond: Tensor, guidance_scale: float = 3.0, steps: int = 50, scheduler: str = "ddim",
               generator: torch.Generator | None = None, batch_size: int = 64,
               timestep_spacing: str | None = AUTO_SPACING) -> Tensor:  # fmt: skip
        """Images ``(N, 3, S, S)`` in [-1, 1] on CPU for the conditionings ``cond`` ``(N, L, D)``.

        Classifier-free guidance with the empty prompt when ``guidance_scale != 1``. The starting
        noise of every item is drawn first, on the CPU, from ``generator``: a seed gives the same
        starting noise on any device and at any ``batch_size`` (and so, with the deterministic DDIM
        sampler, the same images up to float rounding; stochastic samplers draw more noise per batch).
        ``timestep_spacing``: see :func:`make_scheduler`.
        """
        least = MIN_STEPS.get(scheduler, 1)
        if steps < least:
            raise ValueError(f"the {scheduler} sampler needs steps >= {least}, got {steps}")
        c = int(self.unet.config.in_channels)
        side = int(self.unet.config.sample_size)
        noise = torch.randn(cond.shape[0], c, side, side, generator=generator)
        uncond = self.text_embeddings([""]) if guidance_scale != 1.0 else None
        out = []
        for i in range(0, cond.shape[0], batch_size):
            out.append(self._denoise(cond[i : i + batch_size].to(self.device), noise[i : i + batch_size], uncond,
                                     guidance_scale, steps, scheduler, generator, timestep_spacing).cpu())  # fmt: skip
        return torch.cat(out) if out else torch.zeros(0, 3, self.image_size, self.image_size)

    def _denoise(self, cond: Tensor, noise: Tensor, uncond: Tensor | None, guidance_scale: float, steps: int,
                 scheduler: str, generator: torch.Generator | None,
                 timestep_spacing: str | None) -> Tensor:  # fmt: skip
        sched = make_scheduler(scheduler, self.scheduler_config, timestep_spacing, self.source)
        sched.set_timesteps(steps, device=self.device)
        x = noise.to(self.device) * sched.init_noise_sigma
        n = x.shape[0]
        context = cond if uncond is None else torch.cat([uncond.expand(n, -1, -1), cond])
        for t in sched.timesteps:
            inp = x if uncond is None else torch.cat([x, x])
            pred = self.unet(sched.scale_model_input(inp, t), t, encoder_hidden_states=context).sample
            if uncond is not None:
                p_u, p_c = pred.chunk(2)
                pred = p_u + guidance_scale * (p_c - p_u)
            kw = {"generator": generator} if "generator" in _step_params(sched) else {}
            x = sched.step(pred, t, x, **kw).prev_sample
        return self.decode(x)

    # ------------------------------------------------------------------ folder

    def save(self, path: str | Path) -> Path:
        """Write the model in the pipeline-folder layout (see the module docstring); returns ``path``."""
        import diffusers
        from diffusers import DDPMScheduler

        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        _quiet()
        self.unet.save_pretrained(path / "unet")
        self.text_encoder.save_pretrained(path / "text_encoder")
        self.tokenizer.save_pretrained(path / "tokenizer")
        DDPMScheduler.from_config(self.scheduler_config).save_pretrained(path / "scheduler")
        index: dict[str, Any] = {
            "_class_name": PIXEL_PIPELINE_CLASS if self.vae is None else "StableDiffusionPipeline",
            "_diffusers_version": diffusers.__version__,
            "unet": ["diffusers", type(self.unet).__name__],
            "text_encoder": ["transformers", type(self.text_encoder).__name__],
            "tokenizer": ["transformers", type(self.tokenizer).__name__],
            "scheduler": ["diffusers", "DDPMScheduler"],
        }
        if self.vae is not None:
            self.vae.save_pretrained(path / "vae")
            index["vae"] = ["diffusers", type(self.vae).__name__]
        (path / "model_index.json").write_text(json.dumps(index, indent=2) + "\n")
        return path


_STEP_PARAMS: dict[type, frozenset[str]] = {}


def _step_params(sched: Any) -> frozenset[str]:
    import inspect

    cls = type(sched)
    if cls not in _STEP_PARAMS:
        _STEP_PARAMS[cls] = frozenset(inspect.signature(sched.step).parameters)
    return _STEP_PARAMS[cls]


def _quiet() -> None:
    """No progress bars from diffusers/transformers while loading or saving small local folders."""
    import diffusers.utils.logging as d_log
    import transformers.utils.logging as t_log

    d_log.disable_progress_bar()
    t_log.disable_progress_bar()


def _part_error(path: Path, part: str, exc: Exception) -> ValueError:
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return ValueError(f"{path / part}: cannot be loaded ({first})")


def check_pipeline_folder(path: str | Path) -> Path:
    """``path`` as a Path after checking it has the parts :func:`load_pipeline` needs; names what is missing."""
    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(
            f"diffusion pipeline folder not found: {path} (a local folder in the Stable Diffusion layout; nothing "
            "is downloaded: train the offline default with `cmav fit --config experiments/diffusion_base.yaml`)"
        )
    missing = [f"{p}/" for p in REQUIRED_PARTS if not (path / p).is_dir()]
    if missing:
        needs = ", ".join(p + "/" for p in REQUIRED_PARTS)
        raise FileNotFoundError(f"{path}: not a text-to-image pipeline folder: missing {', '.join(missing)} "
                                f"(needs {needs} and vae/ for latent models)")  # fmt: skip
    configs = {"unet": "config.json", "text_encoder": "config.json", "scheduler": "scheduler_config.json"}
    if (path / "vae").is_dir():
        configs["vae"] = "config.json"
    for part, name in configs.items():
        if not (path / part / name).is_file():
            raise FileNotFoundError(f"{path / part}: missing {name}")
    if (path / "text_encoder_2").is_dir():
        raise ValueError(f"{path}: has text_encoder_2/ (an SDXL pipeline); only Stable Diffusion 1.x/2.x layouts "
                         "with one text encoder are supported")  # fmt: skip
    return path


def load_pipeline(path: str | Path, device: str | torch.device = "cpu") -> TextToImageDiffusion:
    """Load a pipeline folder (see the module docstring) from the local disk only; frozen, eval mode."""
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from transformers import AutoConfig, AutoTokenizer, CLIPTextModel

    path = check_pipeline_folder(path)
    _quiet()
    try:
        unet = UNet2DConditionModel.from_pretrained(path / "unet", local_files_only=True, low_cpu_mem_usage=False)
    except (OSError, ValueError, RuntimeError) as exc:
        raise _part_error(path, "unet", exc) from exc
    try:
        cfg = AutoConfig.from_pretrained(path / "text_encoder", local_files_only=True)
        if cfg.model_type != "clip_text_model":
            raise ValueError(f"model_type {cfg.model_type!r}, expected 'clip_text_model' (CLIPTextModel)")
        text_encoder = CLIPTextModel.from_pretrained(path / "text_encoder", local_files_only=True)
    except (OSError, ValueError, RuntimeError, KeyError) as exc:
        raise _part_error(path, "text_encoder", exc) from exc
    try:
        tokenizer = AutoTokenizer.from_pretrained(path / "tokenizer", local_files_only=True)
    except (OSError, ValueError, TypeError, KeyError) as exc:
        raise _part_error(path, "tokenizer", exc) from exc
    try:
        scheduler_config = dict(DDPMScheduler.load_config(path / "scheduler"))
        DDPMScheduler.from_config(scheduler_config)  # the training schedule: an unknown beta_schedule fails here
    except (OSError, ValueError, NotImplementedError) as exc:
        raise _part_error(path, "scheduler", exc) from exc
    vae = None
    if (path / "vae").is_dir():
        try:
            vae = AutoencoderKL.from_pretrained(path / "vae", local_files_only=True, low_cpu_mem_usage=False)
        except (OSError, ValueError, RuntimeError) as exc:
            raise _part_error(path, "vae", exc) from exc
    model = TextToImageDiffusion(unet, text_encoder, tokenizer, scheduler_config, vae=vae, source=str(path))
    return model.to(device).freeze()


def build_pixel_diffusion(captions: Sequence[str], config: PixelDiffusionConfig = PixelDiffusionConfig(),
                          source: str | None = None) -> TextToImageDiffusion:  # fmt: skip
    """A fresh (untrained) pixel-space model whose tokenizer knows exactly the words of ``captions``."""
    from diffusers import DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from cmav.diffusion.tokenizer import BOS, EOS, build_word_tokenizer

    c = config
    if c.prediction_type not in PREDICTION_TYPES:
        raise ValueError(f"prediction_type {c.prediction_type!r} is not one of {PREDICTION_TYPES}")
    if c.beta_schedule not in BETA_SCHEDULES:
        raise ValueError(f"beta_schedule {c.beta_schedule!r} is not one of {BETA_SCHEDULES} (the noise schedules "
                         "every sampler reads)")  # fmt: skip
    levels = len(c.block_out_channels)
    if levels < 2:
        raise ValueError(f"block_out_channels needs at least 2 levels, got {tuple(c.block_out_channels)}")
    if c.image_size % 2 ** (levels - 1):
        raise ValueError(f"image_size {c.image_size} is not divisible by 2**{levels - 1} ({levels} UNet levels)")
    bad = [w for w in c.block_out_channels if w % c.norm_num_groups]
    if bad:
        raise ValueError(f"block_out_channels {bad} are not multiples of norm_num_groups={c.norm_num_groups}")
    tokenizer = build_word_tokenizer(captions, max_length=c.max_length)
    text_encoder = CLIPTextModel(CLIPTextConfig(
        vocab_size=len(tokenizer), hidden_size=c.text_width, intermediate_size=4 * c.text_width,
        num_hidden_layers=c.text_layers, num_attention_heads=c.text_heads, max_position_embeddings=c.max_length,
        bos_token_id=tokenizer.convert_tokens_to_ids(BOS), eos_token_id=tokenizer.convert_tokens_to_ids(EOS),
        pad_token_id=tokenizer.convert_tokens_to_ids(EOS),
    ))  # fmt: skip
    unet = UNet2DConditionModel(
        sample_size=c.image_size, in_channels=3, out_channels=3, block_out_channels=tuple(c.block_out_channels),
        layers_per_block=c.layers_per_block, norm_num_groups=c.norm_num_groups, cross_attention_dim=c.text_width,
        attention_head_dim=c.attention_heads,
        down_block_types=("DownBlock2D",) + ("CrossAttnDownBlock2D",) * (levels - 1),
        up_block_types=("CrossAttnUpBlock2D",) * (levels - 1) + ("UpBlock2D",),
    )  # fmt: skip
    # clip_sample keeps every denoised estimate in the frames' [-1, 1] (pixel space); the spacing is
    # saved so that diffusers' own samplers, reading the folder, start from pure noise as cmav's do
    # (not PNDM: cmav runs it with 'leading', see SAMPLER_SPACING; diffusers' PNDM would read 'trailing')
    schedule = DDPMScheduler(num_train_timesteps=c.num_train_timesteps, beta_schedule=c.beta_schedule,
                             prediction_type=c.prediction_type, clip_sample=True,
                             timestep_spacing=TIMESTEP_SPACING)  # fmt: skip
    return TextToImageDiffusion(unet, text_encoder, tokenizer, dict(schedule.config), source=source)


__all__ = [
    "AUTO_SPACING",
    "BETA_SCHEDULES",
    "PIXEL_PIPELINE_CLASS",
    "PREDICTION_TYPES",
    "PixelDiffusionConfig",
    "MIN_STEPS",
    "REQUIRED_PARTS",
    "SAMPLER_SPACING",
    "SCHEDULERS",
    "TIMESTEP_SPACING",
    "TextToImageDiffusion",
    "build_pixel_diffusion",
    "check_pipeline_folder",
    "load_pipeline",
    "make_scheduler",
    "sampler_spacing",
]
