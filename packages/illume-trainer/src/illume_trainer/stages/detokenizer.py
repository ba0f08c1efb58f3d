"""The detokenizer stage: teach a diffusion U-Net to draw the image a tokenizer's codes describe.

Per batch: pixels -> frozen tokenizer -> codes -> decode_features -> x_rec (the very features the
MLLM's tokens will give at inference), then the usual denoising loss with x_rec as the condition,
dropped to the null condition with probability `condition_dropout` (classifier-free guidance).
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from diffusers import DDPMScheduler

from illume_core import add_training, atomic_directory, check_replaceable
from illume_detokenizer import (
    DetokenizerConfig,
    DetokenizerPipeline,
    build_pipeline,
    from_sdxl,
    trainable_parameters,
)
from illume_tokenizer import SemanticTokenizer

from ..guards import batch_is_empty
from .common import FrozenPartsStage, Normalizer, adamw_warmup_cosine, training_record


class DetokenizerStage(FrozenPartsStage):
    """Args:
    tokenizer: directory of the trained tokenizer (frozen here).
    output_dir: where the trained pipeline is saved (diffusers layout).
    preset: DetokenizerConfig preset for a U-Net built from scratch ("tiny", "shapes");
        `overrides` change its fields.
    sdxl: a local SDXL directory to start from instead (the paper's setting); latent space.
    init: a saved DetokenizerPipeline directory to continue from (e.g. a previous run).
    trainable: "all" U-Net weights, or "attention" layers only (the paper's choice for SDXL).
    lr, weight_decay, warmup_steps: AdamW and its warm-up + cosine schedule.
    condition_dropout: share of training images whose condition is replaced by the null one.
    cache_codes: keep each training image's codes after the first epoch (the tokenizer is frozen
        and deterministic, so this changes nothing but the time).
    """

    frozen = ("tokenizer.", "vae.")  # reloaded from their directories

    def __init__(
        self,
        tokenizer: str,
        output_dir: str,
        preset: str = "shapes",
        overrides: dict | None = None,
        sdxl: str | None = None,
        init: str | None = None,
        trainable: str = "all",
        lr: float = 2e-4,
        weight_decay: float = 0.0,
        warmup_steps: int = 100,
        condition_dropout: float = 0.1,
        cache_codes: bool = True,
        max_skipped_fraction: float = 0.01,
        max_skipped_in_a_row: int = 50,
    ):
        super().__init__()
        self.save_hyperparameters()
        check_replaceable(output_dir, "detokenizer")  # refused now, not after training
        self.tokenizer = SemanticTokenizer.from_pretrained(tokenizer).eval().requires_grad_(False)
        self.normalize = Normalizer.for_processor(self.tokenizer.encoder.image_processor)
        feature_dim = self.tokenizer.config.feature_dim
        num_tokens = self.tokenizer.grid[0] * self.tokenizer.grid[1]
        if init is not None:
            pipe = DetokenizerPipeline.from_pretrained(init)
        elif sdxl is not None:
            pipe = from_sdxl(sdxl, feature_dim=feature_dim, num_tokens=num_tokens)
        else:
            config = DetokenizerConfig.from_name(
                preset, **{"image_size": self.tokenizer.config.image_size, **(overrides or {})}
            )
            pipe = build_pipeline(config, feature_dim=feature_dim, num_tokens=num_tokens)
        pipe.set_progress_bar_config(disable=True)
        # from_pretrained hands back eval mode and Lightning keeps the modes it finds: a continued
        # run would otherwise train with dropout off (SDXL's U-Net and ours have none today)
        pipe.conditioner.train()
        pipe.unet.train()
        # Submodules of the LightningModule, so that devices, checkpoints and strategies see them.
        # The pipeline holds the very same modules: it is what trains, and what is saved.
        self.conditioner, self.unet, self.vae = pipe.conditioner, pipe.unet, pipe.vae
        self.pipe = pipe
        self.noise_schedule = DDPMScheduler.from_config(pipe.scheduler.config)
        self._trainable = trainable_parameters(pipe, trainable)
        self._codes: dict[int, torch.Tensor] = {}

    @torch.no_grad()
    def codes(self, batch, use_cache: bool) -> torch.Tensor:
        """[B, h, w] codes of the batch's images (cached by dataset index when asked)."""
        index = batch["index"].tolist()
        if use_cache and all(i in self._codes for i in index):
            return torch.stack([self._codes[i] for i in index]).to(self.device)
        pixels = batch["pixels"]
        side = self.tokenizer.config.image_size
        if pixels.shape[-1] != side:  # e.g. 1024 px for SDXL's VAE, 384 px for SigLIP
            pixels = F.interpolate(
                pixels.float(), size=(side, side), mode="bicubic", antialias=True
            ).clamp(0, 255)
        codes = self.tokenizer.encode(self.normalize(pixels)).codes
        if use_cache:
            self._codes.update(zip(index, codes.cpu(), strict=True))
        return codes

    def _loss(self, batch, training: bool, generator: torch.Generator | None = None):
        pixels = batch["pixels"].float() / 255.0
        with torch.no_grad():
            features = self.tokenizer.decode_features(
                self.codes(batch, use_cache=training and self.hparams.cache_codes)
            )
        pipe = self.pipe
        x0 = pipe.to_model_space(pixels)
        noise = torch.randn(x0.shape, generator=generator, device="cpu").to(x0)
        t = torch.randint(
            0, self.noise_schedule.config.num_train_timesteps, (len(x0),), generator=generator
        ).to(self.device)
        xt = self.noise_schedule.add_noise(x0, noise, t)
        drop = None
        if training and self.hparams.condition_dropout > 0:
            drop = torch.rand(len(x0), device=self.device) < self.hparams.condition_dropout
        prediction = pipe.predict(xt, t, self.conditioner(features, drop))
        kind = self.noise_schedule.config.prediction_type
        if kind == "epsilon":
            target = noise
        elif kind == "v_prediction":
            target = self.noise_schedule.get_velocity(x0, noise, t)
        elif kind == "sample":
            target = x0
        else:
            raise ValueError(f"unsupported prediction_type {kind!r}")
        return F.mse_loss(prediction.float(), target.float())

    def training_step(self, batch, batch_idx):
        if batch_is_empty(batch):  # every sample was unreadable: nothing to learn from
            return None
        loss = self._loss(batch, training=True)
        self.log("train/loss", loss, prog_bar=True, batch_size=len(batch["pixels"]))
        if batch["skipped"]:
            self.log("train/skipped", float(batch["skipped"]), reduce_fx="sum", batch_size=1)
        return loss

    def validation_step(self, batch, batch_idx):
        # The same noise and timesteps every time, so validation losses compare across steps.
        generator = torch.Generator().manual_seed(batch_idx)
        loss = self._loss(batch, training=False, generator=generator)
        self.log("val/loss", loss, prog_bar=True, batch_size=len(batch["pixels"]))

    def configure_optimizers(self):
        return adamw_warmup_cosine(
            self, self._trainable, lr=self.hparams.lr, weight_decay=self.hparams.weight_decay
        )

    def on_train_end(self) -> None:
        # Runs after callbacks' on_train_end, so an EMA callback has already swapped its average in.
        if self.trainer.is_global_zero:
            with atomic_directory(self.hparams.output_dir, "detokenizer") as tmp:
                self.pipe.save_pretrained(tmp)
                add_training(tmp, training_record(self))
                # which tokenizer's features this detokenizer draws from
                (Path(tmp) / "tokenizer.txt").write_text(
                    str(Path(self.hparams.tokenizer).resolve()) + "\n"
                )
