"""illume-mllm: ILLUME's unified MLLM (sees with continuous features, draws with vision tokens).

from illume_mllm import IllumeForConditionalGeneration, IllumeProcessor, TorchImageGenerator
model = IllumeForConditionalGeneration.from_pretrained("runs/shapes/mllm/final")
processor = IllumeProcessor.from_pretrained("runs/shapes/mllm/final")
"""

from .__about__ import __version__
from .build import (
    LLM_PRESETS,
    build_model,
    build_processor,
    build_text_tokenizer,
    build_word_tokenizer,
    check_vision_feature_layer,
)
from .decoder import FlatDecoder
from .generation import (
    ContextLengthError,
    ImageTokenSampler,
    answer_log_likelihood,
    check_context,
    check_sampling,
    draw_codes,
    filter_logits,
    generate_image_tokens,
    generate_text,
    guided_conversations,
    prompt_batch,
)
from .modeling import GridEmbedding, IllumeConfig, IllumeForConditionalGeneration, grid_positions
from .processing import (
    IGNORE,
    Example,
    IllumeProcessor,
    ProcessorConfig,
    chat_template_words,
    shipped_chat_template,
)
from .sampling import SpeculativeJacobi, TorchImageGenerator, image_cells, image_positions
from .vocab import MARKERS, VisionVocab, extend_tokenizer, vision_token, vocab_of

__all__ = [
    "IGNORE",
    "LLM_PRESETS",
    "MARKERS",
    "ContextLengthError",
    "Example",
    "FlatDecoder",
    "GridEmbedding",
    "IllumeConfig",
    "IllumeForConditionalGeneration",
    "IllumeProcessor",
    "ImageTokenSampler",
    "ProcessorConfig",
    "SpeculativeJacobi",
    "TorchImageGenerator",
    "VisionVocab",
    "__version__",
    "answer_log_likelihood",
    "build_model",
    "build_processor",
    "build_text_tokenizer",
    "build_word_tokenizer",
    "chat_template_words",
    "check_context",
    "check_sampling",
    "check_vision_feature_layer",
    "draw_codes",
    "extend_tokenizer",
    "filter_logits",
    "generate_image_tokens",
    "generate_text",
    "grid_positions",
    "guided_conversations",
    "image_cells",
    "image_positions",
    "prompt_batch",
    "shipped_chat_template",
    "vision_token",
    "vocab_of",
]
