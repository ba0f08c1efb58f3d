"""illume-detokenizer: ILLUME's diffusion detokenizer, semantic features back to pixels.

from illume_detokenizer import DetokenizerPipeline
pipe = DetokenizerPipeline.from_pretrained("runs/shapes/detokenizer/final").use_scheduler("dpm++")
images = pipe(codes=codes, tokenizer=tokenizer, num_inference_steps=20, guidance_scale=3.0).images
"""

from .__about__ import __version__
from .build import (
    TRAINABLE,
    DetokenizerConfig,
    attention_parameters,
    build_pipeline,
    from_sdxl,
    trainable_parameters,
)
from .conditioner import Conditions, FeatureConditioner
from .pipeline import SCHEDULERS, DetokenizerPipeline, DetokenizerPipelineOutput, to_pil

__all__ = [
    "SCHEDULERS",
    "TRAINABLE",
    "Conditions",
    "DetokenizerConfig",
    "DetokenizerPipeline",
    "DetokenizerPipelineOutput",
    "FeatureConditioner",
    "__version__",
    "attention_parameters",
    "build_pipeline",
    "from_sdxl",
    "to_pil",
    "trainable_parameters",
]
