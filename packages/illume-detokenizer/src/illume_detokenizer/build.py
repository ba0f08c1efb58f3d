"""Building detokenizers: from a preset (pixel space, trained from scratch) or from a local SDXL.

    pipe = build_pipeline(DetokenizerConfig.from_name("shapes"), feature_dim=96, num_tokens=64)
    pipe = from_sdxl("/models/sdxl-base-1.0", feature_dim=1152, num_tokens=729)

`trainable_parameters(pipe, "attention")` gives the paper's choice (only the U-Net's attention
layers, plus the new conditioner); "all" trains every U-Net weight.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import ClassVar

from diffusers import (
    AutoencoderKL,
    DDPMScheduler,
    DPMSolverMultistepScheduler,
    UNet2DConditionModel,
)
from diffusers.models.attention_processor import Attention
from torch import nn

from illume_core import Config

from .conditioner import FeatureConditioner
from .pipeline import DetokenizerPipeline

TRAINABLE = ("attention", "all")


@dataclass
class DetokenizerConfig(Config):
    """A U-Net built from scratch, with its noise schedule and conditioner settings."""

    image_size: int = 32
    """Side of the images in pixels."""
    pixel_unshuffle: int = 1
    """The U-Net denoises [3 f^2, S/f, S/f] space-to-depth pixels (f = 1: plain pixels). f = 2
    halves the compute but drew ShapesWorld's circles as squares (2x2-block texture: scene
    recovery 0.82 against 0.885 with f = 1 and a cheap full-resolution level, RESULTS.md)."""
    coordinate_channels: bool = True
    """Feed (y, x) coordinates as two extra input channels (see DetokenizerPipeline)."""
    patch_coordinates: bool = False
    """Feed each pixel's position inside its feature-grid patch as two more channels (see
    DetokenizerPipeline); needs spatial_channels."""
    spatial_channels: int = 32
    """Feed the feature grid, projected to this many channels, as extra input channels too
    (see FeatureConditioner); 0 for cross-attention only."""
    block_out_channels: tuple[int, ...] = (32, 64, 96, 128)
    """32x32 (narrow: edges), 16x16, 8x8 and 4x4 levels; attention at the two coarsest."""
    down_block_types: tuple[str, ...] = (
        "DownBlock2D",
        "DownBlock2D",
        "CrossAttnDownBlock2D",
        "CrossAttnDownBlock2D",
    )
    up_block_types: tuple[str, ...] = (
        "CrossAttnUpBlock2D",
        "CrossAttnUpBlock2D",
        "UpBlock2D",
        "UpBlock2D",
    )
    layers_per_block: int = 1
    attention_head_dim: int = 32
    """Channels per attention head."""
    cross_attention_dim: int = 128
    """Width of the conditions the U-Net cross-attends to."""
    norm_num_groups: int = 32
    addition_embed_type: str | None = None
    """'text_time' for an SDXL-shaped U-Net (pooled condition + size micro-conditioning)."""
    pooled_dim: int | None = None
    """Width of the pooled condition ('text_time' U-Nets only)."""
    addition_time_embed_dim: int | None = None
    num_train_timesteps: int = 1000
    beta_schedule: str = "squaredcos_cap_v2"
    """'squaredcos_cap_v2' suits small pixel-space images; SDXL uses 'scaled_linear'."""
    prediction_type: str = "sample"
    """What the U-Net predicts. 'sample' (the clean image) learns fastest when the condition nearly
    determines the image, as a tokenizer's features do, and never divides by the vanishing signal
    of the cosine schedule's last steps, as 'epsilon' does; SDXL itself uses 'epsilon'."""
    null_condition: str = "learned"
    position_embedding: str = "learned"

    presets: ClassVar[dict] = {
        "tiny": {"block_out_channels": (32, 32), "down_block_types": ("DownBlock2D", "CrossAttnDownBlock2D"),
                 "up_block_types": ("CrossAttnUpBlock2D", "UpBlock2D"), "attention_head_dim": 8,
                 "cross_attention_dim": 32, "norm_num_groups": 8, "image_size": 16, "pixel_unshuffle": 1},
        "shapes": {},
        # For a tokenizer with one token per ShapesWorld cell (36 px, a 3x3 grid): each pixel
        # knows its place in its cell, and the U-Net works on 2x2 pixel blocks (18, 9 and 5
        # positions a side), 3.4 times cheaper a step than on pixels.
        "shapes-cells": {"image_size": 36, "pixel_unshuffle": 2, "patch_coordinates": True, "block_out_channels": (32, 64, 128),
                         "down_block_types": ("DownBlock2D", "DownBlock2D", "CrossAttnDownBlock2D"),
                         "up_block_types": ("CrossAttnUpBlock2D", "UpBlock2D", "UpBlock2D")},
        # SDXL-shaped in miniature: text_time additional embeddings, as in tests of the SDXL path.
        "tiny-sdxl": {"block_out_channels": (32, 32), "down_block_types": ("DownBlock2D", "CrossAttnDownBlock2D"),
                      "up_block_types": ("CrossAttnUpBlock2D", "UpBlock2D"), "attention_head_dim": 8,
                      "cross_attention_dim": 64, "norm_num_groups": 8, "image_size": 16,
                      "addition_embed_type": "text_time", "pooled_dim": 32, "addition_time_embed_dim": 8, "pixel_unshuffle": 1,
                      "beta_schedule": "scaled_linear"},
    }  # fmt: skip


def build_pipeline(
    config: DetokenizerConfig,
    feature_dim: int,
    num_tokens: int,
    grid: tuple[int, int] | None = None,
) -> DetokenizerPipeline:
    """A randomly initialised pixel-space pipeline from a config (the ShapesWorld detokenizer).
    `grid`: the features' (h, w), default square."""
    if grid is None:
        side = math.isqrt(num_tokens)
        grid = (side, side) if side * side == num_tokens else None
    spatial = config.spatial_channels if grid is not None else 0
    patch_coordinates = config.patch_coordinates and bool(spatial)
    text_time = config.addition_embed_type == "text_time"
    if text_time and (config.pooled_dim is None or config.addition_time_embed_dim is None):
        raise ValueError(
            "addition_embed_type='text_time' needs pooled_dim and addition_time_embed_dim"
        )
    f = config.pixel_unshuffle
    if config.image_size % f:
        raise ValueError(f"image_size {config.image_size} is not a multiple of pixel_unshuffle {f}")
    unet = UNet2DConditionModel(
        sample_size=config.image_size // f,
        in_channels=3 * f * f
        + (2 if config.coordinate_channels else 0)
        + (2 if patch_coordinates else 0)
        + spatial,
        out_channels=3 * f * f,
        block_out_channels=config.block_out_channels,
        down_block_types=config.down_block_types,
        up_block_types=config.up_block_types,
        layers_per_block=config.layers_per_block,
        attention_head_dim=config.attention_head_dim,
        cross_attention_dim=config.cross_attention_dim,
        norm_num_groups=config.norm_num_groups,
        addition_embed_type=config.addition_embed_type,
        addition_time_embed_dim=config.addition_time_embed_dim,
        projection_class_embeddings_input_dim=(
            config.pooled_dim + 6 * config.addition_time_embed_dim if text_time else None
        ),
    )
    conditioner = FeatureConditioner(
        feature_dim=feature_dim,
        num_tokens=num_tokens,
        cross_attention_dim=config.cross_attention_dim,
        pooled_dim=config.pooled_dim if text_time else None,
        null_condition=config.null_condition,
        position_embedding=config.position_embedding,
        spatial_channels=spatial,
        grid=grid if spatial else None,
    )
    # The noise schedule of training; sampling defaults to DPM-Solver++ on it (deterministic).
    scheduler = DPMSolverMultistepScheduler(
        num_train_timesteps=config.num_train_timesteps,
        beta_schedule=config.beta_schedule,
        prediction_type=config.prediction_type,
        algorithm_type="dpmsolver++",
        solver_order=2,
    )
    return DetokenizerPipeline(
        conditioner=conditioner, unet=unet, scheduler=scheduler, pixel_unshuffle=f,
        coordinate_channels=config.coordinate_channels,
        patch_coordinates=patch_coordinates,
    )  # fmt: skip


def from_sdxl(
    sdxl_dir: str | os.PathLike,
    feature_dim: int,
    num_tokens: int,
    null_condition: str = "learned",
    position_embedding: str = "learned",
) -> DetokenizerPipeline:
    """The paper's detokenizer: U-Net, VAE and noise schedule of a local SDXL directory (diffusers
    layout: unet/, vae/, scheduler/); features projected to the U-Net's cross-attention width
    (2048) and pooled into `text_embeds` (1280); `time_ids` are filled in by the pipeline."""
    unet = UNet2DConditionModel.from_pretrained(sdxl_dir, subfolder="unet")
    vae = AutoencoderKL.from_pretrained(sdxl_dir, subfolder="vae")
    scheduler = DDPMScheduler.from_pretrained(sdxl_dir, subfolder="scheduler")
    if unet.config.addition_embed_type != "text_time":
        raise ValueError(
            f"{sdxl_dir}/unet is not SDXL-shaped (addition_embed_type="
            f"{unet.config.addition_embed_type!r}, expected 'text_time')"
        )
    pooled_dim = (
        unet.config.projection_class_embeddings_input_dim - 6 * unet.config.addition_time_embed_dim
    )
    conditioner = FeatureConditioner(
        feature_dim=feature_dim,
        num_tokens=num_tokens,
        cross_attention_dim=unet.config.cross_attention_dim,
        pooled_dim=pooled_dim,
        null_condition=null_condition,
        position_embedding=position_embedding,
    )
    return DetokenizerPipeline(conditioner=conditioner, unet=unet, scheduler=scheduler, vae=vae)


def attention_parameters(unet: nn.Module) -> list[nn.Parameter]:
    """Parameters of every attention layer (self- and cross-attention) of a U-Net."""
    seen, params = set(), []
    for module in unet.modules():
        if isinstance(module, Attention):
            for p in module.parameters():
                if id(p) not in seen:
                    seen.add(id(p))
                    params.append(p)
    return params


def trainable_parameters(pipe: DetokenizerPipeline, trainable: str) -> list[nn.Parameter]:
    """Marks what trains and returns it: the conditioner always; of the U-Net, its attention
    layers ("attention", the paper's choice) or everything ("all"). The VAE never trains."""
    if trainable not in TRAINABLE:
        raise ValueError(f"trainable must be one of {TRAINABLE}, got {trainable!r}")
    if pipe.vae is not None:
        pipe.vae.requires_grad_(False)
    pipe.conditioner.requires_grad_(True)
    if trainable == "all":
        pipe.unet.requires_grad_(True)
        unet_params = list(pipe.unet.parameters())
    else:
        pipe.unet.requires_grad_(False)
        unet_params = attention_parameters(pipe.unet)
        for p in unet_params:
            p.requires_grad_(True)
    return [p for p in pipe.conditioner.parameters() if p.requires_grad] + unet_params
