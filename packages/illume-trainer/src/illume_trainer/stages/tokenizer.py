"""The tokenizer stage: train the quantizer and feature decoder on a frozen encoder (ILLUME Eq. 2)."""

from __future__ import annotations

from pathlib import Path

from illume_core import add_training, atomic_directory, check_replaceable
from illume_tokenizer import SemanticTokenizer, TokenizerConfig, VisionEncoder

from ..guards import batch_is_empty
from .common import FrozenPartsStage, Normalizer, adamw_warmup_cosine, training_record


class TokenizerStage(FrozenPartsStage):
    """Args:
    encoder: local directory of the vision encoder (a real SigLIP, or the shapes encoder stage's output).
    output_dir: where the trained tokenizer is saved.
    preset: TokenizerConfig preset ("tiny", "shapes", "illume-7b"); `overrides` change its fields.
    feature_layer: encoder layer to tokenize (-2: penultimate); None takes the preset's.
    lr, weight_decay, warmup_steps: AdamW and its warm-up + cosine schedule.
    save_encoder: copy the encoder into the tokenizer directory (False: refer to it by path).
    """

    frozen = ("tokenizer.encoder.",)  # reloaded from its directory

    def __init__(
        self,
        encoder: str,
        output_dir: str,
        preset: str = "shapes",
        overrides: dict | None = None,
        feature_layer: int | None = None,
        lr: float = 1e-3,
        weight_decay: float = 0.0,
        warmup_steps: int = 100,
        save_encoder: bool = True,
        max_skipped_fraction: float = 0.01,
        max_skipped_in_a_row: int = 50,
    ):
        super().__init__()
        self.save_hyperparameters()
        check_replaceable(output_dir, "tokenizer")  # refused now, not after training
        config = TokenizerConfig.from_name(preset, **(overrides or {})).replace(
            encoder=str(Path(encoder).resolve())
        )
        if feature_layer is None:  # the preset's choice (the encoder fills it in otherwise)
            feature_layer = config.feature_layer
        vision = VisionEncoder.from_pretrained(encoder, feature_layer=feature_layer)
        self.tokenizer = SemanticTokenizer(config, vision)
        self.normalize = Normalizer.for_processor(vision.image_processor)

    def _step(self, batch, prefix: str):
        pixels = batch["pixels"]
        side = self.tokenizer.config.image_size
        if pixels.shape[-1] != side:
            raise ValueError(
                f"the data gives {pixels.shape[-1]} px images and the encoder takes {side} px: set "
                f"data.image_size to {side}"
            )
        out = self.tokenizer(self.normalize(pixels))
        self.log_dict(
            {
                f"{prefix}/loss": out.loss,
                f"{prefix}/cosine": out.cosine,
                f"{prefix}/code_usage": out.usage,
                f"{prefix}/perplexity": out.perplexity,
            },
            prog_bar=True,
            batch_size=len(batch["pixels"]),
        )
        if batch["skipped"]:
            self.log(f"{prefix}/skipped", float(batch["skipped"]), reduce_fx="sum", batch_size=1)
        return out.loss

    def training_step(self, batch, batch_idx):
        if batch_is_empty(batch):  # every sample was unreadable: nothing to learn from
            return None
        return self._step(batch, "train")

    def validation_step(self, batch, batch_idx):
        self._step(batch, "val")

    def configure_optimizers(self):
        params = [
            p
            for n, p in self.tokenizer.named_parameters()
            if p.requires_grad and not n.startswith("encoder.")
        ]
        return adamw_warmup_cosine(
            self, params, lr=self.hparams.lr, weight_decay=self.hparams.weight_decay
        )

    def on_train_end(self) -> None:
        if self.trainer.is_global_zero:
            with atomic_directory(self.hparams.output_dir, "tokenizer") as tmp:
                self.tokenizer.save_pretrained(tmp, save_encoder=self.hparams.save_encoder)
                add_training(tmp, training_record(self))
