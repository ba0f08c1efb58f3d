"""Self-enhancing multimodal alignment: the model draws, judges its drawings, and learns from the
judgement (ILLUME section 3.3). See loop.py for the whole loop."""

from .assessors import (
    ASSESSMENTS,
    Judgement,
    ModelAssessor,
    OpenAICompatibleAssessor,
    OracleAssessor,
    assess_corpus,
    read_judgements,
)
from .corpus import (
    CORPUS,
    CorpusItem,
    Prompt,
    draw_corpus,
    prompts_from_captions,
    read_corpus,
)
from .loop import FOLLOW_UP, self_enhance, sft_conversations

__all__ = [
    "ASSESSMENTS",
    "CORPUS",
    "FOLLOW_UP",
    "CorpusItem",
    "Judgement",
    "ModelAssessor",
    "OpenAICompatibleAssessor",
    "OracleAssessor",
    "Prompt",
    "assess_corpus",
    "draw_corpus",
    "prompts_from_captions",
    "read_corpus",
    "read_judgements",
    "self_enhance",
    "sft_conversations",
]
