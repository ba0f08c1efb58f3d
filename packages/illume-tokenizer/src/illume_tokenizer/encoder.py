"""Frozen vision encoders: any Hugging Face vision model from a local directory.

SigLIP, CLIP and other ViTs load through the Auto classes; the patch tokens of a chosen layer are
the semantic features X = {x_1..x_N} (class tokens dropped). The image processor saved beside the
weights (`preprocessor_config.json`) is used when present. The built-in small encoders (`tiny`,
`shapes`) are real `SiglipModel`s built from a preset, so they take exactly this path too.
"""

from __future__ import annotations

import contextlib
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

#: Presets of the built-in SigLIP-architecture encoders (vision + a small text tower for pretraining).
SIGLIP_PRESETS: dict[str, dict[str, Any]] = {
    "tiny": {
        "vision": {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2, "image_size": 32, "patch_size": 8},
        "text": {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1, "num_attention_heads": 2, "max_position_embeddings": 24},
    },
    "shapes": {
        "vision": {"hidden_size": 96, "intermediate_size": 256, "num_hidden_layers": 4, "num_attention_heads": 4, "image_size": 32, "patch_size": 4},
        "text": {"hidden_size": 96, "intermediate_size": 256, "num_hidden_layers": 2, "num_attention_heads": 4, "max_position_embeddings": 24},
    },
    # One patch per ShapesWorld cell (36 px images, 12 px patches: a 3x3 grid of tokens), so that a
    # token says what one cell holds: the foundation the default demo starts from.
    "shapes-cells": {
        "vision": {"hidden_size": 128, "intermediate_size": 384, "num_hidden_layers": 4, "num_attention_heads": 4, "image_size": 36, "patch_size": 12},
        "text": {"hidden_size": 128, "intermediate_size": 384, "num_hidden_layers": 2, "num_attention_heads": 4, "max_position_embeddings": 24},
    },
}  # fmt: skip

#: The vision tower of SigLIP-so400m-patch14-384, the paper-scale encoder (weights from a local path).
SIGLIP_SO400M_VISION: dict[str, Any] = {
    "hidden_size": 1152, "intermediate_size": 4304, "num_hidden_layers": 27, "num_attention_heads": 16,
    "image_size": 384, "patch_size": 14,
}  # fmt: skip


@contextlib.contextmanager
def quiet_transformers():
    """Silences transformers' load reports and progress bars (e.g. the text-tower keys we skip on purpose)."""
    from transformers.utils import logging

    level = logging.get_verbosity()
    bars = logging.is_progress_bar_enabled()
    logging.set_verbosity_error()
    logging.disable_progress_bar()
    try:
        yield
    finally:
        logging.set_verbosity(level)
        if bars:
            logging.enable_progress_bar()


def build_siglip(preset: str, vocab_size: int, pad_token_id: int = 0, eos_token_id: int = 1):
    """A randomly initialised transformers `SiglipModel` from a preset (trained by the encoder stage)."""
    from transformers import SiglipConfig, SiglipModel

    if preset not in SIGLIP_PRESETS:
        raise ValueError(f"no SigLIP preset {preset!r}; presets: {', '.join(SIGLIP_PRESETS)}")
    spec = SIGLIP_PRESETS[preset]
    text = dict(
        spec["text"],
        vocab_size=vocab_size,
        pad_token_id=pad_token_id,
        eos_token_id=eos_token_id,
        bos_token_id=None,
    )
    with quiet_transformers():  # SiglipTextConfig's own defaults warn about its default token ids
        config = SiglipConfig(text_config=text, vision_config=dict(spec["vision"]))
        model = SiglipModel(config)
    with torch.no_grad():  # the SigLIP paper's initial temperature and bias (t' = log 10, b = -10)
        model.logit_scale.fill_(math.log(10.0))
        model.logit_bias.fill_(-10.0)
    return model


def siglip_image_processor(
    image_size: int,
    image_mean: tuple[float, float, float] = (0.5, 0.5, 0.5),
    image_std: tuple[float, float, float] = (0.5, 0.5, 0.5),
):
    """The image processor saved with the built-in encoders: resize, then (x / 255 - mean) / std."""
    from transformers.models.siglip.image_processing_pil_siglip import SiglipImageProcessorPil

    size = {"height": image_size, "width": image_size}
    return SiglipImageProcessorPil(
        size=size, image_mean=list(image_mean), image_std=list(image_std)
    )


def vision_tower(model: nn.Module) -> nn.Module:
    """The vision `PreTrainedModel` of a vision model or of an image-text model (its text tower dropped)."""
    config = getattr(model, "config", None)
    if config is None or not hasattr(config, "vision_config"):
        return model
    from transformers.models.auto.modeling_auto import MODEL_MAPPING

    vision_cls = MODEL_MAPPING[type(config.vision_config)]
    tower = vision_cls(config.vision_config)
    tower.vision_model = model.vision_model  # share the trained weights
    return tower


class VisionEncoder(nn.Module):
    """Patch features of a Hugging Face vision model.

    Args:
        model: a transformers vision model (SiglipVisionModel, CLIPVisionModel, ...) or a full
            image-text model, whose `vision_model` is used.
        feature_layer: None for the final (post-norm) output; an int indexes `hidden_states`
            (-2 is the penultimate layer, LLaVA's choice).
        image_processor: the processor that prepares PIL images for this model, if any.
    """

    def __init__(
        self, model: nn.Module, feature_layer: int | None = None, image_processor: Any = None
    ):
        super().__init__()
        self.model = vision_tower(model)
        self.feature_layer = feature_layer
        self.image_processor = image_processor
        config = self.model.config
        size = config.image_size if isinstance(config.image_size, int) else config.image_size[0]
        patch = config.patch_size if isinstance(config.patch_size, int) else config.patch_size[0]
        self.image_size = int(size)
        self.grid = (self.image_size // int(patch), self.image_size // int(patch))
        self.dim = int(config.hidden_size)

    @classmethod
    def from_pretrained(
        cls,
        path: str | os.PathLike,
        feature_layer: int | None = None,
        dtype: torch.dtype | None = None,
    ) -> VisionEncoder:
        """Loads the vision tower of any HF model directory (never from a hub: pass a local path)."""
        from transformers import AutoConfig, AutoImageProcessor, AutoModel

        path = Path(path)
        if not (path / "config.json").is_file():
            raise FileNotFoundError(
                f"{path} has no config.json; pass the local directory of a Hugging Face vision model "
                "(e.g. a downloaded SigLIP), or build one with illume_tokenizer.build_siglip"
            )
        from transformers.models.auto.modeling_auto import MODEL_MAPPING

        with quiet_transformers():  # a SigLIP config warns about its default text tower's token ids
            config = AutoConfig.from_pretrained(path)
        kwargs = {"dtype": dtype} if dtype is not None else {}
        has_weights = any(path.glob("*.safetensors")) or any(path.glob("*.bin"))
        if not has_weights and torch.empty(0).device.type == "meta":
            # Shape-only instantiation (e.g. checking a paper-scale recipe without its weights).
            vision_config = getattr(config, "vision_config", config)
            return cls(
                MODEL_MAPPING[type(vision_config)](vision_config), feature_layer
            ).requires_grad_(False)
        with quiet_transformers():
            if hasattr(
                config, "vision_config"
            ):  # an image-text checkpoint: load its vision tower only
                model = MODEL_MAPPING[type(config.vision_config)].from_pretrained(path, **kwargs)
            else:
                model = AutoModel.from_pretrained(path, **kwargs)
        processor = None
        if (path / "preprocessor_config.json").is_file():
            processor = AutoImageProcessor.from_pretrained(path)
        return cls(model, feature_layer, processor).eval().requires_grad_(False)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        """[B, 3, H, W] normalised pixels -> [B, N, D] patch features, N = grid[0] * grid[1]."""
        return self.layers(pixels, [self.feature_layer])[0]

    def layers(self, pixels: torch.Tensor, layers: Sequence[int | None]) -> list[torch.Tensor]:
        """The patch features [B, N, D] of several layers (as `feature_layer` names one), from one
        pass of the model."""
        hidden = any(layer is not None for layer in layers)
        out = self.model(pixel_values=pixels, output_hidden_states=hidden)
        n = self.grid[0] * self.grid[1]
        picked = []
        for layer in layers:
            tokens = out.last_hidden_state if layer is None else out.hidden_states[layer]
            if tokens.shape[1] == n + 1:  # a class token (CLIP) comes first
                tokens = tokens[:, 1:]
            picked.append(tokens)
        return picked

    def preprocess(self, images) -> torch.Tensor:
        """PIL images -> [B, 3, H, W] pixels, with the model's own image processor."""
        if self.image_processor is None:
            raise ValueError(
                "this encoder has no image processor; save one in its directory (preprocessor_config.json)"
            )
        return self.image_processor(images=list(images), return_tensors="pt")["pixel_values"]
