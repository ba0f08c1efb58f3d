"""illume-tokenizer: ILLUME's semantic vision tokenizer (frozen encoder, VQ codebook, feature decoder)."""

from .__about__ import __version__
from .encoder import (
    SIGLIP_PRESETS,
    SIGLIP_SO400M_VISION,
    VisionEncoder,
    build_siglip,
    siglip_image_processor,
    vision_tower,
)
from .model import FeatureDecoder, SemanticTokenizer, TokenizerConfig, TokenizerOutput, feature_loss
from .quantizer import QuantizerOutput, VectorQuantizer

__all__ = [
    "SIGLIP_PRESETS",
    "SIGLIP_SO400M_VISION",
    "FeatureDecoder",
    "QuantizerOutput",
    "SemanticTokenizer",
    "TokenizerConfig",
    "TokenizerOutput",
    "VectorQuantizer",
    "VisionEncoder",
    "__version__",
    "build_siglip",
    "feature_loss",
    "siglip_image_processor",
    "vision_tower",
]
