"""Stage 0 (ShapesWorld only): pretrain a SigLIP-architecture encoder with the sigmoid image-text loss.

No pretrained encoder can be downloaded here, so the `shapes` encoder is trained on ShapesWorld
captions. It is saved in Hugging Face format (model, word-level text tokenizer, image processor),
so it loads through exactly the path a real SigLIP takes. Users with real weights skip this stage.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from illume_core import atomic_directory, check_replaceable, model_card, write_model_card
from illume_mllm import build_word_tokenizer
from illume_tokenizer import build_siglip, siglip_image_processor
from illume_tokenizer.encoder import quiet_transformers

from ..guards import batch_is_empty
from .common import GuardedStage, Normalizer, adamw_warmup_cosine, training_record

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
    patch_loss_weight: weight of a dense loss (0: none) on the patch tokens of `patch_layer`: a
        linear probe, trained with the encoder and not saved, classifies what each patch shows
        (illume_eval.shapes.patch_labels; ShapesWorld manifests only). The image-text loss alone
        leaves patch tokens global (recolouring one object moved 74% of the tokenizer's codes
        outside its cell), which no model can copy from; dense objectives are how SigLIP 2 makes
        its patch features local.
    patch_layer: the hidden_states index the dense loss reads: the tokenizer's feature_layer.
    patch_min_coverage: the share of a patch an object must cover to be what the patch shows
        (lower it for patches as large as a cell, which a small circle covers a fifth of).
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
        patch_loss_weight: float = 0.0,
        patch_layer: int = -2,
        patch_min_coverage: float = 0.25,
        max_skipped_fraction: float = 0.01,
        max_skipped_in_a_row: int = 50,
    ):
        super().__init__()
        if positives not in POSITIVES:
            raise ValueError(f"unknown positives rule {positives!r}; expected one of {POSITIVES}")
        self.save_hyperparameters()
        check_replaceable(output_dir, "encoder")  # refused now, not after training
        self.model = None
        self.patch_head = None
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
            self.hparams.preset,
            vocab_size=len(self.text_tokenizer),
            pad_token_id=self.text_tokenizer.pad_token_id,
            eos_token_id=self.text_tokenizer.eos_token_id,
        )
        if self.model.config.vision_config.image_size != self.hparams.image_size:
            raise ValueError(
                f"preset {self.hparams.preset!r} takes {self.model.config.vision_config.image_size}px images, "
                f"the stage was given image_size={self.hparams.image_size}"
            )
        if self.hparams.patch_loss_weight > 0:
            from illume_eval.shapes import PATCH_CLASSES

            hidden = self.model.config.vision_config.hidden_size
            self.patch_head = torch.nn.Linear(hidden, len(PATCH_CLASSES))

    def _loss(self, batch) -> dict[str, torch.Tensor]:
        ids = self.text_tokenizer(
            batch["text"],
            padding="max_length",
            max_length=self.hparams.max_text_length,
            truncation=True,
            return_tensors="pt",
        )["input_ids"].to(self.device)
        dense = self.patch_head is not None
        out = self.model(
            input_ids=ids,
            pixel_values=self.normalize(batch["pixels"]),
            output_hidden_states=dense,
        )
        logits = out.logits_per_image
        positives = positive_pairs(batch, self.hparams.positives)
        # in-batch top-1: the best-scoring caption is a positive of the image
        accuracy = positives[torch.arange(len(logits)), logits.argmax(-1).cpu()].float().mean()
        loss = sigmoid_loss(logits, positives)
        figures = {"contrastive_loss": loss, "in_batch_top1": accuracy}
        if dense:
            tokens = out.vision_model_output.hidden_states[self.hparams.patch_layer]  # [B, N, D]
            labels = self.patch_labels(batch).to(self.device)  # [B, N]
            patch_logits = self.patch_head(tokens)  # [B, N, classes]
            patch_loss = F.cross_entropy(patch_logits.flatten(0, 1), labels.flatten())
            loss = loss + self.hparams.patch_loss_weight * patch_loss
            figures["patch_loss"] = patch_loss
            objects = labels > 0  # accuracy where there is something to see
            if objects.any():
                hits = patch_logits.argmax(-1) == labels
                figures["patch_object_accuracy"] = hits[objects].float().mean()
        return {"loss": loss, **figures}

    def patch_labels(self, batch) -> torch.Tensor:
        """[B, N] what each patch of each image shows, from the scenes of a ShapesWorld manifest."""
        import numpy as np

        from illume_eval.shapes import Scene, patch_labels

        metas = batch["meta"]
        if any(m is None or "scene" not in m for m in metas):
            raise ValueError(
                'patch_loss_weight > 0 needs manifests whose lines carry "scene" (ShapesWorld '
                "captions.jsonl); set patch_loss_weight: 0 for other data"
            )
        vision = self.model.config.vision_config
        maps = [
            patch_labels(
                Scene.from_dict(m["scene"]),
                vision.image_size,
                vision.patch_size,
                min_coverage=self.hparams.patch_min_coverage,
            )
            for m in metas
        ]
        return torch.from_numpy(np.stack(maps)).flatten(1)

    def training_step(self, batch, batch_idx):
        if batch_is_empty(batch):  # every sample was unreadable: nothing to learn from
            return None
        figures = self._loss(batch)
        self.log_dict(
            {f"train/{k}": v for k, v in figures.items()},
            prog_bar=True,
            batch_size=len(batch["text"]),
        )
        return figures["loss"]

    def validation_step(self, batch, batch_idx):
        figures = self._loss(batch)
        self.log_dict(
            {f"val/{k}": v for k, v in figures.items()},
            prog_bar=True,
            batch_size=len(batch["text"]),
        )

    def configure_optimizers(self):
        # Weight decay on matrices only: not on norms, biases, or the logit temperature and bias.
        named = list(self.model.named_parameters())
        if self.patch_head is not None:
            named += list(self.patch_head.named_parameters())
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
            save_encoder(
                self.model, self.text_tokenizer, processor, self.hparams.output_dir,
                training_record(self),
            )  # fmt: skip


def save_encoder(
    model, text_tokenizer, image_processor, output_dir: str, training: dict | None = None
) -> None:
    """Model + tokenizer + image processor and a model card, written to a temporary folder and
    swapped in."""
    with atomic_directory(output_dir, "encoder") as tmp, quiet_transformers():
        model.save_pretrained(tmp)
        text_tokenizer.save_pretrained(tmp)
        image_processor.save_pretrained(tmp)
        vision = model.config.vision_config
        write_model_card(tmp, model_card(
            "ShapesWorld vision encoder (the SigLIP stand-in)",
            "A SigLIP image-text model trained from scratch on ShapesWorld, the frozen encoder "
            "that ILLUME's vision tokenizer quantizes and the MLLM sees through (where a real "
            "run uses SigLIP-so400m). A transformers `SiglipModel` with its tokenizer and image "
            "processor.",
            load='from transformers import AutoModel, AutoProcessor\n\nmodel = AutoModel.from_pretrained("THIS_DIR")\n'
            'processor = AutoProcessor.from_pretrained("THIS_DIR")',
            tags=["siglip", "shapesworld", "vision-encoder"],
            pipeline_tag="zero-shot-image-classification",
            library="transformers",
            facts={"vision": f"{vision.num_hidden_layers} layers of {vision.hidden_size}, "
                   f"{vision.image_size} px, patches of {vision.patch_size}"},
            training=training,
        ))  # fmt: skip
