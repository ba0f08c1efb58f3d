"""Stage 0 (ShapesWorld only): pretrain a SigLIP-architecture encoder with the sigmoid image-text loss.

No pretrained encoder can be downloaded here, so the `shapes` encoder is trained on ShapesWorld
captions. It is saved in Hugging Face format (model, word-level text tokenizer, image processor),
so it loads through exactly the path a real SigLIP takes. Users with real weights skip this stage.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from illume_core import atomic_directory
from illume_mllm import build_word_tokenizer
from illume_tokenizer import build_siglip, siglip_image_processor
from illume_tokenizer.encoder import quiet_transformers

from ..guards import batch_is_empty
from .common import GuardedStage, Normalizer, adamw_warmup_cosine

POSITIVES = ("same_caption", "scene")


def positive_pairs(batch: dict, rule: str) -> torch.Tensor:
    """[B_images, B_texts] bool: which image-caption pairs of a batch are positives.

    "same_caption": image i and caption j match when caption j is caption i (any dataset).
    "scene": when caption j is true of image i's scene, by illume-eval's exact check (ShapesWorld
    manifests carry "scene" and "spec"). Generic captions ("a circle and a square") are true of
    several images of a batch; calling those pairs negatives would teach the encoder falsehoods.
    """
    texts = batch["text"]
    if rule == "same_caption":
        return torch.tensor([[a == b for b in texts] for a in texts])
    if rule == "scene":
        from illume_eval.shapes import PromptSpec, Scene, spec_holds

        metas = batch["meta"]
        if any(m is None or "scene" not in m or "spec" not in m for m in metas):
            raise ValueError(
                'positives="scene" needs manifests whose lines carry "scene" and "spec" '
                "(ShapesWorld captions.jsonl); use positives=same_caption for other data"
            )
        specs = [PromptSpec.from_geneval(m["spec"]) for m in metas]
        scenes = [Scene.from_dict(m["scene"]).objects for m in metas]
        return torch.tensor([[spec_holds(s, objects) for s in specs] for objects in scenes])
    raise ValueError(f"unknown positives rule {rule!r}; expected one of {POSITIVES}")


def sigmoid_loss(logits: torch.Tensor, positives: torch.Tensor) -> torch.Tensor:
    """SigLIP's pairwise sigmoid loss over a [B, B] logit matrix with the given positive pairs."""
    labels = positives.to(logits.device).float() * 2 - 1
    return -F.logsigmoid(labels * logits).sum(dim=-1).mean()


class EncoderStage(GuardedStage):
    """Args:
    output_dir: where the trained encoder is saved (Hugging Face format).
    preset: SigLIP preset of illume_tokenizer.SIGLIP_PRESETS ("tiny", "shapes").
    image_size: input side (overrides the preset).
    lr, weight_decay, warmup_steps: AdamW and its warm-up + cosine schedule.
    max_text_length: tokens per caption (left-padded to it, so that the last position, which
        SigLIP's text tower pools, holds the caption's last word).
    positives: which image-caption pairs count as positives (see `positive_pairs`).
    pixel_mean, pixel_std: the image processor's normalisation. ShapesWorld uses its background
        colour as the mean: with 90% of every image background, centring on it keeps images from
        looking alike to a freshly initialised encoder (which otherwise collapses).
    """

    def __init__(
        self,
        output_dir: str,
        preset: str = "shapes",
        image_size: int = 32,
        lr: float = 1e-3,
        weight_decay: float = 0.05,
        warmup_steps: int = 100,
        max_text_length: int = 24,
        pixel_mean: tuple[float, float, float] = (0.5, 0.5, 0.5),
        pixel_std: tuple[float, float, float] = (0.5, 0.5, 0.5),
        positives: str = "same_caption",
        max_skipped_fraction: float = 0.01,
        max_skipped_in_a_row: int = 50,
    ):
        super().__init__()
        if positives not in POSITIVES:
            raise ValueError(f"unknown positives rule {positives!r}; expected one of {POSITIVES}")
        self.save_hyperparameters()
        self.model = None
        self.text_tokenizer = None
        self.normalize = Normalizer(pixel_mean, pixel_std)

    def configure_model(self) -> None:
        if self.model is not None:
            return
        texts = self.trainer.datamodule.texts()
        if not texts:
            raise ValueError(
                "the encoder stage needs captions: give it captions .jsonl manifests, not image folders"
            )
        self.text_tokenizer = build_word_tokenizer(texts)
        self.text_tokenizer.padding_side = "left"
        self.model = build_siglip(
            self.hparams.preset, vocab_size=len(self.text_tokenizer),
            pad_token_id=self.text_tokenizer.pad_token_id, eos_token_id=self.text_tokenizer.eos_token_id,
        )  # fmt: skip
        if self.model.config.vision_config.image_size != self.hparams.image_size:
            raise ValueError(
                f"preset {self.hparams.preset!r} takes {self.model.config.vision_config.image_size}px images, "
                f"the stage was given image_size={self.hparams.image_size}"
            )

    def _loss(self, batch) -> tuple[torch.Tensor, torch.Tensor]:
        ids = self.text_tokenizer(
            batch["text"],
            padding="max_length",
            max_length=self.hparams.max_text_length,
            truncation=True,
            return_tensors="pt",
        )["input_ids"].to(self.device)
        out = self.model(input_ids=ids, pixel_values=self.normalize(batch["pixels"]))
        logits = out.logits_per_image
        positives = positive_pairs(batch, self.hparams.positives)
        # in-batch top-1: the best-scoring caption is a positive of the image
        accuracy = positives[torch.arange(len(logits)), logits.argmax(-1).cpu()].float().mean()
        return sigmoid_loss(logits, positives), accuracy

    def training_step(self, batch, batch_idx):
        if batch_is_empty(batch):  # every sample was unreadable: nothing to learn from
            return None
        loss, accuracy = self._loss(batch)
        self.log_dict(
            {"train/loss": loss, "train/in_batch_top1": accuracy},
            prog_bar=True,
            batch_size=len(batch["text"]),
        )
        return loss

    def validation_step(self, batch, batch_idx):
        loss, accuracy = self._loss(batch)
        self.log_dict(
            {"val/loss": loss, "val/in_batch_top1": accuracy},
            prog_bar=True,
            batch_size=len(batch["text"]),
        )

    def configure_optimizers(self):
        # Weight decay on matrices only: not on norms, biases, or the logit temperature and bias.
        named = list(self.model.named_parameters())
        groups = [
            {
                "params": [p for _, p in named if p.ndim >= 2],
                "weight_decay": self.hparams.weight_decay,
            },
            {"params": [p for _, p in named if p.ndim < 2], "weight_decay": 0.0},
        ]
        return adamw_warmup_cosine(self, groups, lr=self.hparams.lr)

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["text_tokenizer"] = self.text_tokenizer.backend_tokenizer.to_str()

    def on_train_end(self) -> None:
        if self.trainer.is_global_zero:
            processor = siglip_image_processor(
                self.hparams.image_size, self.hparams.pixel_mean, self.hparams.pixel_std
            )
            save_encoder(self.model, self.text_tokenizer, processor, self.hparams.output_dir)


def save_encoder(model, text_tokenizer, image_processor, output_dir: str) -> None:
    """Model + tokenizer + image processor, written to a temporary folder and swapped in."""
    with atomic_directory(output_dir) as tmp, quiet_transformers():
        model.save_pretrained(tmp)
        text_tokenizer.save_pretrained(tmp)
        image_processor.save_pretrained(tmp)
