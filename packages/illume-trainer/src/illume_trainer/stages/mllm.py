"""The MLLM stages (ILLUME Table 5): one LightningModule, what trains set by the recipe.

    groups: {adapter: 1e-3, new_rows: 2e-4}            stage 1, visual embedding initialisation
    groups: {adapter: 5e-5, llm: 5e-5}                 stage 2, unified image-text alignment
    groups: {vision: 2e-6, adapter: 2e-5, llm: 2e-5}   stage 3, supervised fine-tuning

`new_rows` trains only the added rows (vision tokens, markers) of the embedding and the LM head;
`llm` trains all of the LLM. Stage 1 builds the model from parts (an LLM directory or a Llama
preset, the vision encoder directory, the tokenizer's codebook size and grid); later stages start
from the previous stage's output (`init`). The dataset's typed samples become model inputs in one
place, `ConversationTransform` (mllm_inputs.py): output images as the vision tokenizer's codes,
the text of a drawing request dropped with probability `p_uncond` (the unconditional branch of
CFG, which for an edit is its source image alone, as `IllumePipeline.edit` contrasts).
"""

from __future__ import annotations

import os
import random
from pathlib import Path

import torch

from illume_core import add_training, atomic_directory, check_replaceable
from illume_mllm import (
    IGNORE,
    LLM_PRESETS,
    IllumeConfig,
    IllumeForConditionalGeneration,
    IllumeProcessor,
    ProcessorConfig,
    build_model,
    build_processor,
    build_text_tokenizer,
    chat_template_words,
    check_vision_feature_layer,
    shipped_chat_template,
)
from illume_tokenizer import SemanticTokenizer

from ..guards import batch_is_empty
from .common import FrozenPartsStage, adamw_warmup_cosine, training_record
from .mllm_inputs import ConversationTransform

GROUPS = ("vision", "adapter", "llm", "new_rows")


class MLLMStage(FrozenPartsStage):
    """Args:
    output_dir: where the trained MLLM (model + processor) is saved.
    tokenizer: the vision tokenizer directory (codes of output images; codebook size and grid).
    groups: what trains and at which learning rate (see module docstring).
    init: the previous stage's output directory; None builds the model (stage 1).
    vision: vision encoder directory (stage 1 only; default: the tokenizer's encoder).
    vision_feature_layer: the encoder layer understanding reads (stage 1 only; an index into its
        hidden states, or a list of them, concatenated per patch as in LLaVA). None reads the
        layer the tokenizer quantizes, the paper's one encoder for both; a tokenizer on an early,
        patch-local layer (for edits that copy what they leave alone) wants understanding on a
        deeper one, or on both.
    llm: LLM directory, or a preset of illume_mllm.LLM_PRESETS trained from scratch (stage 1 only,
        where it is required).
    tokenizer_corpus: with a preset LLM, conversation files whose text the new text tokenizer also
        learns from, besides this stage's data: the text of later stages (questions, edit
        instructions, assessments). A tokenizer that never saw it spells it out byte by byte
        (an assessment answer took 244 tokens instead of about 70), which a small model cannot
        learn to write.
    processor_preset: ProcessorConfig preset (stage 1 only; None: the LLM's own chat template,
        "shapes": ShapesWorld's, with no system prompt).
    weight_decay, warmup_steps: AdamW and its warm-up + cosine schedule (no decay on embeddings,
        so rows that do not train stay bit-identical).
    p_uncond: probability of dropping the text of a drawing request, a caption or an edit's
        instruction, keeping its input images (the unconditional branch of CFG).
    grid_embeddings: row and column embeddings of output codes (IllumeConfig.grid_embeddings; not in
        the paper's model). None keeps the init's model as it is; True on a model without them
        adds them, starting at zero (they train with `new_rows` or `llm`).
    attn_implementation: transformers' attention kernels for the LLM and the vision tower while
        training ("sdpa", "eager", ...); None keeps what the model loads with (sdpa). Training only:
        the saved model does not keep it. On CPU, sdpa's backward for short sequences is slow: the
        shapes stage 2 (about 110 tokens a conversation) trains 1.2x faster with "eager", while
        stage 3's packed QA (longer sequences) is faster with sdpa (benchmarks/RESULTS.md).
    loss_weighting: "token" averages the cross-entropy over every answer token of the batch (LLaVA's
        rule); "example" averages each conversation's answer tokens first, then the conversations,
        so a one-word answer weighs as much as a 64-token image. With "token", QA answers (about 20
        tokens a conversation) are 9% of the ShapesWorld stage-3 mixture's answer tokens.
    edit_source_codes: show an edit's source image as its codes too, after its features
        (ProcessorConfig.edit_source_codes; not in the paper). None keeps the init's processor as
        it is; saved with the processor, so the pipeline edits the way the model trained.
    snapshot_every: also save the model as it stands every this many optimizer steps, loadable
        as the output is, in `<output_dir>.steps/<step>/`: a learning curve scores them (the
        paper's Fig. 6, benchmarks/paper_claims.py). None: only the output.
    """

    frozen = ("vision_tokenizer.",)  # reloaded from its directory

    def __init__(
        self,
        output_dir: str,
        tokenizer: str,
        groups: dict[str, float],
        init: str | None = None,
        vision: str | None = None,
        vision_feature_layer: int | list[int] | None = None,
        llm: str | None = None,
        tokenizer_corpus: list[str] | None = None,
        processor_preset: str | None = None,
        weight_decay: float = 0.0,
        warmup_steps: int = 100,
        p_uncond: float = 0.1,
        loss_weighting: str = "token",
        grid_embeddings: bool | None = None,
        edit_source_codes: bool | None = None,
        attn_implementation: str | None = None,
        snapshot_every: int | None = None,
        seed: int = 0,
        max_skipped_fraction: float = 0.01,
        max_skipped_in_a_row: int = 50,
    ):
        super().__init__()
        unknown = set(groups) - set(GROUPS)
        if unknown or not groups:
            raise ValueError(f"groups must name some of {GROUPS}, got {sorted(groups)}")
        if "new_rows" in groups and "llm" in groups:
            raise ValueError("new_rows is part of llm: train one or the other")
        if loss_weighting not in ("token", "example"):
            raise ValueError(f"loss_weighting must be 'token' or 'example', got {loss_weighting!r}")
        if snapshot_every is not None and snapshot_every < 1:
            raise ValueError(f"snapshot_every must be None or >= 1, got {snapshot_every}")
        self.save_hyperparameters()
        check_replaceable(output_dir, "mllm")  # refused now, not after training
        self.vision_tokenizer = (
            SemanticTokenizer.from_pretrained(tokenizer).eval().requires_grad_(False)
        )
        self.model: IllumeForConditionalGeneration | None = None
        self.processor: IllumeProcessor | None = None
        self._transform: ConversationTransform | None = None
        self._param_groups: list[dict] | None = None
        self._rng = random.Random(seed)
        if init is not None:
            self._load(init)
        else:  # a bad layer or a missing LLM fails here, not when the trainer builds the model
            check_vision_feature_layer(self._vision_feature_layer())
            if llm is None:
                raise ValueError(
                    "stage 1 (no init) builds the model: give model.llm, an LLM directory or a "
                    f"preset of illume_mllm.LLM_PRESETS ({', '.join(LLM_PRESETS)})"
                )

    # -- building ---------------------------------------------------------------------------------

    def _load(self, directory: str) -> None:
        # from_pretrained hands back a model in eval mode, and Lightning keeps the modes it finds:
        # without train() a later stage would train with dropout off (as stage 1's built model
        # does not)
        config, wanted = IllumeConfig.from_pretrained(directory), self.hparams.grid_embeddings
        if config.grid_embeddings and wanted is False:
            raise ValueError(
                f"{directory} has grid embeddings; a later stage cannot remove them: drop "
                "grid_embeddings: false from the recipe"
            )
        config.grid_embeddings = config.grid_embeddings or bool(wanted)  # added ones start at zero
        self.model = IllumeForConditionalGeneration.from_pretrained(
            directory, config=config
        ).train()
        self.processor = IllumeProcessor.from_pretrained(directory)
        if self.hparams.edit_source_codes is not None:
            self.processor.config.edit_source_codes = self.hparams.edit_source_codes

    def _vision_feature_layer(self) -> int | list[int]:
        # Unless the recipe says otherwise, understanding reads the layer the tokenizer quantizes
        # (None there is the last layer).
        layer = self.hparams.vision_feature_layer
        if layer is None:
            layer = self.vision_tokenizer.config.feature_layer
        return -1 if layer is None else layer

    def setup(self, stage: str) -> None:
        # codes packed into shards by another tokenizer would train the model on a vocabulary
        # it does not draw with: refused before the first step
        datamodule = getattr(self.trainer, "datamodule", None)
        packed = datamodule.code_fingerprints() if hasattr(datamodule, "code_fingerprints") else {}
        if packed:
            from ..shards import StaleCodesError, tokenizer_fingerprint

            mine = tokenizer_fingerprint(self.hparams.tokenizer)
            for directory, fingerprint in packed.items():
                if fingerprint != mine:
                    raise StaleCodesError(
                        f"{directory} holds codes of another tokenizer (fingerprint "
                        f"{fingerprint[:12]}) than model.tokenizer {self.hparams.tokenizer} "
                        f"({mine[:12]}): pack the data again with `illume data pack --tokenizer "
                        f"{self.hparams.tokenizer}`"
                    )

    def configure_model(self) -> None:
        # What trains is fixed here, before a strategy wraps the model: DDP must see only the
        # parameters that receive gradients.
        if self.model is None:
            # Initialised from the stage's seed alone, whatever ran before: every process of a
            # distributed run, and a single-process run, start from the same weights.
            with torch.random.fork_rng():
                torch.manual_seed(self.hparams.seed)
                self._build()
        if self.hparams.attn_implementation is not None:
            self.model.set_attn_implementation(self.hparams.attn_implementation)
        if self._param_groups is None:
            self._param_groups = self._select()

    def _build(self) -> None:
        hp = self.hparams
        vision = hp.vision or str(Path(hp.tokenizer) / self.vision_tokenizer.config.encoder)
        if hp.llm in LLM_PRESETS:
            from ..conversations import IMAGE, read_conversations

            extra = [
                value.replace(IMAGE, " ")
                for path in hp.tokenizer_corpus or []
                for conversation in read_conversations(path)
                for _, value in conversation.turns
            ]
            layout = (
                ProcessorConfig.from_name(hp.processor_preset)
                if hp.processor_preset
                else ProcessorConfig()
            )
            text_tokenizer = build_text_tokenizer(
                [*self.trainer.datamodule.texts(), *extra],
                template_words=chat_template_words(shipped_chat_template(layout.chat_format)),
            )
            llm = LLM_PRESETS[hp.llm]
        else:
            from transformers import AutoTokenizer

            text_tokenizer = AutoTokenizer.from_pretrained(hp.llm)
            llm = hp.llm
        tok = self.vision_tokenizer
        self.processor = build_processor(
            text_tokenizer,
            vision,
            tok.codebook_size,
            tok.grid,
            preset=hp.processor_preset,
            edit_source_codes=bool(hp.edit_source_codes),
        )
        self.model = build_model(
            self.processor,
            vision,
            llm,
            vision_feature_layer=self._vision_feature_layer(),
            grid_embeddings=bool(hp.grid_embeddings),
        )

    def _select(self) -> list[dict]:
        """Freezes everything, then unfreezes the recipe's groups; returns optimizer groups."""
        model, groups = self.model, self.hparams.groups
        model.requires_grad_(False)
        model.release_rows()
        out = []

        def add(params, lr, decay=True):
            params = list(params)
            for p in params:
                p.requires_grad_(True)
            matrices = [p for p in params if p.ndim >= 2] if decay else []
            rest = [p for p in params if not decay or p.ndim < 2]
            if matrices:
                out.append(
                    {"params": matrices, "lr": lr, "weight_decay": self.hparams.weight_decay}
                )
            if rest:
                out.append({"params": rest, "lr": lr, "weight_decay": 0.0})

        if "vision" in groups:
            add(model.vision_tower.parameters(), groups["vision"])
        if "adapter" in groups:
            add(model.adapter.parameters(), groups["adapter"])
        if "llm" in groups:
            embeddings = {
                id(model.get_input_embeddings().weight),
                id(model.get_output_embeddings().weight),
            }
            params = [*model.language_model.parameters(), *model.lm_head.parameters()]
            add([p for p in params if id(p) not in embeddings], groups["llm"])
            add(
                [model.get_input_embeddings().weight, model.get_output_embeddings().weight],
                groups["llm"],
                decay=False,
            )
        if "new_rows" in groups:
            add(model.train_new_rows_only(), groups["new_rows"], decay=False)
        grid = getattr(model, "grid_embedding", None)  # new like the rows; embeddings: no decay
        if grid is not None and ("llm" in groups or "new_rows" in groups):
            add(grid.parameters(), groups.get("llm", groups.get("new_rows")), decay=False)
        return out

    # -- batches ----------------------------------------------------------------------------------

    @property
    def transform(self) -> ConversationTransform:
        """Dataset samples -> the model's inputs (illume_trainer.stages.mllm_inputs), for the
        processor the stage trains with."""
        if self._transform is None or self._transform.processor is not self.processor:
            self._transform = ConversationTransform(
                self.processor,
                self.vision_tokenizer,
                self.hparams.p_uncond,
                self._rng,
                pack=self.hparams.loss_weighting == "token",
            )
        return self._transform

    def _loss(self, batch, training: bool):
        """Mean cross-entropy over the answer tokens (or, with loss_weighting="example", over the
        conversations) of the *global* batch: each process divides its sum by the count of all
        processes (times their number, as DDP averages), so 2 processes of B / 2 conversations
        train exactly like one process of B."""
        examples = [self.transform(sample, training) for sample in batch["items"]]
        inputs = self.processor.collate(examples)
        inputs = {k: v.to(self.device) for k, v in inputs.items() if v is not None}
        if inputs["attention_mask"].is_floating_point():  # packed: additive, in the model's dtype
            inputs["attention_mask"] = inputs["attention_mask"].to(self.model.dtype)
        labels = inputs.pop("labels")[:, 1:]
        # All positions' logits, though the loss reads the answers' only: transformers' boolean
        # `logits_to_keep` was 5% faster a shapes stage-3 step, but its variable-sized [N, V]
        # tensors grew the CPU process by about 3 MB a step (benchmarks/RESULTS.md).
        logits = self.model(**inputs, use_cache=False).logits[:, :-1]  # training keeps no KV cache
        losses = torch.nn.functional.cross_entropy(
            logits.flatten(0, 1).float(), labels.flatten(), ignore_index=IGNORE, reduction="none"
        ).view_as(labels)  # [B, T], 0 where ignored
        answered = (labels != IGNORE).sum(dim=1)  # [B]
        if self.hparams.loss_weighting == "token":
            total, count = losses.sum(), answered.sum()
        else:
            total = (losses.sum(dim=1) / answered.clamp_min(1)).sum()
            count = (answered > 0).sum()
        world = self.trainer.world_size if self._trainer is not None else 1
        if world > 1:
            count = self.all_gather(count).sum() / world
        return total / count.clamp_min(1), len(examples)

    def training_step(self, batch, batch_idx):
        if batch_is_empty(batch):  # every sample was unreadable: nothing to learn from
            return None
        loss, n = self._loss(batch, training=True)
        self.log("train/loss", loss, prog_bar=True, batch_size=n)
        if batch["skipped"]:
            self.log("train/skipped", float(batch["skipped"]), reduce_fx="sum", batch_size=1)
        return loss

    def validation_step(self, batch, batch_idx):
        loss, n = self._loss(batch, training=False)
        self.log("val/loss", loss, prog_bar=True, batch_size=n)

    def configure_optimizers(self):
        self.configure_model()
        return adamw_warmup_cosine(self, self._param_groups)

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["rng"] = self._rng.getstate()

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        if "rng" in checkpoint:
            self._rng.setstate(checkpoint["rng"])

    def on_train_batch_end(self, outputs, batch, batch_idx) -> None:
        every, step = self.hparams.get("snapshot_every"), self.trainer.global_step
        if every and step % every == 0 and step < self.trainer.max_steps:
            folder = Path(f"{self.hparams.output_dir}.steps") / str(step)
            if self.trainer.is_global_zero and not folder.is_dir():  # a resumed run keeps it
                self._save(folder)

    def on_train_end(self) -> None:
        if self.trainer.is_global_zero:
            self.model.release_rows()
            self._save(self.hparams.output_dir)

    def _save(self, directory: str | os.PathLike) -> None:
        """The model and processor as one loadable directory, written whole or not at all."""
        with atomic_directory(directory, "mllm") as tmp:
            self.model.save_pretrained(tmp)
            self.processor.save_pretrained(tmp)
            add_training(tmp, training_record(self))
            (Path(tmp) / "vision_tokenizer.txt").write_text(
                str(Path(self.hparams.tokenizer).resolve()) + "\n"
            )
