"""Sampling images (vision tokens) and text answers from an `IllumeForConditionalGeneration`.

Images: transformers' `generate` drives the model (one forward per token, KV cache) over a doubled
batch, conditional rows then unconditional rows (DESIGN.md section 4: the same prompt with the
caption removed). `ImageTokenSampler`, a logits processor, does the ILLUME part at every step:
classifier-free guidance from the two halves, the image's row structure (vision tokens inside a
row, `<end_of_line>` exactly at row ends, `<end_of_image>` after the last row), temperature, top-k
and top-p, and the draw itself from a seeded generator. It hands `generate` a one-hot score for
the drawn token in both halves, so greedy decoding appends the same token to a row and its
unconditional twin.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from transformers import LogitsProcessor, LogitsProcessorList

from illume_core import Message

from .processing import IGNORE, Example, IllumeProcessor
from .vocab import VisionVocab


def _number(name: str, value) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{name} must be a number, got {value!r}")
    if not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    return float(value)


def check_sampling(
    guidance: float = 1.0,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
) -> None:
    """The one check of sampling settings every loop, config file and command line goes through:
    a ValueError naming the setting and the allowed range. guidance: finite, >= 0 (1: none);
    temperature: finite, >= 0 (0: greedy); top_k: None or an integer >= 1; top_p: None or in (0, 1]."""
    if _number("guidance", guidance) < 0:
        raise ValueError(f"guidance must be >= 0 (1 means no guidance), got {guidance}")
    if _number("temperature", temperature) < 0:
        raise ValueError(f"temperature must be >= 0 (0 draws greedily), got {temperature}")
    if top_k is not None and (isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1):
        raise ValueError(f"top_k must be None or an integer >= 1, got {top_k!r}")
    if top_p is not None and not 0 < _number("top_p", top_p) <= 1:
        raise ValueError(f"top_p must be None or in (0, 1], got {top_p}")


def filter_logits(logits: torch.Tensor, top_k: int | None, top_p: float | None) -> torch.Tensor:
    """Keeps the top-k logits, then the smallest set whose probability reaches top_p; -inf elsewhere."""
    if top_k is not None and 0 < top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and top_p < 1.0:
        ordered, order = torch.sort(logits, descending=True, dim=-1)
        cumulative = ordered.softmax(-1).cumsum(-1)
        drop = cumulative - ordered.softmax(-1) >= top_p  # keep the token that crosses top_p
        logits = logits.masked_fill(drop.scatter(-1, order, drop), float("-inf"))
    return logits


def code_probs(
    cond: torch.Tensor,
    uncond: torch.Tensor | None,
    guidance: float = 1.0,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
) -> torch.Tensor:
    """The distribution [R, K] (float32) a code is drawn from, given vision-token logits [R, K]
    of conditional rows (and their unconditional twins when guidance != 1): CFG, temperature,
    top-k, top-p; greedy (temperature 0) is one-hot on the best code."""
    logits = cond.float()
    if guidance != 1.0:
        uncond = uncond.float()
        logits = uncond + guidance * (logits - uncond)
    if temperature == 0:
        return torch.nn.functional.one_hot(logits.argmax(-1), logits.shape[-1]).float()
    return filter_logits(logits / temperature, top_k, top_p).softmax(-1)


def _per_row(generator, rows: int):
    if generator is None or isinstance(generator, torch.Generator):
        return None
    if len(generator) != rows:
        raise ValueError(f"{len(generator)} generators for {rows} rows: give one per row")
    return list(generator)


def multinomial_one(probs: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """One draw per row of probs [R, K] -> [R], the same draw as `torch.multinomial(probs, 1,
    generator=generator)[:, 0]` for the same generator state: it is that function's own one-sample
    algorithm (argmax of p / q, q ~ Exp(1), one exponential per entry), without its validity checks
    on `probs` (two reductions read back to the host, most of its time at a drawing step's size).
    The probabilities here come from a softmax, so those checks cannot fail."""
    noise = torch.empty_like(probs).exponential_(1, generator=generator)
    return (probs / noise).argmax(-1)


def sample_rows(
    probs: torch.Tensor, generator: torch.Generator | Sequence[torch.Generator] | None = None
) -> torch.Tensor:
    """One seeded draw per row of probs [R, K] -> [R] (on probs' device). `generator`: one for
    the batch, or one per row (see `draw_codes`). The draw runs where the generator lives."""
    per_row = _per_row(generator, len(probs))
    if per_row is None:
        device = generator.device if generator is not None else torch.device("cpu")
        return multinomial_one(probs.to(device), generator).to(probs.device)
    codes = [
        multinomial_one(row.to(g.device)[None], g)[0] for row, g in zip(probs, per_row, strict=True)
    ]
    return torch.stack(codes).to(probs.device)


def draw_codes(
    cond: torch.Tensor,
    uncond: torch.Tensor | None,
    guidance: float = 1.0,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    generator: torch.Generator | Sequence[torch.Generator] | None = None,
) -> torch.Tensor:
    """Codes [R] drawn from vision-token logits [R, K] of conditional rows (and their unconditional
    twins [R, K] when guidance != 1): CFG, temperature, top-k, top-p (`code_probs`), then one
    seeded draw per row (`sample_rows`). `generator`: one for the batch, or one per row (several
    rows may share one, drawn in row order), so that a row's draws depend on its own seed alone,
    not on which rows were batched with it: a server that batches requests draws each as it would
    alone.

    Every image sampler (this module's, `TorchImageGenerator` and illume-runtime's ONNX loop) draws
    through here, so the same seed gives the same codes whatever computed the logits. The draw runs where the generator
    lives (a CPU generator: on the CPU, as transformers' own sampling would)."""
    check_sampling(guidance, temperature, top_k, top_p)
    probs = code_probs(cond, uncond, guidance, temperature, top_k, top_p)
    if temperature == 0:
        return probs.argmax(-1).to(cond.device)
    return sample_rows(probs, generator).to(cond.device)


class ImageTokenSampler(LogitsProcessor):
    """CFG + row structure + sampling for one image per conditional row (see module docstring).

    Args:
        vocab: the model's vision vocabulary.
        grid: (h, w) codes per image.
        prompt_length: length of the (left-padded) prompts; generation starts after it.
        guidance: CFG scale; 1 uses the conditional logits alone (then the batch is not doubled).
        temperature, top_k, top_p: applied to the guided logits of the vision tokens.
        generator: the seeded source of every draw.
    """

    def __init__(
        self,
        vocab: VisionVocab,
        grid: tuple[int, int],
        prompt_length: int,
        guidance: float = 1.0,
        temperature: float = 1.0,
        top_k: int | None = None,
        top_p: float | None = None,
        generator: torch.Generator | Sequence[torch.Generator] | None = None,
        eos_token_id: int | None = None,
    ):
        check_sampling(guidance, temperature, top_k, top_p)
        self.vocab, self.grid, self.prompt_length = vocab, grid, prompt_length
        self.guidance, self.temperature, self.top_k, self.top_p = (
            guidance,
            temperature,
            top_k,
            top_p,
        )
        self.generator, self.eos_token_id = generator, eos_token_id

    @property
    def length(self) -> int:
        """Tokens of one image: <start_of_image>, h rows of (w codes, <end_of_line>), <end_of_image>."""
        h, w = self.grid
        return 1 + h * (w + 1) + 1

    def forced(self, position: int) -> int | None:
        """The only token allowed at this position of the image, or None inside a row."""
        w = self.grid[1]
        if position == 0:
            return self.vocab.start_of_image
        if position >= self.length - 1:
            return self.vocab.end_of_image if position == self.length - 1 else self.eos_token_id
        column = (position - 1) % (w + 1)
        return self.vocab.end_of_line if column == w else None

    def __call__(self, input_ids: torch.LongTensor, scores: torch.Tensor) -> torch.Tensor:
        rows = len(scores) // 2 if self.guidance != 1.0 else len(scores)
        position = input_ids.shape[1] - self.prompt_length
        forced = self.forced(position)
        if forced is not None:
            token = torch.full((rows,), forced, dtype=torch.long, device=scores.device)
        else:
            ids = self.vocab.vision_ids  # only vision tokens inside a row
            uncond = scores[rows : 2 * rows, ids.start : ids.stop] if self.guidance != 1.0 else None
            code = draw_codes(
                scores[:rows, ids.start : ids.stop],
                uncond,
                self.guidance,
                self.temperature,
                self.top_k,
                self.top_p,
                self.generator,
            )
            token = code + ids.start
        token = token.repeat(len(scores) // rows)
        out = torch.full_like(scores, float("-inf"))
        out[torch.arange(len(scores), device=scores.device), token] = 0.0
        return out


class ContextLengthError(ValueError):
    """A prompt and what is to be generated after it do not fit the model's context."""


def context_length(model) -> int | None:
    """The language model's context in tokens (its max_position_embeddings), where it says."""
    config = getattr(model, "config", None)
    return getattr(getattr(config, "text_config", config), "max_position_embeddings", None)


def check_context(limit: int | None, prompt_length: int, new_tokens: int) -> None:
    """Raises ContextLengthError, naming both lengths, where `prompt_length` tokens and
    `new_tokens` more exceed a context of `limit` tokens (None: no limit known)."""
    if limit is not None and prompt_length + new_tokens > limit:
        raise ContextLengthError(
            f"the prompt is {prompt_length} tokens and {new_tokens} more are to be generated, "
            f"over the model's context of {limit} tokens; shorten the prompt to at most "
            f"{max(limit - new_tokens, 0)} tokens"
        )


def guided_conversations(
    conversations: Sequence[Sequence[Message]],
    unconditional: Sequence[Sequence[Message]] | None,
    guidance: float,
) -> list[Sequence[Message]]:
    """The rows of a classifier-free-guided batch: the conditional conversations, then (when
    guidance != 1) their unconditional twins, in the same order; every image-token loop (the
    reference, `TorchImageGenerator`, illume-runtime's ONNX loop) builds its batch from this."""
    if guidance == 1.0:
        return list(conversations)
    if unconditional is None or len(unconditional) != len(conversations):
        raise ValueError("classifier-free guidance needs one unconditional conversation per prompt")
    return [*conversations, *unconditional]


def prompt_batch(
    model, processor: IllumeProcessor, examples: Sequence[Example], new_tokens: int = 0
) -> dict:
    """Left-padded prompts on the model's device (pixels in its dtype), without labels; a
    ContextLengthError first where the longest prompt and `new_tokens` do not fit the context."""
    longest = max((len(e.input_ids) for e in examples), default=0)
    check_context(context_length(model), longest, new_tokens)
    batch = processor.collate(examples, padding_side="left")
    batch.pop("labels")
    return _on_model(model, batch)


def _on_model(model, batch: dict) -> dict:
    """A collated batch (without labels) on the model's device, pixels in its dtype."""
    if batch["pixel_values"] is None:
        batch.pop("pixel_values")
    batch = {k: v.to(model.device) for k, v in batch.items()}
    if "pixel_values" in batch:
        batch["pixel_values"] = batch["pixel_values"].to(model.dtype)
    return batch


@torch.no_grad()
def generate_image_tokens(
    model,
    processor: IllumeProcessor,
    conversations: Sequence[Sequence[Message]],
    unconditional: Sequence[Sequence[Message]] | None = None,
    guidance: float = 1.0,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """One image per conversation (each ending in a user turn) -> codes [B, h, w].

    `unconditional`: the matching conversations without the condition (needed when guidance != 1).
    """
    examples = [
        processor.encode_conversation(c, add_generation_prompt=True)
        for c in guided_conversations(conversations, unconditional, guidance)
    ]
    h, w = processor.config.image_grid
    batch = prompt_batch(model, processor, examples, new_tokens=h * (w + 1) + 2)
    sampler = ImageTokenSampler(
        processor.vocab,
        processor.config.image_grid,
        batch["input_ids"].shape[1],
        guidance,
        temperature,
        top_k,
        top_p,
        generator,
        eos_token_id=processor.tokenizer.eos_token_id,
    )
    out = model.generate(
        **batch,
        logits_processor=LogitsProcessorList([sampler]),
        do_sample=False,
        max_new_tokens=sampler.length,
        min_new_tokens=sampler.length,
        pad_token_id=processor.tokenizer.pad_token_id,
        eos_token_id=None,
    )
    new = out[: len(conversations), batch["input_ids"].shape[1] :].tolist()
    return torch.stack([processor.codes_from_ids(ids) for ids in new])


@torch.no_grad()
def generate_text(
    model,
    processor: IllumeProcessor,
    conversations: Sequence[Sequence[Message]],
    max_new_tokens: int = 32,
    do_sample: bool = False,
    **sampling,
) -> list[str]:
    """Text answers to the last user turn of each conversation (greedy by default)."""
    examples = [processor.encode_conversation(c, add_generation_prompt=True) for c in conversations]
    batch = prompt_batch(model, processor, examples, new_tokens=max_new_tokens)
    vision = processor.vocab
    out = model.generate(
        **batch,
        max_new_tokens=max_new_tokens,
        do_sample=do_sample,
        pad_token_id=processor.tokenizer.pad_token_id,
        eos_token_id=processor.tokenizer.eos_token_id,
        suppress_tokens=[*vision.vision_ids, vision.image, vision.start_of_image],
        **sampling,
    )
    new = out[:, batch["input_ids"].shape[1] :]
    return [
        processor.tokenizer.decode(ids, skip_special_tokens=True).strip() for ids in new.tolist()
    ]


@torch.no_grad()
def answer_log_likelihood(
    model, processor: IllumeProcessor, conversations: Sequence[Sequence[Message]]
) -> torch.Tensor:
    """log p(assistant answers | the rest) [B] of whole conversations, summed over the answers'
    tokens (text, or an image's codes and markers): the model scoring an answer instead of writing
    one. A caption's likelihood given an image is how the model judges its own drawings
    (`IllumePipeline.generate_image(best_of=...)`); an image's given a prompt, what it knows of
    the prompt apart from sampling (illume's likelihood probe)."""
    examples = [processor.encode_conversation(c) for c in conversations]
    batch = processor.collate(examples)
    labels = batch.pop("labels")[:, 1:].to(model.device)  # token t is predicted at t - 1
    logits = model(**_on_model(model, batch)).logits[:, :-1].float()
    picked = torch.log_softmax(logits, -1).gather(-1, labels.clamp(min=0)[..., None])[..., 0]
    return (picked * (labels != IGNORE)).sum(1).cpu()
