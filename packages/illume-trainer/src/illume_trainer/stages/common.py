"""Pieces every stage shares: the learning-rate schedule and pixel normalisation."""

from __future__ import annotations

import math

import lightning as L
import torch


def warmup_cosine(
    optimizer: torch.optim.Optimizer, warmup_steps: int, total_steps: int, floor: float = 0.1
):
    """Linear warm-up to the base rate, then cosine decay to `floor` x base at `total_steps`."""

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / max(1, warmup_steps)
        progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
        return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))

    return {"scheduler": torch.optim.lr_scheduler.LambdaLR(optimizer, factor), "interval": "step"}


def adamw_warmup_cosine(stage, params, **adamw) -> dict:
    """configure_optimizers' answer for every stage: AdamW over `params` (tensors or groups) with
    the stage's warm-up + cosine schedule over the run's steps."""
    optimizer = torch.optim.AdamW(params, **adamw)
    return {
        "optimizer": optimizer,
        "lr_scheduler": warmup_cosine(
            optimizer, stage.hparams.warmup_steps, total_steps(stage.trainer)
        ),
    }


def total_steps(trainer) -> int:
    if trainer.max_steps and trainer.max_steps > 0:
        return int(trainer.max_steps)
    return int(trainer.estimated_stepping_batches)


class Normalizer(torch.nn.Module):
    """uint8 [B, 3, H, W] -> float pixels with the encoder's image-processor mean and std."""

    def __init__(self, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5)):
        super().__init__()
        self.register_buffer(
            "mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1), persistent=False
        )
        self.register_buffer(
            "std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1), persistent=False
        )

    @classmethod
    def for_processor(cls, processor) -> Normalizer:
        if processor is None:
            return cls()
        return cls(
            tuple(getattr(processor, "image_mean", (0.5,) * 3)),
            tuple(getattr(processor, "image_std", (0.5,) * 3)),
        )

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return (pixels.float() / 255.0 - self.mean) / self.std


class GuardedStage(L.LightningModule):
    """A stage with the bad-sample ceiling (illume_trainer.guards), from its hyperparameters
    `max_skipped_fraction` and `max_skipped_in_a_row`."""

    def configure_callbacks(self):
        from ..guards import BadSampleGuard

        hp = self.hparams
        return [
            BadSampleGuard(hp.get("max_skipped_fraction", 0.01), hp.get("max_skipped_in_a_row", 50))
        ]


class FrozenPartsStage(GuardedStage):
    """A stage whose frozen parts (state-dict prefixes in `frozen`) are reloaded from their own
    directories, not written into every checkpoint; everything else loads strictly."""

    frozen: tuple[str, ...] = ()

    def state_dict(self, *args, **kwargs):
        state = super().state_dict(*args, **kwargs)
        return {k: v for k, v in state.items() if not k.startswith(self.frozen)}

    def load_state_dict(self, state_dict, strict: bool = True, **kwargs):
        result = super().load_state_dict(state_dict, strict=False, **kwargs)
        missing = [k for k in result.missing_keys if not k.startswith(self.frozen)]
        if strict and (missing or result.unexpected_keys):
            raise RuntimeError(
                f"checkpoint does not fit this {type(self).__name__}: missing {missing[:5]}, "
                f"unexpected {result.unexpected_keys[:5]}"
            )
        return result


def training_record(stage) -> dict:
    """How a stage's output was made, for its model card (illume_core.add_training): the stage,
    the recipe (`illume-train` records it on the trainer), the optimizer steps, the training
    files, and the last logged losses and accuracies."""
    trainer = stage.trainer
    datamodule = getattr(trainer, "datamodule", None)
    hparams = getattr(datamodule, "hparams", {}) or {}
    metrics = {
        name: round(float(value), 6)
        for name, value in sorted(trainer.callback_metrics.items())
        if ("loss" in name or "accuracy" in name) and getattr(value, "numel", lambda: 1)() == 1
    }
    return {
        "stage": getattr(trainer, "illume_stage", type(stage).__name__),
        "recipe": getattr(trainer, "illume_recipe", None),
        "steps": int(trainer.global_step),
        "data": [str(f) for f in hparams.get("train", []) or []],
        "metrics": metrics,
    }
