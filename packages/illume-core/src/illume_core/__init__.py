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
    save_checkpoint,
)
from .config import Config, ConfigError
from .files import UnsafePathError, read_bounded, read_jsonl, resolve_inside
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

__all__ = [
    "CONFIG_NAME",
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
    "read_bounded",
    "read_jsonl",
    "resolve_inside",
    "save_checkpoint",
    "to_rgb",
]
