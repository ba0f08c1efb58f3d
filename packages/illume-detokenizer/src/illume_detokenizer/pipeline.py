"""`DetokenizerPipeline`: semantic features (or vision codes) in, images out.

A diffusers `DiffusionPipeline` of a `FeatureConditioner`, a `UNet2DConditionModel`, a scheduler
and, for latent-space models, an `AutoencoderKL`. `save_pretrained` / `from_pretrained` write and
read the usual diffusers folder (`model_index.json`, one subfolder per component, safetensors).

    pipe = DetokenizerPipeline.from_pretrained("runs/shapes/detokenizer/final")
    pipe.use_scheduler("dpm++")
    images = pipe(features, num_inference_steps=20, guidance_scale=3.0,
                  generator=torch.Generator().manual_seed(0)).images
"""

from __future__ import annotations

import inspect
import json
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import torch
from diffusers import (
    AutoencoderKL,
    DDIMScheduler,
    DDPMScheduler,
    DiffusionPipeline,
    DPMSolverMultistepScheduler,
    EulerDiscreteScheduler,
    UNet2DConditionModel,
)
from diffusers.utils import BaseOutput
from diffusers.utils.torch_utils import randn_tensor
from PIL import Image

from illume_core import model_card, read_json, write_model_card

from .conditioner import Conditions, FeatureConditioner

#: Samplers by name: (scheduler class, settings on top of the trained noise schedule).
SCHEDULERS: dict[str, tuple[type, dict]] = {
    "ddim": (DDIMScheduler, {}),
    "dpm++": (DPMSolverMultistepScheduler, {"algorithm_type": "dpmsolver++", "solver_order": 2}),
    "euler": (EulerDiscreteScheduler, {}),
    "ddpm": (DDPMScheduler, {}),  # ancestral, stochastic: the training scheduler's own sampler
}


@dataclass
class DetokenizerPipelineOutput(BaseOutput):
    """What `DetokenizerPipeline` returns (illume_core.DetokenizerOutput's fields, as a diffusers
    `BaseOutput`: by attribute, key or index).

    Attributes:
        images: B PIL RGB images (empty for output_type "pt").
        pixels: [B, 3, H, W] float in [0, 1], the same images as a tensor.
    """

    images: list[Image.Image]
    pixels: torch.Tensor


def to_pil(pixels: torch.Tensor) -> list[Image.Image]:
    """[B, 3, H, W] in [0, 1] -> B RGB images."""
    array = (pixels.clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
    return [Image.fromarray(a) for a in array]


def check_component_configs(directory: Path) -> None:
    """ValueError naming every key of a component's config.json (conditioner, unet, vae) that
    its class does not take; keys starting with "_" are diffusers' own bookkeeping."""
    classes = {
        "conditioner": FeatureConditioner,
        "unet": UNet2DConditionModel,
        "vae": AutoencoderKL,
    }
    for name, component in classes.items():
        path = directory / name / "config.json"
        if not path.is_file():
            continue
        try:
            config = read_json(path)
        except json.JSONDecodeError as err:
            raise ValueError(f"{path} is not valid JSON ({err})") from None
        _, unused, _ = component.extract_init_dict(config)
        unknown = sorted(k for k in unused if not k.startswith("_"))
        if unknown:
            raise ValueError(
                f"{path}: {component.__name__} takes no {', '.join(unknown)} (misspelt? "
                "fix the key or delete it)"
            )


class DetokenizerPipeline(DiffusionPipeline):
    """Features [B, N, D] -> B images, by conditioned denoising with classifier-free guidance.

    Components: `conditioner` (FeatureConditioner), `unet` (UNet2DConditionModel), `scheduler`,
    and `vae` (AutoencoderKL; None for pixel-space models such as ShapesWorld's).
    `pixel_unshuffle` f (pixel space only): the U-Net denoises [3 f^2, H/f, W/f] space-to-depth
    pixels, an exactly invertible reshape that makes every convolution f^2 times cheaper.
    `coordinate_channels`: two input channels of fixed (y, x) coordinates (CoordConv). Convolutions
    alone hardly know where they are, so a U-Net trained from scratch is slow to learn which
    condition token (a place in the image) its cross-attention queries should read.
    `patch_coordinates`: two more channels, each pixel's (y, x) inside the patch of the spatial
    feature grid it lies in (-1..1). From a coarse grid (one token per ShapesWorld cell) the U-Net
    then knows where a pixel sits relative to what its token describes, which convolutions would
    otherwise have to work out from the global coordinates.
    """

    model_cpu_offload_seq = "conditioner->unet->vae"
    _optional_components: ClassVar[list[str]] = ["vae"]

    def __init__(
        self,
        conditioner: FeatureConditioner,
        unet: UNet2DConditionModel,
        scheduler,
        vae: AutoencoderKL | None = None,
        pixel_unshuffle: int = 1,
        coordinate_channels: bool = False,
        patch_coordinates: bool = False,
    ):
        super().__init__()
        if pixel_unshuffle < 1 or (vae is not None and pixel_unshuffle != 1):
            raise ValueError("pixel_unshuffle must be >= 1, and 1 for latent-space (VAE) pipelines")
        self.register_modules(conditioner=conditioner, unet=unet, scheduler=scheduler, vae=vae)
        if patch_coordinates and not conditioner.config.spatial_channels:
            raise ValueError("patch_coordinates needs a conditioner with spatial_channels > 0")
        self.register_to_config(
            pixel_unshuffle=pixel_unshuffle,
            coordinate_channels=coordinate_channels,
            patch_coordinates=patch_coordinates,
        )
        self.unet_step = None

    def use_unet_step(self, step) -> DetokenizerPipeline:
        """Denoises with `step(sample, t, conditions) -> prediction` (what `predict` computes: an
        exported U-Net, illume_runtime.OnnxUNetStep) instead of the module; None: the module."""
        self.unet_step = step
        return self

    def save_pretrained(self, save_directory, **kwargs) -> None:
        """diffusers' folder (model_index.json, a subfolder per component) and a model card."""
        super().save_pretrained(save_directory, **kwargs)
        write_model_card(save_directory, self.model_card())

    def model_card(self) -> str:
        """What `save_pretrained` writes as README.md (illume_core.model_card)."""
        grid = self.conditioner.config.grid
        return model_card(
            "ILLUME diffusion detokenizer",
            "Semantic features (or a vision tokenizer's codes) back to pixels by conditioned "
            "denoising (ILLUME, arXiv 2412.06673, section 3.1): a diffusers `DiffusionPipeline` of "
            "a feature conditioner, a `UNet2DConditionModel`, a scheduler"
            + (" and a VAE." if self.vae is not None else ", in pixel space."),
            load="from illume_detokenizer import DetokenizerPipeline\n\n"
            'pipe = DetokenizerPipeline.from_pretrained("THIS_DIR").use_scheduler("dpm++")\n'
            "images = pipe(codes=codes, tokenizer=tokenizer, num_inference_steps=20,\n"
            "              guidance_scale=3.0).images",
            tags=["diffusers", "detokenizer", "image-generation"],
            pipeline_tag="image-to-image",
            facts={
                "images": f"{self.image_size} px",
                "conditions": f"features on a {grid[0]}x{grid[1]} grid" if grid else "features",
                "U-Net": f"{sum(p.numel() for p in self.unet.parameters()) / 1e6:.1f} M parameters",
            },
        )

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, **kwargs):
        """diffusers' loader, strict: a component's config.json with a key its class does not
        take (a misspelt `layers_per_blok`) is an error naming the key, not a silent default."""
        path = Path(pretrained_model_name_or_path)
        if path.is_dir():
            check_component_configs(path)
        return super().from_pretrained(pretrained_model_name_or_path, **kwargs)

    # -- configuration ----------------------------------------------------------------------------

    def use_scheduler(self, name: str) -> DetokenizerPipeline:
        """Switches the sampler ("ddim", "dpm++", "euler", "ddpm"), keeping the trained noise schedule."""
        if name not in SCHEDULERS:
            raise ValueError(f"unknown scheduler {name!r}; choose one of {', '.join(SCHEDULERS)}")
        cls, settings = SCHEDULERS[name]
        self.scheduler = cls.from_config(self.scheduler.config, **settings)
        return self

    @property
    def image_size(self) -> int:
        """Side of the generated images in pixels."""
        if self.vae is None:
            factor = self.config.pixel_unshuffle
        else:
            factor = 2 ** (len(self.vae.config.block_out_channels) - 1)
        return self.unet.config.sample_size * factor

    # -- the U-Net with its conditions ------------------------------------------------------------

    def _time_ids(self, batch: int, device, dtype) -> torch.Tensor:
        """SDXL's micro-conditioning: (original H, W, crop top, left, target H, W)."""
        side = self.image_size
        return torch.tensor([[side, side, 0, 0, side, side]], device=device, dtype=dtype).expand(
            batch, -1
        )

    def _patch_coordinates(self, sample: torch.Tensor) -> torch.Tensor:
        """[B, 2, h, w]: each position's (y, x) inside its feature-grid patch, in -1..1."""
        b, _, h, w = sample.shape
        grid_h, grid_w = self.conditioner.config.grid

        def within(n: int, cells: int) -> torch.Tensor:
            position = (
                (torch.arange(n, device=sample.device, dtype=torch.float32) + 0.5) * cells / n
            )
            return (position.frac() * 2 - 1).to(sample.dtype)

        coords = torch.stack(torch.meshgrid(within(h, grid_h), within(w, grid_w), indexing="ij"))
        return coords.expand(b, -1, -1, -1)

    def predict(
        self, sample: torch.Tensor, t: torch.Tensor, conditions: Conditions
    ) -> torch.Tensor:
        """The U-Net's prediction for noisy `sample` [B, C, h, w] at timesteps t under `conditions`."""
        if conditions.spatial is not None:  # the feature grid, upsampled to the sample's size
            spatial = torch.nn.functional.interpolate(
                conditions.spatial.to(sample.dtype), size=sample.shape[-2:], mode="nearest"
            )
            sample = torch.cat([sample, spatial], dim=1)
        if self.config.coordinate_channels:
            b, _, h, w = sample.shape
            ys = torch.linspace(-1, 1, h, device=sample.device, dtype=sample.dtype)
            xs = torch.linspace(-1, 1, w, device=sample.device, dtype=sample.dtype)
            coords = torch.stack(torch.meshgrid(ys, xs, indexing="ij"))  # [2, h, w]
            sample = torch.cat([sample, coords.expand(b, -1, -1, -1)], dim=1)
        if self.config.get("patch_coordinates", False):
            sample = torch.cat([sample, self._patch_coordinates(sample)], dim=1)
        added = None
        if self.unet.config.addition_embed_type == "text_time":
            if conditions.pooled is None:
                raise ValueError(
                    "this U-Net takes text_time conditions: build the conditioner with pooled_dim "
                    f"= {self.unet.config.projection_class_embeddings_input_dim} - 6 * "
                    f"{self.unet.config.addition_time_embed_dim}"
                )
            added = {
                "text_embeds": conditions.pooled,
                "time_ids": self._time_ids(sample.shape[0], sample.device, sample.dtype),
            }
        return self.unet(
            sample,
            t,
            encoder_hidden_states=conditions.encoder_hidden_states,
            added_cond_kwargs=added,
            return_dict=False,
        )[0]

    # -- pixels <-> the U-Net's space ------------------------------------------------------------

    def to_model_space(self, pixels: torch.Tensor, generator=None) -> torch.Tensor:
        """[B, 3, H, W] in [0, 1] -> what the U-Net denoises (pixels in [-1, 1], or VAE latents)."""
        x = pixels * 2 - 1
        if self.vae is None:
            return torch.nn.functional.pixel_unshuffle(x, self.config.pixel_unshuffle)
        latents = self.vae.encode(x.to(self.vae.dtype)).latent_dist.sample(generator)
        return latents * self.vae.config.scaling_factor

    def to_pixels(self, sample: torch.Tensor) -> torch.Tensor:
        if self.vae is not None:
            sample = self.vae.decode(sample / self.vae.config.scaling_factor, return_dict=False)[0]
        else:
            sample = torch.nn.functional.pixel_shuffle(sample, self.config.pixel_unshuffle)
        return ((sample.float() + 1) / 2).clamp(0, 1)

    # -- sampling ---------------------------------------------------------------------------------

    @torch.no_grad()
    def __call__(
        self,
        features: torch.Tensor | None = None,
        *,
        codes: torch.Tensor | None = None,
        tokenizer=None,
        num_inference_steps: int = 20,
        guidance_scale: float = 3.0,
        generator: torch.Generator | list[torch.Generator] | None = None,
        output_type: str = "pil",
        return_dict: bool = True,
    ) -> DetokenizerPipelineOutput | tuple:
        """Images for B feature maps (or B code grids, decoded by `tokenizer.decode_features`).

        Args:
            features: [B, N, D] reconstructed semantic features.
            codes, tokenizer: instead of features, codes [B, h, w] and the tokenizer that made them.
            num_inference_steps: denoising steps of the current scheduler.
            guidance_scale: classifier-free guidance scale; <= 1 runs the conditional branch only.
            generator: one generator, or one per image (then each image depends only on its own
                seed, so a batch equals the same images drawn one by one).
            output_type: "pil" (images and pixels) or "pt" (pixels only).
            return_dict: False returns the tuple (images, pixels), as diffusers pipelines do.
        """
        steps, guidance = num_inference_steps, guidance_scale
        if (features is None) == (codes is None):
            raise ValueError("pass either features [B, N, D] or codes [B, h, w] (with tokenizer=)")
        if codes is not None:
            if tokenizer is None:
                raise ValueError("codes need the tokenizer that made them: pass tokenizer=...")
            features = tokenizer.decode_features(codes)
        if steps < 1:
            raise ValueError(f"num_inference_steps must be >= 1, got {steps}")
        if output_type not in ("pil", "pt"):
            raise ValueError(f"output_type must be 'pil' or 'pt', got {output_type!r}")
        device, dtype = self.unet.device, self.unet.dtype
        batch = len(features)
        if isinstance(generator, list) and len(generator) != batch:
            raise ValueError(
                f"got {len(generator)} generators for {batch} images; pass one per image"
            )

        # into the U-Net's dtype; integer "features" (codes passed by mistake) reach the
        # conditioner as they are, which names the mistake
        features = features.to(device, dtype if features.is_floating_point() else None)
        use_cfg = guidance > 1.0
        conditions = self.conditioner(features)
        if use_cfg:  # unconditional and conditional rows in one U-Net batch
            conditions = Conditions.cat([self.conditioner.unconditional(batch), conditions])
        conditions = conditions.to(dtype)

        shape = (
            batch,
            self.unet.config.out_channels,
            self.unet.config.sample_size,
            self.unet.config.sample_size,
        )
        sample = randn_tensor(shape, generator=generator, device=device, dtype=dtype)
        self.scheduler.set_timesteps(steps, device=device)
        sample = sample * self.scheduler.init_noise_sigma
        step_kwargs = {}  # stochastic samplers draw their noise from the same generator(s)
        if "generator" in inspect.signature(self.scheduler.step).parameters:
            step_kwargs["generator"] = generator
        for t in self.progress_bar(self.scheduler.timesteps):
            model_in = torch.cat([sample, sample]) if use_cfg else sample
            model_in = self.scheduler.scale_model_input(model_in, t)
            prediction = (self.unet_step or self.predict)(
                model_in, t.expand(len(model_in)), conditions
            )
            if use_cfg:
                uncond, cond = prediction.chunk(2)
                prediction = uncond + guidance * (cond - uncond)
            sample = self.scheduler.step(prediction, t, sample, **step_kwargs, return_dict=False)[0]

        pixels = self.to_pixels(sample)
        images = to_pil(pixels) if output_type == "pil" else []
        if not return_dict:
            return images, pixels
        return DetokenizerPipelineOutput(images=images, pixels=pixels)
