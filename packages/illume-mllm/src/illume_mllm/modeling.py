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

`grid_embeddings` (off in the paper's model): a learned row and a learned column embedding added
to the input embedding of every output vision-code token. In 1-D order a code's column is its
distance from the last `<end_of_line>`, which the LLM must infer from RoPE distances. On
ShapesWorld they did not help relations (left of, above) over two seeds and a full chain, so its
recipes leave them off (benchmarks/RESULTS.md). The row and column are counted
from the sequence's own `<start_of_image>` and `<end_of_line>` markers (`grid_positions`), so
teacher forcing needs no extra input; a forward over a KV cache gets them from
`prepare_inputs_for_generation`, which sees the whole sequence, or from the caller
(`grid_positions=`).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from huggingface_hub.dataclasses import strict
from torch import nn
from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForImageTextToText,
    LlavaConfig,
    LlavaForConditionalGeneration,
)
from transformers import initialization as init

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
    grid_embeddings: bool = False  # row and column embeddings of output codes (module docstring)

    @classmethod
    def from_dict(cls, config_dict: dict, **kwargs):
        """transformers' loader, strict: a key of config.json (or of its text_config or
        vision_config) that the config class does not know, a misspelt `num_hidden_layerz`, is a
        ValueError naming it instead of an attribute nobody reads."""
        unknown = sorted(set(config_dict) - set(cls().to_dict()))
        for part in ("text_config", "vision_config"):
            nested = config_dict.get(part)
            if not isinstance(nested, dict) or "model_type" not in nested:
                continue
            try:
                known = AutoConfig.for_model(nested["model_type"]).to_dict()
            except ValueError:  # a model type this transformers does not know: its own error
                continue
            unknown += sorted(f"{part}.{k}" for k in set(nested) - set(known))
        if unknown:
            raise ValueError(
                f"the MLLM's config has unknown key(s) {', '.join(unknown)} (misspelt? fix or "
                "delete them)"
            )
        return super().from_dict(config_dict, **kwargs)

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


def grid_positions(
    input_ids: torch.Tensor, vocab: VisionVocab, grid: Sequence[int]
) -> torch.Tensor:
    """input_ids [B, T] -> [B, T]: `row * w + column` at each vision-code token, -1 elsewhere.

    The row is the number of `<end_of_line>` since the last `<start_of_image>`, the column the
    distance from the last of either, minus one; both clamped to the grid (h, w)."""
    h, w = grid
    index = torch.arange(input_ids.shape[1], device=input_ids.device).expand_as(input_ids)
    start, end_of_line = input_ids == vocab.start_of_image, input_ids == vocab.end_of_line
    lines = end_of_line.long().cumsum(1)  # [B, T] end-of-lines so far
    lines_at_start = torch.cummax(torch.where(start, lines, 0), 1).values
    row = (lines - lines_at_start).clamp(0, h - 1)
    line_start = torch.cummax(torch.where(start | end_of_line, index, -1), 1).values
    column = (index - line_start - 1).clamp(0, w - 1)
    is_code = (input_ids >= vocab.offset) & (input_ids < vocab.offset + vocab.codebook_size)
    return torch.where(is_code, row * w + column, -1)


class GridEmbedding(nn.Module):
    """A row and a column embedding per grid cell: positions [B, T] (`grid_positions`) -> [B, T, D],
    zero where the position is -1. Both start at zero, so adding them leaves a model unchanged."""

    def __init__(self, grid: Sequence[int], dim: int):
        super().__init__()
        self.width = grid[1]
        self.rows = nn.Parameter(torch.zeros(grid[0], dim))  # [h, D]
        self.columns = nn.Parameter(torch.zeros(grid[1], dim))  # [w, D]

    def forward(self, positions: torch.Tensor) -> torch.Tensor:
        cell = positions.clamp(min=0)
        out = self.rows[cell // self.width] + self.columns[cell % self.width]
        return out * (positions >= 0)[..., None].to(out.dtype)


class IllumeForConditionalGeneration(LlavaForConditionalGeneration):
    """LLaVA with ILLUME's vision vocabulary; see the module docstring."""

    config_class = IllumeConfig
    config: IllumeConfig

    def __init__(self, config: IllumeConfig):
        super().__init__(config)
        if config.grid_embeddings:
            if not config.image_grid:
                raise ValueError("grid_embeddings needs the config's image_grid (h, w)")
            self.grid_embedding = GridEmbedding(config.image_grid, config.text_config.hidden_size)

    def save_pretrained(self, save_directory, *args, **kwargs):
        """transformers' save, and a model card (README.md)."""
        from illume_core import write_model_card

        out = super().save_pretrained(save_directory, *args, **kwargs)
        write_model_card(save_directory, self.model_card())
        return out

    def model_card(self) -> str:
        """What `save_pretrained` writes as README.md (illume_core.model_card)."""
        from illume_core import model_card

        text, vision = self.config.text_config, self.config.vision_config
        h, w = self.config.image_grid or (0, 0)
        return model_card(
            "ILLUME MLLM",
            "A unified multimodal LLM (ILLUME, arXiv 2412.06673): it reads images as continuous "
            "features (vision tower and MLP adapter, LLaVA's path) and writes images as discrete "
            "vision tokens, one per code of its vision tokenizer, row by row with "
            '`<end_of_line>` markers. A transformers model (`model_type` "illume"), saved with '
            "its `IllumeProcessor` (chat template in `chat_template.jinja`).",
            load="import illume_mllm  # registers the model and processor with the Auto classes\n"
            "from transformers import AutoModelForImageTextToText, AutoProcessor\n\n"
            'model = AutoModelForImageTextToText.from_pretrained("THIS_DIR")\n'
            'processor = AutoProcessor.from_pretrained("THIS_DIR")\n'
            "inputs = processor.apply_chat_template(conversation, add_generation_prompt=True,\n"
            "                                      tokenize=True, return_dict=True)\n"
            "answer = model.generate(**inputs, max_new_tokens=32)",
            tags=["transformers", "multimodal", "text-to-image", "visual-question-answering"],
            pipeline_tag="image-text-to-text",
            library="transformers",
            facts={
                "language model": f"{text.model_type}, {text.num_hidden_layers} layers of "
                f"{text.hidden_size}, vocabulary {text.vocab_size} (text and vision tokens)",
                "vision tower": f"{vision.model_type}, {vision.image_size} px",
                "drawing": f"{self.config.codebook_size} codes on a {h}x{w} grid",
            },
        )

    def _init_weights(self, module):
        if isinstance(module, GridEmbedding):  # missing from an older checkpoint: start at zero
            init.zeros_(module.rows)
            init.zeros_(module.columns)
        else:
            super()._init_weights(module)

    # -- output-code positions (module docstring) -------------------------------------------------

    def grid_positions(self, input_ids: torch.Tensor) -> torch.Tensor:
        return grid_positions(input_ids, self.config.vocab, self.config.image_grid)

    def embed(self, input_ids: torch.Tensor, positions: torch.Tensor | None = None) -> torch.Tensor:
        """Input embeddings [B, T, D] of input_ids [B, T], with the grid embeddings when the model
        has them (`positions`: `grid_positions` of these tokens; default: counted from them)."""
        embeds = self.get_input_embeddings()(input_ids)
        if not self.config.grid_embeddings:
            return embeds
        positions = self.grid_positions(input_ids) if positions is None else positions
        return embeds + self.grid_embedding(positions).to(embeds.dtype)

    def prompt_embeddings(
        self,
        input_ids: torch.Tensor,
        pixel_values: torch.Tensor | None = None,
        grid_positions: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """The LLM's input [B, T, D]: `embed(input_ids, grid_positions)` with the adapter's image
        features in the `<image>` slots (found by token id, not, as LLaVA does when handed
        embeddings, by comparing rows with `<image>`'s, which new rows can share)."""
        embeds = self.embed(input_ids, grid_positions)
        if pixel_values is None:
            return embeds
        features = self.model.get_image_features(pixel_values=pixel_values, return_dict=True)
        features = torch.cat(list(features.pooler_output)).to(embeds.dtype)  # [I * N, D]
        slots = input_ids == self.config.image_token_index
        if int(slots.sum()) != len(features):
            raise ValueError(
                f"the prompts have {int(slots.sum())} <image> slots for {len(features)} image "
                "features: build them with the model's IllumeProcessor"
            )
        return embeds.masked_scatter(slots[..., None], features)

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        pixel_values: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        past_key_values=None,
        inputs_embeds: torch.Tensor | None = None,
        grid_positions: torch.LongTensor | None = None,
        **kwargs,
    ):
        """LLaVA's forward; `grid_positions` [B, T]: the cells of input_ids (grid_embeddings)."""
        if self.config.grid_embeddings and input_ids is not None:
            cached = past_key_values is not None and past_key_values.get_seq_length() > 0
            if grid_positions is None and cached:
                raise ValueError(
                    "with a KV cache the new tokens' grid positions cannot be counted from them: "
                    "pass grid_positions (model.grid_positions(whole_sequence)[:, -new:])"
                )
            inputs_embeds = self.prompt_embeddings(input_ids, pixel_values, grid_positions)
            input_ids, pixel_values = None, None
        return super().forward(
            input_ids=input_ids,
            pixel_values=pixel_values,
            attention_mask=attention_mask,
            position_ids=position_ids,
            past_key_values=past_key_values,
            inputs_embeds=inputs_embeds,
            **kwargs,
        )

    def prepare_inputs_for_generation(self, input_ids, *args, **kwargs):
        inputs = super().prepare_inputs_for_generation(input_ids, *args, **kwargs)
        new = inputs.get("input_ids")
        if self.config.grid_embeddings and new is not None:  # input_ids: the whole sequence
            inputs["grid_positions"] = self.grid_positions(input_ids)[:, -new.shape[1] :]
        return inputs

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
