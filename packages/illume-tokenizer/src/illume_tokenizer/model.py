"""ILLUME's semantic vision tokenizer: frozen encoder -> VQ codes -> feature decoder -> X_rec.

    pixels [B, 3, H, W] --encoder--> x [B, N, D] --proj--> z [B, N, C] --VQ--> codes [B, h, w]
    codes --codebook--> q [B, N, C] --decoder (transformer)--> x_rec [B, N, D]

Trained with Eq. 2: smoothL1(x, x_rec) + (1 - cos(x, x_rec)), plus the quantizer's commitment
loss; the encoder stays frozen. A tokenizer directory holds `config.json`, `model.safetensors`
(projection, codebook, decoder) and, unless saved by reference, the encoder in `encoder/`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from illume_core import (
    Config,
    VisionTokens,
    load_checkpoint,
    model_card,
    save_checkpoint,
    write_model_card,
)

from .encoder import VisionEncoder, quiet_transformers
from .quantizer import VectorQuantizer

PAPER_LINK = "ILLUME, arXiv 2412.06673"


@dataclass
class TokenizerConfig(Config):
    """Everything that defines a tokenizer besides its encoder weights."""

    encoder: str = "encoder"
    """Encoder directory: relative to the tokenizer directory, or absolute (a saved-by-reference SigLIP)."""
    feature_layer: int | None = None
    """Encoder layer whose patch tokens the codes quantize: None = final output, -2 = penultimate."""
    target_layer: int | None = None
    """Encoder layer the decoder reconstructs from the codes (`features`, what the detokenizer
    renders): None, the layer the codes quantize (ILLUME's tokenizer). A deeper layer than
    `feature_layer` 0 gives codes that are each a function of their own patch, as patch
    embeddings are, yet stand for what the deeper layer says of the image: on a small encoder
    whose deeper layers mix every patch, an empty cell's code there changes with what the other
    cells hold, so an edit could copy no code it leaves alone (benchmarks/RESULTS.md)."""
    codebook_size: int = 1024
    """K, the number of codes (one new LLM token each)."""
    code_dim: int = 32
    """Dimension of the codes; features are projected down to it before the lookup."""
    quantizer_update: str = "ema"
    """'ema' (moving-average codebook) or 'straight_through' (codebook loss)."""
    l2_normalize: bool = True
    """Look codes up by cosine on the unit sphere."""
    commitment: float = 0.25
    """Weight of the commitment loss ||z - sg(c)||^2."""
    ema_decay: float = 0.99
    dead_threshold: float = 0.03
    """A code whose usage falls below this share of uniform is restarted."""
    dead_code_restart: str = "random"
    """Where a dead code restarts: 'random' (a random input of the batch) or 'error' (an input
    drawn by its squared distance from its code, k-means++'s seeding: for features where a few
    points hold most of the mass, as patch-local features do)."""
    decoder_width: int = 256
    decoder_depth: int = 4
    decoder_heads: int = 4
    feature_dim: int = 0
    """D, the encoder's width (filled in from the encoder)."""
    grid: tuple[int, int] = (0, 0)
    """(h, w) of the patch grid (filled in from the encoder)."""
    image_size: int = 0
    """Input side in pixels (filled in from the encoder)."""

    presets: ClassVar[dict] = {
        "tiny": {"codebook_size": 64, "code_dim": 8, "decoder_width": 32, "decoder_depth": 1, "decoder_heads": 2},
        # Penultimate layer, as LLaVA and ILLUME read SigLIP: a probe of the `shapes` encoder finds
        # circle-vs-square in 97% of scenes there and 93% after the last layer (benchmarks/RESULTS.md).
        "shapes": {"codebook_size": 1024, "code_dim": 32, "decoder_width": 192, "decoder_depth": 4, "decoder_heads": 4, "feature_layer": -2},
        # The patch embeddings (layer 0): a patch's code depends on its own pixels only, so an edit
        # changes no code outside what it touches and the MLLM can copy the rest. 256 codes, dead
        # ones re-seeded where the error is: 81% used at 600 steps (1,024 codes: 38%; random
        # restarts: 72%), all 256 at the recipe's 2,500 (cosine 0.995).
        # The ShapesWorld recipe's tokenizer; understanding then reads a deeper layer too
        # (benchmarks/RESULTS.md).
        "shapes-local": {"codebook_size": 256, "code_dim": 32, "decoder_width": 192, "decoder_depth": 4, "decoder_heads": 4, "feature_layer": 0, "dead_code_restart": "error"},
        # The same with 1,024 codes: 256 cannot tell a 4x4-pixel corner of a circle from one of a
        # square (drawn from their codes, 93 of 676 validation objects take the wrong shape; 50
        # with 1,024), so two-object scenes lose a shape. 96% of the codes used at 800 steps
        # (benchmarks/RESULTS.md).
        "shapes-local-1024": {"codebook_size": 1024, "code_dim": 32, "decoder_width": 192, "decoder_depth": 4, "decoder_heads": 4, "feature_layer": 0, "dead_code_restart": "error"},
        # On the `shapes-cells` encoder (one token per cell of the 3x3 grid): 64 codes for
        # ShapesWorld's 19 cell contents (18 objects and empty) and how they sit in the cell; the
        # penultimate layer, where the encoder's dense loss made each token name its cell's
        # content. An object's code stays when the rest of the image changes (97% of 172 cells
        # an edit leaves alone), an empty cell's does not (27% of 1,234: 43 codes say "empty" and
        # something of the other cells), so an edit cannot copy them; `target_layer` on
        # `feature_layer` 0 gives codes that stay (benchmarks/RESULTS.md).
        "shapes-cells": {"codebook_size": 64, "code_dim": 16, "decoder_width": 128, "decoder_depth": 2, "decoder_heads": 4, "feature_layer": -2, "dead_code_restart": "error"},
        # Paper scale on SigLIP-so400m (1152-d features, 27x27 patches at 384 px).
        "illume-7b": {"codebook_size": 16384, "code_dim": 32, "decoder_width": 1152, "decoder_depth": 12, "decoder_heads": 16, "feature_layer": -2},
    }  # fmt: skip


@dataclass
class TokenizerOutput:
    """features: [B, N, D] encoder features x; reconstruction: [B, N, D] x_rec; codes: [B, h, w];
    loss = reconstruction_loss + quantizer_loss; cosine: mean cos(x, x_rec)."""

    features: torch.Tensor
    reconstruction: torch.Tensor
    codes: torch.Tensor
    loss: torch.Tensor
    reconstruction_loss: torch.Tensor
    quantizer_loss: torch.Tensor
    cosine: torch.Tensor
    perplexity: torch.Tensor
    usage: torch.Tensor


def feature_loss(x: torch.Tensor, x_rec: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """ILLUME Eq. 2 averaged over tokens: smoothL1 + (1 - cosine). Returns (loss, mean cosine)."""
    cosine = F.cosine_similarity(x_rec.float(), x.float(), dim=-1).mean()
    return F.smooth_l1_loss(x_rec.float(), x.float()) + (1 - cosine), cosine


class FeatureDecoder(nn.Module):
    """Quantized codes [B, N, C] -> reconstructed features [B, N, D] (pre-norm transformer blocks)."""

    def __init__(
        self, code_dim: int, width: int, depth: int, heads: int, tokens: int, feature_dim: int
    ):
        super().__init__()
        self.proj_in = nn.Linear(code_dim, width)
        self.position = nn.Parameter(torch.zeros(1, tokens, width))
        nn.init.trunc_normal_(self.position, std=0.02)
        layer = nn.TransformerEncoderLayer(
            width,
            heads,
            4 * width,
            dropout=0.0,
            activation="gelu",
            batch_first=True,
            norm_first=True,
        )
        self.blocks = nn.TransformerEncoder(layer, depth, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(width)
        self.proj_out = nn.Linear(width, feature_dim)

    def forward(self, quantized: torch.Tensor) -> torch.Tensor:
        h = self.proj_in(quantized) + self.position  # [B, N, W]
        return self.proj_out(self.norm(self.blocks(h)))  # [B, N, D]


class SemanticTokenizer(nn.Module):
    """Implements illume_core's VisionTokenizer protocol."""

    def __init__(self, config: TokenizerConfig, encoder: VisionEncoder):
        super().__init__()
        config = config.replace(
            feature_dim=encoder.dim,
            grid=tuple(encoder.grid),
            image_size=encoder.image_size,
            feature_layer=encoder.feature_layer,
        )
        self.config = config
        self.encoder = encoder.eval().requires_grad_(False)
        self.proj = nn.Linear(config.feature_dim, config.code_dim)
        self.quantizer = VectorQuantizer(
            config.codebook_size, config.code_dim, config.quantizer_update, config.l2_normalize,
            config.commitment, config.ema_decay, config.dead_threshold,
            restart=config.dead_code_restart,
        )  # fmt: skip
        tokens = config.grid[0] * config.grid[1]
        self.decoder = FeatureDecoder(
            config.code_dim,
            config.decoder_width,
            config.decoder_depth,
            config.decoder_heads,
            tokens,
            config.feature_dim,
        )

    # ------------------------------------------------------------------ VisionTokenizer protocol

    @property
    def codebook_size(self) -> int:
        return self.config.codebook_size

    @property
    def grid(self) -> tuple[int, int]:
        return tuple(self.config.grid)  # type: ignore[return-value]

    def _check_pixels(self, pixels: torch.Tensor) -> None:
        if not isinstance(pixels, torch.Tensor):
            raise TypeError(
                f"pixels must be a torch.Tensor [B, 3, H, W], got {type(pixels).__name__}"
            )
        if not pixels.is_floating_point():
            raise TypeError(
                f"pixels must be floating point (normalised by the image processor), got {pixels.dtype}"
            )
        size = self.config.image_size
        if pixels.ndim != 4 or pixels.shape[1] != 3 or pixels.shape[2:] != (size, size):
            raise ValueError(
                f"pixels must have shape [B, 3, {size}, {size}], got {list(pixels.shape)}; "
                "resize with tokenizer.preprocess(images) or the encoder's image processor"
            )

    @torch.no_grad()
    def features(self, pixels: torch.Tensor) -> torch.Tensor:
        """[B, 3, H, W] -> [B, N, D] continuous encoder features that the codes stand for: what
        `decode_features` reconstructs (the `target_layer`)."""
        self._check_pixels(pixels)
        return self._layers(pixels)[1]

    def _layers(self, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(what the codes quantize, what the decoder reconstructs) [B, N, D] each, one pass."""
        layer, target = self.config.feature_layer, self.config.target_layer
        if target is None or target == layer:
            x = self.encoder(pixels)
            return x, x
        x, y = self.encoder.layers(pixels, [layer, target])
        return x, y

    def quantize(self, features: torch.Tensor):
        return self.quantizer(self.proj(features))

    @torch.no_grad()
    def encode(self, pixels: torch.Tensor) -> VisionTokens:
        """[B, 3, H, W] -> codes [B, h, w] (and the chosen code vectors [B, N, C])."""
        # The codes are what the model's own dtype gives, whatever autocast the caller runs in:
        # an MLLM or detokenizer trained in bf16-mixed must learn the codes its pipeline will read.
        with torch.autocast(pixels.device.type, enabled=False):
            self._check_pixels(pixels)
            codes = self.quantizer.lookup(
                self.proj(self._layers(pixels)[0])
            )  # no codebook update, even in train mode
        return VisionTokens(
            codes=codes.reshape(-1, *self.grid), quantized=self.quantizer.embed(codes)
        )

    def decode_features(self, codes: torch.Tensor) -> torch.Tensor:
        """codes [B, h, w] (or [B, N]) int64 -> [B, N, D] reconstructed semantic features."""
        if not isinstance(codes, torch.Tensor):
            raise TypeError(f"codes must be a torch.Tensor of int64, got {type(codes).__name__}")
        n = self.grid[0] * self.grid[1]
        if codes.ndim == 3:
            if tuple(codes.shape[1:]) != self.grid:
                raise ValueError(
                    f"codes must be [B, {self.grid[0]}, {self.grid[1]}], got {list(codes.shape)}"
                )
            codes = codes.reshape(codes.shape[0], n)
        elif codes.ndim != 2 or codes.shape[1] != n:
            raise ValueError(
                f"codes must be [B, {self.grid[0]}, {self.grid[1]}] or [B, {n}], got {list(codes.shape)}"
            )
        return self.decoder(self.quantizer.embed(codes))

    def preprocess(self, images) -> torch.Tensor:
        return self.encoder.preprocess(images)

    # ------------------------------------------------------------------ training

    def forward(
        self, pixels: torch.Tensor | None = None, features: torch.Tensor | None = None
    ) -> TokenizerOutput:
        """Reconstruction of the encoder features of `pixels` (or of precomputed `features`, where
        the codes quantize the layer they reconstruct)."""
        if features is None:
            self._check_pixels(pixels)
            x, target = self._layers(pixels)
        elif self.config.target_layer not in (None, self.config.feature_layer):
            raise ValueError(
                "this tokenizer reconstructs another layer (target_layer) than it quantizes: "
                "give pixels, not features"
            )
        else:
            x = target = features
        q = self.quantize(x)
        x_rec = self.decoder(q.quantized)
        reconstruction_loss, cosine = feature_loss(target, x_rec)
        return TokenizerOutput(
            features=target, reconstruction=x_rec, codes=q.codes.reshape(-1, *self.grid),
            loss=reconstruction_loss + q.loss, reconstruction_loss=reconstruction_loss, quantizer_loss=q.loss,
            cosine=cosine.detach(), perplexity=q.perplexity.detach(), usage=q.usage.detach(),
        )  # fmt: skip

    def train(self, mode: bool = True):
        super().train(mode)
        self.encoder.eval()  # frozen: dropout and norms stay in inference mode
        return self

    def trainable_state_dict(self) -> dict[str, torch.Tensor]:
        return {k: v for k, v in self.state_dict().items() if not k.startswith("encoder.")}

    # ------------------------------------------------------------------ persistence

    def save_pretrained(self, directory: str | os.PathLike, save_encoder: bool = True) -> Path:
        """Writes config.json + model.safetensors, and the encoder to `encoder/` (or by reference)."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        config = self.config
        if save_encoder:
            with quiet_transformers():
                self.encoder.model.save_pretrained(directory / "encoder")
            if self.encoder.image_processor is not None:
                self.encoder.image_processor.save_pretrained(directory / "encoder")
            config = config.replace(encoder="encoder")
        elif not Path(config.encoder).is_absolute():
            raise ValueError(
                "save_encoder=False needs config.encoder to be an absolute path to the encoder directory"
            )
        save_checkpoint(directory, config.to_dict(), self.trainable_state_dict())
        write_model_card(directory, self.model_card(encoder=config.encoder))
        return directory

    def model_card(self, encoder: str | None = None) -> str:
        """What `save_pretrained` writes as README.md (illume_core.model_card); `encoder`: where
        the saved config says the encoder is."""
        encoder = encoder or self.config.encoder
        h, w = self.grid
        return model_card(
            "ILLUME semantic vision tokenizer",
            f"Images to discrete codes and back to semantic features ({PAPER_LINK}, section 3.1): "
            "a frozen vision encoder, a vector-quantized codebook over its features, and a "
            "decoder of the codes back to the encoder's features, which the MLLM draws in and the "
            "diffusion detokenizer renders. Saved by `SemanticTokenizer.save_pretrained`.",
            load="from illume_tokenizer import SemanticTokenizer\n\n"
            'tokenizer = SemanticTokenizer.from_pretrained("THIS_DIR")\n'
            "codes = tokenizer.encode(tokenizer.preprocess(images)).codes   # [B, h, w]",
            tags=["vision-tokenizer", "vector-quantization"],
            pipeline_tag="image-feature-extraction",
            facts={
                "codebook": f"{self.codebook_size} codes",
                "grid": f"{h}x{w} codes per image",
                "image size": f"{self.config.image_size} px",
                "encoder": "`encoder/` (saved alongside)"
                if encoder == "encoder"
                else f"`{encoder}`",
            },
        )

    @classmethod
    def from_pretrained(
        cls, directory: str | os.PathLike, map_location: str = "cpu"
    ) -> SemanticTokenizer:
        directory = Path(directory)
        config_dict, tensors = load_checkpoint(directory, device=map_location)
        config = TokenizerConfig.from_dict(config_dict)
        encoder_dir = (
            Path(config.encoder)
            if Path(config.encoder).is_absolute()
            else directory / config.encoder
        )
        encoder = VisionEncoder.from_pretrained(encoder_dir, feature_layer=config.feature_layer)
        model = cls(config, encoder)
        missing, unexpected = model.load_state_dict(tensors, strict=False)
        missing = [k for k in missing if not k.startswith("encoder.")]
        if missing or unexpected:
            raise ValueError(
                f"{directory}: weights do not match the config (missing {missing}, unexpected {unexpected})"
            )
        return model.eval()
