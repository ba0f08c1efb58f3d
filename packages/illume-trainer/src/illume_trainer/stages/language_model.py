"""Stage 0 (ShapesWorld only): pretrain the language model the MLLM starts from, on text alone.

ILLUME starts from Vicuna; no such model can be downloaded here, so the `shapes` Llama is
pretrained on ShapesWorld text (illume_eval.shapes.language: the MLLM's conversations with every
image written out as its layout in words). It is saved in Hugging Face format (a
`LlamaForCausalLM` and its byte-level BPE tokenizer), so MLLM stage 1 loads it through exactly the
path Vicuna takes (`model.llm: DIR`). Users with a real LLM skip this stage.

Conversations are laid out as the MLLM's processor lays out their text (the chat template of its
preset: BOS, system prompt, `USER:` turn, `ASSISTANT:` answer, EOS), so the MLLM meets the format it learned;
the loss covers every token (pretraining), not the answers only.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from illume_core import Message, atomic_directory, check_replaceable, model_card, write_model_card
from illume_mllm import LLM_PRESETS, ProcessorConfig, build_text_tokenizer
from illume_mllm.processing import encode_chat, shipped_chat_template

from ..guards import batch_is_empty
from .common import GuardedStage, adamw_warmup_cosine, training_record

IGNORE = -100


class LanguageModelStage(GuardedStage):
    """Args:
    output_dir: where the language model and its tokenizer are saved (Hugging Face format).
    preset: a LlamaConfig preset of illume_mllm.LLM_PRESETS ("shapes": the MLLM's body).
    vocab_size: the byte-level BPE tokenizer's size, trained on the stage's text.
    processor_preset: the ProcessorConfig preset whose chat template lays out the text (the one
        MLLM stage 1 will use; "shapes": no system prompt).
    lr, weight_decay, warmup_steps: AdamW and its warm-up + cosine schedule.
    max_length: tokens per conversation (longer ones are cut; ShapesWorld's longest, an
        assessment, is about 280).
    save_dtype: the saved weights' dtype ("bfloat16" halves the shipped file; the MLLM trains in
        float32 from it).
    """

    def __init__(
        self,
        output_dir: str,
        preset: str = "shapes",
        vocab_size: int = 2048,
        processor_preset: str | None = "shapes",
        lr: float = 1e-3,
        weight_decay: float = 0.0,
        warmup_steps: int = 100,
        max_length: int = 320,
        save_dtype: str = "bfloat16",
        max_skipped_fraction: float = 0.01,
        max_skipped_in_a_row: int = 50,
    ):
        super().__init__()
        if preset not in LLM_PRESETS:
            raise ValueError(f"unknown LLM preset {preset!r}; presets: {', '.join(LLM_PRESETS)}")
        if save_dtype not in ("float32", "bfloat16", "float16"):
            raise ValueError(f"save_dtype must be float32, bfloat16 or float16, got {save_dtype!r}")
        self.save_hyperparameters()
        check_replaceable(output_dir, "language model")  # refused now, not after training
        self.template = (
            ProcessorConfig.from_name(processor_preset) if processor_preset else ProcessorConfig()
        )
        self.model = None
        self.text_tokenizer = None

    def configure_model(self) -> None:
        if self.model is not None:
            return
        from transformers import LlamaConfig, LlamaForCausalLM

        texts = self.trainer.datamodule.texts()
        if not texts:
            raise ValueError("the language-model stage needs conversations with text to read")
        hp = self.hparams
        self.text_tokenizer = build_text_tokenizer(texts, hp.vocab_size)
        tok = self.text_tokenizer
        config = LlamaConfig(
            **LLM_PRESETS[hp.preset], vocab_size=len(tok), pad_token_id=tok.pad_token_id,
            bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
            max_position_embeddings=2048, tie_word_embeddings=False,
        )  # fmt: skip
        self.model = LlamaForCausalLM(config)

    def encode(self, turns) -> list[int]:
        """A text-only conversation's ids, laid out by the chat template IllumeProcessor uses."""
        cfg = self.template
        messages = [Message(role, value.strip()) for role, value in turns]
        ids, _, _ = encode_chat(
            self.text_tokenizer, shipped_chat_template(cfg.chat_format), messages, cfg.system_prompt
        )
        return ids[: self.hparams.max_length]

    def _loss(self, batch) -> tuple[torch.Tensor, int]:
        if any(sample.inputs or sample.outputs for sample in batch["items"]):
            raise ValueError(
                "the language-model stage reads text only; its data has images (give it the "
                "language/ corpus of illume_eval.shapes.language, not the MLLM's files)"
            )
        rows = [self.encode(sample.turns) for sample in batch["items"]]
        width = max(len(r) for r in rows)
        pad = self.text_tokenizer.pad_token_id
        ids = torch.full((len(rows), width), pad, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, r in enumerate(rows):
            ids[i, : len(r)] = torch.tensor(r)
            mask[i, : len(r)] = 1
        ids, mask = ids.to(self.device), mask.to(self.device)
        logits = self.model(input_ids=ids, attention_mask=mask, use_cache=False).logits
        labels = ids[:, 1:].masked_fill(mask[:, 1:] == 0, IGNORE)
        loss = F.cross_entropy(logits[:, :-1].flatten(0, 1), labels.flatten(), ignore_index=IGNORE)
        return loss, len(rows)

    def training_step(self, batch, batch_idx):
        if batch_is_empty(batch):
            return None
        loss, n = self._loss(batch)
        self.log("train/loss", loss, prog_bar=True, batch_size=n)
        return loss

    def validation_step(self, batch, batch_idx):
        loss, n = self._loss(batch)
        self.log("val/loss", loss, prog_bar=True, batch_size=n)

    def configure_optimizers(self):
        self.configure_model()
        named = list(self.model.named_parameters())
        # no decay on norms or embeddings: rows of words a batch never shows stay as they are
        decay = [p for n, p in named if p.ndim >= 2 and "embed" not in n]
        rest = [p for n, p in named if not (p.ndim >= 2 and "embed" not in n)]
        groups = [
            {"params": decay, "weight_decay": self.hparams.weight_decay},
            {"params": rest, "weight_decay": 0.0},
        ]
        return adamw_warmup_cosine(self, groups, lr=self.hparams.lr)

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["text_tokenizer"] = self.text_tokenizer.backend_tokenizer.to_str()

    def on_train_end(self) -> None:
        if self.trainer.is_global_zero:
            save_language_model(
                self.model, self.text_tokenizer, self.hparams.output_dir, self.hparams.save_dtype,
                training_record(self),
            )  # fmt: skip


def save_language_model(
    model, text_tokenizer, output_dir: str, dtype: str = "bfloat16", training: dict | None = None
) -> None:
    """Model (in `dtype`) + tokenizer and a model card, written to a temporary folder and
    swapped in."""
    import copy

    saved = copy.deepcopy(model).to(getattr(torch, dtype))
    with atomic_directory(output_dir, "language model") as tmp:
        saved.save_pretrained(tmp)
        text_tokenizer.save_pretrained(tmp)
        c = model.config
        write_model_card(tmp, model_card(
            "ShapesWorld language model (the Vicuna stand-in)",
            "A Llama pretrained from scratch on ShapesWorld text (every image written out as its "
            "layout in words), laid out by the MLLM's chat template: the LLM an ILLUME MLLM "
            "starts from where a real run starts from Vicuna-7B.",
            load='from transformers import AutoModelForCausalLM, AutoTokenizer\n\n'
            'model = AutoModelForCausalLM.from_pretrained("THIS_DIR")\n'
            'tokenizer = AutoTokenizer.from_pretrained("THIS_DIR")',
            tags=["llama", "shapesworld"],
            pipeline_tag="text-generation",
            library="transformers",
            facts={"model": f"{c.num_hidden_layers} layers of {c.hidden_size}, vocabulary "
                   f"{c.vocab_size}, saved in {dtype}"},
            training=training,
        ))  # fmt: skip
