"""The bridge from the tokenizer's reconstructed semantic features to a U-Net's conditions.

    features x_rec [B, N, D] --LayerNorm, Linear--> (+ position) --> encoder_hidden_states [B, N, C]
                             --mean over N, LayerNorm, Linear-->      pooled [B, P]   (SDXL only)
                             --LayerNorm, Linear, as an h x w map-->  spatial [B, S, h, w] (optional)

C is the U-Net's cross-attention width (2048 for SDXL); P its pooled text-embedding width (1280
for SDXL, fed as `added_cond_kwargs["text_embeds"]`). The null condition of classifier-free
guidance lives in feature space (`null_features`, learned or zero), so conditional and
unconditional inputs take the same path.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from torch import nn

NULL_CONDITIONS = ("learned", "zero")
POSITION_EMBEDDINGS = ("learned", "none")


@dataclass
class Conditions:
    """encoder_hidden_states: [B, N, C]; pooled: [B, P] or None (only U-Nets with text_time
    embeddings); spatial: [B, S, h, w] or None (only with `spatial_channels`)."""

    encoder_hidden_states: torch.Tensor
    pooled: torch.Tensor | None = None
    spatial: torch.Tensor | None = None

    @staticmethod
    def cat(parts: list[Conditions]) -> Conditions:
        def join(name):
            values = [getattr(p, name) for p in parts]
            return None if values[0] is None else torch.cat(values)

        return Conditions(join("encoder_hidden_states"), join("pooled"), join("spatial"))

    def to(self, dtype) -> Conditions:
        return Conditions(
            *(
                None if x is None else x.to(dtype)
                for x in (self.encoder_hidden_states, self.pooled, self.spatial)
            )
        )


class FeatureConditioner(ModelMixin, ConfigMixin):
    """Projects semantic features into a U-Net's conditioning space.

    Args:
        feature_dim: D, the width of the tokenizer's features.
        num_tokens: N, features per image (the tokenizer's h * w).
        cross_attention_dim: C, the U-Net's `cross_attention_dim`.
        pooled_dim: P, width of the pooled condition for `addition_embed_type="text_time"` U-Nets
            (SDXL: 1280); None when the U-Net takes none.
        null_condition: "learned" (a trained null feature map) or "zero" (zeros), the features of
            the unconditional branch and of dropped conditions in training.
        position_embedding: "learned" adds a per-token position to the conditions (cross-attention
            alone does not know which feature came from where); "none" trusts the features.
        spatial_channels: S > 0 also lays the features out as their h x w grid, projected to S
            channels, for the pipeline to upsample and feed the U-Net as extra input channels.
            Patch features are aligned with the image, so this local path teaches a U-Net trained
            from scratch (ShapesWorld) in a fraction of the steps cross-attention alone needs;
            0 (SDXL) keeps cross-attention as the only path.
        grid: (h, w) of the features, h * w = num_tokens (needed with spatial_channels).
    """

    @register_to_config
    def __init__(
        self,
        feature_dim: int,
        num_tokens: int,
        cross_attention_dim: int,
        pooled_dim: int | None = None,
        null_condition: str = "learned",
        position_embedding: str = "learned",
        spatial_channels: int = 0,
        grid: tuple[int, int] | None = None,
    ):
        super().__init__()
        if spatial_channels and (grid is None or grid[0] * grid[1] != num_tokens):
            raise ValueError(
                f"spatial_channels needs grid=(h, w) with h * w = num_tokens ({num_tokens})"
            )
        if null_condition not in NULL_CONDITIONS:
            raise ValueError(
                f"null_condition must be one of {NULL_CONDITIONS}, got {null_condition!r}"
            )
        if position_embedding not in POSITION_EMBEDDINGS:
            raise ValueError(
                f"position_embedding must be one of {POSITION_EMBEDDINGS}, got {position_embedding!r}"
            )
        self.norm = nn.LayerNorm(feature_dim)
        self.proj = nn.Linear(feature_dim, cross_attention_dim)
        self.position = (
            nn.Parameter(torch.zeros(num_tokens, cross_attention_dim))
            if position_embedding == "learned"
            else None
        )
        null = torch.zeros(num_tokens, feature_dim)
        if null_condition == "learned":
            self.null_features = nn.Parameter(null)
        else:
            self.register_buffer("null_features", null, persistent=False)
        if pooled_dim is not None:
            self.pooled_norm = nn.LayerNorm(feature_dim)
            self.pooled_proj = nn.Linear(feature_dim, pooled_dim)
        if spatial_channels:
            self.spatial_norm = nn.LayerNorm(feature_dim)
            self.spatial_proj = nn.Linear(feature_dim, spatial_channels)

    def check(self, features: torch.Tensor) -> None:
        n, d = self.config.num_tokens, self.config.feature_dim
        if features.ndim != 3 or features.shape[1:] != (n, d):
            raise ValueError(
                f"features must be [B, {n}, {d}] (the tokenizer's decode_features output), "
                f"got {list(features.shape)}"
            )
        if not features.is_floating_point():
            raise TypeError(
                f"features must be floating point, got {features.dtype}; pass codes with the "
                "tokenizer (codes=..., tokenizer=...) to decode them first"
            )

    def forward(self, features: torch.Tensor, drop: torch.Tensor | None = None) -> Conditions:
        """features [B, N, D]; drop: [B] bool, rows replaced by the null condition (CFG training)."""
        self.check(features)
        features = features.to(self.proj.weight.dtype)
        if drop is not None:
            features = torch.where(drop[:, None, None], self.null_features.to(features), features)
        states = self.proj(self.norm(features))  # [B, N, C]
        if self.position is not None:
            states = states + self.position
        pooled = spatial = None
        if self.config.pooled_dim is not None:
            pooled = self.pooled_proj(self.pooled_norm(features.mean(dim=1)))  # [B, P]
        if self.config.spatial_channels:
            h, w = self.config.grid
            spatial = self.spatial_proj(self.spatial_norm(features))  # [B, N, S]
            spatial = spatial.transpose(1, 2).reshape(features.shape[0], -1, h, w)  # [B, S, h, w]
        return Conditions(states, pooled, spatial)

    def unconditional(self, batch_size: int) -> Conditions:
        null = self.null_features.to(self.proj.weight.dtype)
        return self(null.expand(batch_size, -1, -1))
