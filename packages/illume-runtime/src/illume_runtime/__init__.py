"""illume-runtime: fast generation loops, ONNX export and ONNX Runtime / TensorRT engines."""

from .__about__ import __version__
from .decoder import FlatDecoder
from .engines import OnnxModels
from .export import export_models, export_pipeline
from .generation import TorchImageGenerator
from .onnx_generation import OnnxImageGenerator

__all__ = [
    "FlatDecoder", "OnnxImageGenerator", "OnnxModels", "TorchImageGenerator", "__version__", "export_models",
    "export_pipeline",
]  # fmt: skip
