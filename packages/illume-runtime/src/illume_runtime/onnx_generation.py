"""Image tokens (and greedy text) from the exported graphs with ONNX Runtime.

The loop of `TorchImageGenerator`, over `prefill.onnx` and `decode.onnx`: conditional and
unconditional rows in one batch, the presents of a step bound as the next step's past (they stay
on the GPU under CUDA / TensorRT), and draws through `illume_mllm.draw_codes`, so one seed gives
the same codes as the PyTorch paths.

    fast = OnnxImageGenerator("runs/demo/onnx")               # the processor is saved beside the graphs
    codes = fast(conversations, unconditional, guidance=3.0, generator=torch.Generator().manual_seed(0))
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
import torch

from illume_core import Message
from illume_mllm import (
    IllumeProcessor,
    SpeculativeJacobi,
    check_context,
    draw_codes,
    grid_positions,
    guided_conversations,
    image_cells,
    image_positions,
)

from .engines import OnnxModels


def _first(value, length: int):
    """The first `length` positions (axis 2) of a present: a GPU tensor (TensorRT) is cut where
    it lies; ONNX Runtime's values are cut on the host."""
    if hasattr(value, "tensor"):  # illume_runtime.tensorrt.CudaValue
        return type(value)(value.tensor[:, :, :length])
    return np.ascontiguousarray(value.numpy()[:, :, :length])


if TYPE_CHECKING:
    from .tensorrt import TensorRTModels


class OnnxImageGenerator:
    """See the module docstring. `models`: an OnnxModels, a TensorRTModels (native engines), or an
    export directory (then ONNX Runtime on `device`)."""

    def __init__(
        self,
        models: OnnxModels | TensorRTModels | str | os.PathLike,
        processor: IllumeProcessor | None = None,
        device: str = "cpu",
    ):
        if isinstance(models, (str, os.PathLike)):
            models = OnnxModels(models, device)
        self.models = models
        self.processor = processor or IllumeProcessor.from_pretrained(
            self.models.directory / "processor"
        )
        self.layers = self.models.manifest["decoder"]["layers"]
        self.vocab = self.processor.vocab
        self.grid = tuple(self.processor.config.image_grid)
        # a model with grid embeddings takes each token's cell (illume_mllm.grid_positions)
        self.grid_embeddings = bool(self.models.manifest.get("grid_embeddings", False))

    # -- pieces -----------------------------------------------------------------------------------

    def _prefill(self, conversations: Sequence[Sequence[Message]]):
        """Left-padded prompts -> (logits, presents, attention mask [R, T], next positions [R])."""
        examples = [
            self.processor.encode_conversation(c, add_generation_prompt=True) for c in conversations
        ]
        h, w = self.grid
        # exports made before the manifest recorded the context have no such key: unchecked
        longest = max(len(e.input_ids) for e in examples)
        check_context(self.models.manifest.get("context"), longest, h * (w + 1) + 2)
        batch = self.processor.collate(examples, padding_side="left")
        ids = batch["input_ids"].numpy()
        mask = batch["attention_mask"].numpy().astype(np.int64)
        cells = {}
        if self.grid_embeddings:
            positions = grid_positions(batch["input_ids"], self.vocab, self.grid)
            cells = {"grid_positions": positions.numpy()}
        embeds = self.models.run("embeddings", input_ids=ids, **cells)[0]
        if batch["pixel_values"] is not None:
            features = self.models.run(
                "vision_adapter", pixel_values=batch["pixel_values"].float().numpy()
            )[0]
            slots = ids == self.vocab.image
            if int(slots.sum()) != features.shape[0] * features.shape[1]:
                raise ValueError(
                    f"{int(slots.sum())} <image> slots for {features.shape[0]} images: use the exported processor"
                )
            embeds[slots] = features.reshape(-1, features.shape[-1])
        positions = np.clip(mask.cumsum(-1) - 1, 0, None)
        out = self.models.run_bound(
            "prefill", {"inputs_embeds": embeds, "attention_mask": mask, "position_ids": positions}
        )
        return out[0], out[1:], mask, mask.sum(-1)

    def _decode(
        self, token: np.ndarray, mask: np.ndarray, position: np.ndarray, presents: list, cell=-1
    ):
        """Feeds token [R] (in grid cell `cell`: -1, not a code) -> (logits, presents)."""
        feeds = {
            "input_ids": token[:, None],
            "attention_mask": mask,
            "position_ids": position[:, None],
        }
        if self.grid_embeddings:
            feeds["grid_positions"] = np.full((len(token), 1), cell, dtype=np.int64)
        for i in range(self.layers):
            feeds[f"past_key_values.{i}.key"] = presents[2 * i]
            feeds[f"past_key_values.{i}.value"] = presents[2 * i + 1]
        out = self.models.run_bound("decode", feeds)
        return out[0], out[1:]

    # -- images -----------------------------------------------------------------------------------

    def __call__(
        self,
        conversations: Sequence[Sequence[Message]],
        unconditional: Sequence[Sequence[Message]] | None = None,
        guidance: float = 1.0,
        temperature: float = 1.0,
        top_k: int | None = None,
        top_p: float | None = None,
        generator: torch.Generator | None = None,
        decoding: str = "plain",
        window: int = 16,
    ) -> torch.Tensor:
        """One image per conversation -> codes [B, h, w] (arguments as generate_image_tokens;
        `decoding` "sjd": speculative Jacobi decoding over `window` positions a pass, as
        `TorchImageGenerator`'s, through decode_window.onnx). `self.forward_passes` counts the
        decoder passes of the last call."""
        if decoding not in ("plain", "sjd"):
            raise ValueError(f"decoding must be 'plain' or 'sjd', got {decoding!r}")
        rows = guided_conversations(conversations, unconditional, guidance)
        logits, presents, mask, position = self._prefill(rows)
        self.forward_passes = 1
        half = len(conversations)
        if decoding == "sjd":
            sampling = (guidance, temperature, top_k, top_p, generator)
            return self._sjd(presents, mask, position, len(rows), half, window, sampling)
        vision = self.vocab.vision_ids
        drawn, cells = image_positions(self.grid), image_cells(self.grid)
        last_drawn = max(i for i, d in enumerate(drawn) if d)
        codes = []
        for step, is_drawn in enumerate(drawn[: last_drawn + 1]):
            if is_drawn:
                scores = torch.from_numpy(logits.numpy()[:, vision.start : vision.stop])
                uncond = scores[half:] if guidance != 1.0 else None
                code = draw_codes(
                    scores[:half], uncond, guidance, temperature, top_k, top_p, generator
                )
                codes.append(code)
                token = np.tile(code.numpy() + vision.start, len(rows) // half)
            else:
                value = self.vocab.start_of_image if step == 0 else self.vocab.end_of_line
                token = np.full(len(rows), value, dtype=np.int64)
            if step < last_drawn:
                mask = np.concatenate([mask, np.ones((len(rows), 1), np.int64)], axis=1)
                logits, presents = self._decode(
                    token.astype(np.int64), mask, position, presents, cells[step]
                )
                self.forward_passes += 1
                position = position + 1
        h, w = self.grid
        return torch.stack(codes, dim=1).view(half, h, w)

    def _sjd(
        self, past, mask, position, rows: int, half: int, window: int, sampling
    ) -> torch.Tensor:
        """`illume_mllm.SpeculativeJacobi` over decode_window.onnx: each pass feeds the window
        after the past, and the past kept for the next one is the presents up to the committed
        prefix (the drafts' keys and values past it are dropped)."""
        if "decode_window" not in self.models.manifest["graphs"]:
            raise ValueError(
                f"{self.models.directory} has no decode_window graph (exported before speculative "
                "decoding): export the pipeline again, or decode plainly"
            )
        sjd = SpeculativeJacobi(self.vocab, self.grid, half, window, *sampling)
        cells = np.array(image_cells(self.grid))
        prompt = mask.shape[1]
        while not sjd.done:
            span = sjd.span
            fed = np.tile(sjd.fed().numpy(), (rows // half, 1)).astype(np.int64)  # [R, T]
            committed_before = span.start - 1  # image positions already in the past
            feeds = {
                "input_ids": fed,
                "attention_mask": np.ones((rows, prompt + committed_before + len(span)), np.int64),
                "position_ids": position[:, None] + committed_before + np.arange(len(span)),
            }
            feeds["attention_mask"][:, :prompt] = mask
            if self.grid_embeddings:
                feeds["grid_positions"] = np.tile(cells[span.start - 1 : span.stop - 1], (rows, 1))
            for i in range(self.layers):
                feeds[f"past_key_values.{i}.key"] = past[2 * i]
                feeds[f"past_key_values.{i}.value"] = past[2 * i + 1]
            out = self.models.run_bound("decode_window", feeds)
            self.forward_passes += 1
            step = sjd.verify(torch.from_numpy(out[0].numpy()))
            # keep the keys and values of the fed tokens that were committed: the last committed
            # one and the accepted drafts, `step` tokens in all
            keep = prompt + committed_before + step
            past = [_first(value, keep) for value in out[1:]]
        return sjd.codes()

    # -- text ---------------------------------------------------------------------------------------

    def greedy_text(
        self, conversations: Sequence[Sequence[Message]], max_new_tokens: int = 32
    ) -> list[str]:
        """Greedy answers, as `illume_mllm.generate_text` gives them (vision tokens suppressed)."""
        tokenizer = self.processor.tokenizer
        logits, presents, mask, position = self._prefill(conversations)
        banned = [*self.vocab.vision_ids, self.vocab.image, self.vocab.start_of_image]
        answers = [[] for _ in conversations]
        done = np.zeros(len(conversations), bool)
        for _ in range(max_new_tokens):
            scores = logits.numpy().copy()
            scores[:, banned] = -np.inf
            token = scores.argmax(-1).astype(np.int64)
            token[done] = tokenizer.pad_token_id
            for row, t in enumerate(token):
                if not done[row]:
                    answers[row].append(int(t))
            done |= token == tokenizer.eos_token_id
            if done.all():
                break
            mask = np.concatenate([mask, np.ones((len(token), 1), np.int64)], axis=1)
            logits, presents = self._decode(token, mask, position, presents)
            position = position + 1
        return [tokenizer.decode(ids, skip_special_tokens=True).strip() for ids in answers]
