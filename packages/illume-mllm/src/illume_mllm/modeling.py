"""ILLUME's unified MLLM: continuous image input, discrete image output.

Understanding is LLaVA's path, reused from transformers: vision tower -> MLP adapter -> the LLM's
input space, scattered into the `<image>` slots of the prompt. Drawing needs no new layers: the
LLM's vocabulary is extended with one token per codebook entry plus markers (vocab.py), and images
are sampled token by token (generation.py). So the model *is* a `LlavaForConditionalGeneration`
with a config that knows the vision vocabulary; it registers as model_type "illume" with the Auto
classes, so `AutoModelForImageTextToText.from_pretrained(dir)` loads it.

    input_ids [B, T] (with N `<image>` slots per input image), pixel_values [I, 3, H, W]
      -> vision tower [I, N, Dv] -> adapter [I, N, D] -> scattered into embeddings [B, T, D]
      -> LLM -> logits [B, T, V_text + 4 + K]
"""

from __future__ import annotations

import torch
from huggingface_hub.dataclasses import strict
from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForImageTextToText,
    LlavaConfig,
    LlavaForConditionalGeneration,
)

from .vocab import VisionVocab


@strict
class IllumeConfig(LlavaConfig):
    """LLaVA's config (vision_config, text_config, adapter) plus ILLUME's vision vocabulary.

    `image_token_index` is the `<image>` placeholder; `image_seq_length` its N slots per image.
    """

    model_type = "illume"

    codebook_size: int = 0
    vision_token_offset: int = 0
    start_of_image_token_id: int = 0
    end_of_image_token_id: int = 0
    end_of_line_token_id: int = 0
    image_grid: list[int] | None = None
    vision_feature_select_strategy: str = "full"  # SigLIP has no class token to drop
    vision_feature_layer: int | list[int] = -1

    @property
    def vocab(self) -> VisionVocab:
        return VisionVocab(
            image=self.image_token_index,
            start_of_image=self.start_of_image_token_id,
            end_of_image=self.end_of_image_token_id,
            end_of_line=self.end_of_line_token_id,
            offset=self.vision_token_offset,
            codebook_size=self.codebook_size,
        )


class IllumeForConditionalGeneration(LlavaForConditionalGeneration):
    """LLaVA with ILLUME's vision vocabulary; see the module docstring."""

    config_class = IllumeConfig
    config: IllumeConfig

    # -- parameter groups of the three stages (DESIGN.md section 1, Table 5) ---------------------

    @property
    def vision_tower(self):
        return self.model.vision_tower

    @property
    def adapter(self):
        return self.model.multi_modal_projector

    @property
    def language_model(self):
        return self.model.language_model

    def new_rows(self) -> torch.Tensor:
        """[V] bool: the vocabulary rows ILLUME added (markers and vision tokens)."""
        vocab = self.config.vocab
        rows = torch.zeros(self.config.text_config.vocab_size, dtype=torch.bool)
        rows[vocab.offset : vocab.offset + vocab.codebook_size] = True
        for token in (vocab.image, vocab.start_of_image, vocab.end_of_image, vocab.end_of_line):
            rows[token] = True
        return rows

    def train_new_rows_only(self) -> list[torch.nn.Parameter]:
        """Stage 1: of the embedding and LM head, only the added rows learn. Gradients of the text
        rows are zeroed by hooks, so with weight decay off those rows stay bit-identical.
        Returns the two matrices; the hooks stay until `release_rows()`."""
        rows = self.new_rows()
        matrices = [self.get_input_embeddings().weight, self.get_output_embeddings().weight]
        if matrices[0] is matrices[1]:
            matrices = matrices[:1]
        self._row_hooks = []
        for weight in matrices:
            weight.requires_grad_(True)
            mask = rows.to(weight.device)[:, None].to(weight.dtype)
            self._row_hooks.append(weight.register_hook(lambda grad, mask=mask: grad * mask))
        return matrices

    def release_rows(self) -> None:
        for hook in getattr(self, "_row_hooks", []):
            hook.remove()
        self._row_hooks = []


AutoConfig.register("illume", IllumeConfig, exist_ok=True)
AutoModelForImageTextToText.register(IllumeConfig, IllumeForConditionalGeneration, exist_ok=True)
AutoModel.register(IllumeConfig, IllumeForConditionalGeneration, exist_ok=True)
