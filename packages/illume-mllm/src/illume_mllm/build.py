"""Assembling an ILLUME MLLM from parts on disk: an LLM, a vision encoder, a tokenizer's codebook.

    processor = build_processor(text_tokenizer, vision_dir, codebook_size=1024, image_grid=(8, 8))
    model = build_model(processor, vision_dir, llm="/models/vicuna-7b-v1.5")     # real weights
    model = build_model(processor, vision_dir, llm=LLM_PRESETS["shapes"])       # a small Llama

Either way the text vocabulary is extended with the vision vocabulary (new rows initialised to
the mean of the old ones, transformers' default) and the vision tower's weights are loaded from
its directory. Nothing is downloaded: every path is local.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import torch

from .modeling import IllumeConfig, IllumeForConditionalGeneration
from .processing import IllumeProcessor, ProcessorConfig
from .vocab import extend_tokenizer

#: Small Llamas trained from scratch (ShapesWorld); real runs pass an LLM directory instead.
LLM_PRESETS: dict[str, dict[str, Any]] = {
    "tiny": {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2, "num_key_value_heads": 2},
    "shapes": {"hidden_size": 256, "intermediate_size": 768, "num_hidden_layers": 4, "num_attention_heads": 4, "num_key_value_heads": 4},
    # one size up (about 3.4x the shapes body): does capacity bound the ShapesWorld figures?
    "shapes-wide": {"hidden_size": 384, "intermediate_size": 1152, "num_hidden_layers": 6, "num_attention_heads": 6, "num_key_value_heads": 6},
}  # fmt: skip

SPECIAL_TOKENS = ("<pad>", "</s>", "<unk>", "<s>")


def build_word_tokenizer(
    texts: Iterable[str], extra_tokens: Sequence[str] = (), max_vocab: int = 4096
):
    """A `PreTrainedTokenizerFast` over the words and punctuation of `texts` (lower-cased), trained
    with the `tokenizers` library. ShapesWorld's language is small and closed, so word level is
    exact and tiny; at real scale the LLM's own tokenizer is used.

    Ids: 0 <pad>, 1 </s>, 2 <unk>, 3 <s>, then `extra_tokens`, then the words by frequency.
    """
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.WordLevel(unk_token="<unk>"))
    tokenizer.normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Lowercase()])
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation()]
    )
    trainer = trainers.WordLevelTrainer(
        vocab_size=max_vocab, special_tokens=[*SPECIAL_TOKENS, *extra_tokens]
    )
    tokenizer.train_from_iterator(texts, trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        pad_token="<pad>",
        eos_token="</s>",
        unk_token="<unk>",
        bos_token="<s>",
    )


def build_text_tokenizer(
    texts: Iterable[str], vocab_size: int = 2048, template_words: str | None = None
):
    """A byte-level BPE `PreTrainedTokenizerFast` trained on `texts` with the `tokenizers` library:
    the ShapesWorld MLLM's own tokenizer. Like an LLM's, it encodes any text and decodes it back
    exactly (case, spacing, JSON punctuation), which the model needs to write an assessment that
    parses; a word-level tokenizer would lower-case and re-space it.

    template_words: what the chat template writes around messages (`chat_template_words`), counted
    once per text, so that its role names are single tokens as in an LLM's vocabulary (never
    seen, "ASSISTANT:" is spelled in 10 tokens, a quarter of a ShapesWorld drawing request).

    Ids: 0 <pad>, 1 </s>, 2 <unk>, 3 <s>, then the byte alphabet and the learned merges.
    """
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE())
    tokenizer.normalizer = normalizers.NFKC()
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )

    def corpus():
        for text in texts:
            yield text
            if template_words:
                yield template_words

    tokenizer.train_from_iterator(corpus(), trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        pad_token="<pad>",
        eos_token="</s>",
        unk_token="<unk>",
        bos_token="<s>",
    )


def _vision_config(vision_dir: str | os.PathLike):
    from transformers import AutoConfig

    path = Path(vision_dir)
    if not (path / "config.json").is_file():
        raise FileNotFoundError(
            f"{path} has no config.json: pass the local directory of a vision model"
        )
    config = AutoConfig.from_pretrained(path)
    return getattr(config, "vision_config", config)  # an image-text model: its vision tower


def build_processor(
    text_tokenizer,
    vision_dir: str | os.PathLike,
    codebook_size: int,
    image_grid: tuple[int, int],
    preset: str | None = None,
    **overrides: Any,
) -> IllumeProcessor:
    """Extends the text tokenizer with the vision vocabulary and pairs it with the vision model's
    image processor; N understanding slots = the vision model's patch count."""
    from transformers import AutoImageProcessor

    vision = _vision_config(vision_dir)
    extend_tokenizer(text_tokenizer, codebook_size)
    if text_tokenizer.pad_token is None:  # LLaMA-family tokenizers have none
        text_tokenizer.pad_token = text_tokenizer.unk_token or text_tokenizer.eos_token
    side = vision.image_size // vision.patch_size
    fields = {
        "codebook_size": codebook_size,
        "image_grid": tuple(image_grid),
        "image_seq_length": side * side,
    }
    config = (
        ProcessorConfig.from_name(preset, **fields, **overrides)
        if preset
        else ProcessorConfig(**fields, **overrides)
    )
    return IllumeProcessor(
        AutoImageProcessor.from_pretrained(vision_dir), text_tokenizer, config=config
    )


def check_vision_feature_layer(layer: int | list[int]) -> None:
    """transformers' LLaVA passes the layer on as `output_hidden_states`, so layer 0 alone (the
    patch embeddings) reads as "no hidden states" and fails at the first forward."""
    if layer == 0:  # a list, even one holding 0, is fine
        raise ValueError(
            "vision_feature_layer 0 (the patch embeddings) cannot be read alone by the LLaVA model; "
            "use a transformer layer (e.g. -2) or a list with one (e.g. [0, -2])"
        )


def build_model(
    processor: IllumeProcessor,
    vision_dir: str | os.PathLike,
    llm: str | os.PathLike | dict[str, Any],
    vision_feature_layer: int | list[int] = -1,
    adapter_act: str = "gelu",
    load_weights: bool = True,
    grid_embeddings: bool = False,
    dtype: torch.dtype = torch.float32,
) -> IllumeForConditionalGeneration:
    """The MLLM: vision tower (weights from `vision_dir`), a fresh MLP adapter, and an LLM (a local
    directory with weights, or a LlamaConfig dict such as LLM_PRESETS["shapes"], trained from
    scratch), its vocabulary resized to the processor's extended tokenizer. `grid_embeddings`:
    row and column embeddings of output codes (IllumeConfig; not in the paper's model).
    `dtype`: of the built model's weights (float32: master weights for training)."""
    from transformers import AutoConfig, AutoModelForCausalLM, LlamaConfig
    from transformers.models.auto.modeling_auto import MODEL_MAPPING

    check_vision_feature_layer(vision_feature_layer)
    vocab = processor.vocab
    llm_dir = None if isinstance(llm, dict) else Path(llm)
    if llm_dir is None:
        text_config = LlamaConfig(
            **llm, vocab_size=len(processor.tokenizer), pad_token_id=processor.tokenizer.pad_token_id,
            bos_token_id=processor.tokenizer.bos_token_id, eos_token_id=processor.tokenizer.eos_token_id,
            max_position_embeddings=2048,
        )  # fmt: skip
    else:
        text_config = AutoConfig.from_pretrained(llm_dir)
        text_config.dtype = dtype  # the saved config keeps the dtype the MLLM has, not the LLM's
    vision_config = _vision_config(vision_dir)
    config = IllumeConfig(
        vision_config=vision_config,
        text_config=text_config,
        image_token_index=vocab.image,
        image_seq_length=processor.config.image_seq_length,
        projector_hidden_act=adapter_act,
        vision_feature_layer=vision_feature_layer,
        codebook_size=vocab.codebook_size,
        vision_token_offset=vocab.offset,
        start_of_image_token_id=vocab.start_of_image,
        end_of_image_token_id=vocab.end_of_image,
        end_of_line_token_id=vocab.end_of_line,
        image_grid=list(processor.config.image_grid),
        tie_word_embeddings=False,
        grid_embeddings=grid_embeddings,
    )
    # float32 master weights, whatever dtype the LLM was saved in (a bf16 or fp16 checkpoint's
    # config would otherwise build its layers in that dtype); Lightning's precision casts later
    model = IllumeForConditionalGeneration(config).to(dtype)
    if load_weights and torch.empty(0).device.type == "meta":
        load_weights = False  # shape-only instantiation (checking a paper-scale recipe)
    if load_weights:
        tower_class = MODEL_MAPPING[type(vision_config)]
        tower = tower_class.from_pretrained(vision_dir)
        model.model.vision_tower.load_state_dict(tower.state_dict())
        if llm_dir is not None:
            lm = AutoModelForCausalLM.from_pretrained(llm_dir)
            model.model.language_model.load_state_dict(lm.model.state_dict())
            model.lm_head.load_state_dict(lm.get_output_embeddings().state_dict())
    if model.config.text_config.vocab_size != len(processor.tokenizer):
        model.resize_token_embeddings(len(processor.tokenizer))
    return model
