"""illume-runtime: ONNX export, ONNX Runtime and TensorRT engines for ILLUME (the plain PyTorch
loops are illume-mllm's: `illume_mllm.TorchImageGenerator`, `illume_mllm.FlatDecoder`)."""

from .__about__ import __version__
from .engines import OnnxModels
from .export import DECODER_WEIGHTS, export_models, export_pipeline
from .onnx_generation import OnnxImageGenerator
from .unet_step import OnnxUNetStep

__all__ = [
    "DECODER_WEIGHTS",
    "OnnxImageGenerator",
    "OnnxModels",
    "OnnxUNetStep",
    "__version__",
    "export_models",
    "export_pipeline",
]
