"""illume-core: the typed seams, safe image IO and safetensors checkpoints shared by every illume package.

Light on purpose: numpy, pillow and safetensors only; torch is imported lazily where tensors are
saved or loaded.
"""

from .__about__ import __version__
from .checkpoint import (
    CONFIG_NAME,
    OWNER_MARKER,
    WEIGHTS_NAME,
    CheckpointError,
    DirectoryNotOursError,
    atomic_directory,
    atomic_write,
    atomic_write_bytes,
    atomic_write_json,
    atomic_write_text,
    check_replaceable,
    directory_owner,
    load_checkpoint,
    load_config,
    load_weights,
    replace_with,
    save_checkpoint,
    sweep_stale,
)
from .config import Config, ConfigError
from .files import (
    MAX_CONFIG_BYTES,
    MAX_DATA_BYTES,
    UnsafePathError,
    read_bounded,
    read_json,
    read_jsonl,
    read_text,
    resolve_inside,
)
from .image_io import ImageLimits, ImageLoadError, load_image, load_images, to_rgb
from .interfaces import (
    Detokenizer,
    DetokenizerOutput,
    Message,
    Pretrained,
    UnifiedPipeline,
    VisionTokenizer,
    VisionTokens,
)
from .model_card import CARD_FILE, add_training, model_card, write_model_card

__all__ = [
    "CARD_FILE",
    "CONFIG_NAME",
    "MAX_CONFIG_BYTES",
    "MAX_DATA_BYTES",
    "OWNER_MARKER",
    "WEIGHTS_NAME",
    "CheckpointError",
    "Config",
    "ConfigError",
    "Detokenizer",
    "DetokenizerOutput",
    "DirectoryNotOursError",
    "ImageLimits",
    "ImageLoadError",
    "Message",
    "Pretrained",
    "UnifiedPipeline",
    "UnsafePathError",
    "VisionTokenizer",
    "VisionTokens",
    "__version__",
    "add_training",
    "atomic_directory",
    "atomic_write",
    "atomic_write_bytes",
    "atomic_write_json",
    "atomic_write_text",
    "check_replaceable",
    "directory_owner",
    "load_checkpoint",
    "load_config",
    "load_image",
    "load_images",
    "load_weights",
    "model_card",
    "read_bounded",
    "read_json",
    "read_jsonl",
    "read_text",
    "replace_with",
    "resolve_inside",
    "save_checkpoint",
    "sweep_stale",
    "to_rgb",
    "write_model_card",
]
