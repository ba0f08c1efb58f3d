"""The fast image-token loop in PyTorch: CFG rows in one forward over a preallocated KV cache.

Same inputs and outputs as `illume_mllm.generate_image_tokens` (the reference: transformers'
`generate` with a logits processor), and the same draws: both sample through
`illume_mllm.draw_codes`, so one seed gives identical codes on the CPU. What it saves, per token:

- transformers' per-step machinery (cache objects growing by concatenation, mask rebuilding,
  logits processors over the whole vocabulary, output dataclasses);
- the LM head at forced positions (`<start_of_image>`, `<end_of_line>`, `<end_of_image>`), and the
  text rows of the LM head everywhere (inside a row only vision tokens may be drawn);
- any growth: the cache [L, 2B, Hkv, S, hd] and the attention mask are allocated once per batch
  shape and reused, and a decode step has the same shapes at every position (so it can be
  compiled, or captured as a CUDA graph on a GPU with `compile=True`).

    from illume_mllm import TorchImageGenerator

    fast = TorchImageGenerator(model, processor)
    codes = fast(conversations, unconditional, guidance=3.0, generator=torch.Generator().manual_seed(0))
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from illume_core import Message

from .decoder import FlatDecoder, padding_causal_bias, positions_from_mask
from .generation import (
    check_sampling,
    code_probs,
    draw_codes,
    guided_conversations,
    multinomial_one,
    prompt_batch,
    sample_rows,
)

DECODINGS = ("plain", "sjd")


def _draw(probs: torch.Tensor, generator) -> torch.Tensor:
    """One seeded draw per [b, j] of probs [B, n, K] -> [B, n]: from the batch's generator, or
    row b from generator[b] (as `sample_rows`)."""
    b, n, k = probs.shape
    if generator is None or isinstance(generator, torch.Generator):
        return sample_rows(probs.reshape(b * n, k), generator).view(b, n)
    return torch.stack([_draw_one(probs[i], g) for i, g in enumerate(generator)])


def _draw_one(probs: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """[n, K] -> [n] from one generator, in one call."""
    return multinomial_one(probs.to(generator.device), generator).cpu()


def _uniform(b: int, n: int, generator) -> torch.Tensor:
    """[B, n] seeded U(0, 1): from the batch's generator, or row b from generator[b]."""
    if generator is None or isinstance(generator, torch.Generator):
        device = generator.device if generator is not None else torch.device("cpu")
        return torch.rand(b, n, generator=generator, device=device).cpu()
    return torch.stack([torch.rand(n, generator=g, device=g.device).cpu() for g in generator])


def image_positions(grid: tuple[int, int]) -> list[bool]:
    """For each token of a generated image, whether it is drawn (True) or forced by the row structure."""
    h, w = grid
    return [False] + ([True] * w + [False]) * h + [False]


def image_cells(grid: tuple[int, int]) -> list[int]:
    """For each token of a generated image, its grid position (`row * w + column`; -1 for the
    markers): what `illume_mllm.grid_positions` counts, for models with grid embeddings."""
    cells = iter(range(grid[0] * grid[1]))
    return [next(cells) if drawn else -1 for drawn in image_positions(grid)]


class TorchImageGenerator:
    """See the module docstring.

    Args:
        model: an IllumeForConditionalGeneration (eval mode; any device and dtype).
        processor: its IllumeProcessor.
        compile: compile the decode step with torch.compile ("reduce-overhead", i.e. CUDA graphs,
            on a GPU). Off by default: on a CPU the eager step is already short.
    """

    def __init__(self, model, processor, compile: bool = False):
        self.model, self.processor = model.eval(), processor
        self.vocab = processor.vocab
        self.grid = tuple(processor.config.image_grid)
        self.decoder = FlatDecoder(model)
        self._cells = torch.tensor(image_cells(self.grid), device=self.device)
        self._buffers: dict[tuple, dict[str, torch.Tensor]] = {}
        self._step = self._decode_step
        if compile:
            mode = "reduce-overhead" if self.decoder.lm_head.weight.is_cuda else "default"
            self._step = torch.compile(self._decode_step, mode=mode, fullgraph=True, dynamic=False)

    @property
    def device(self) -> torch.device:
        return self.decoder.lm_head.weight.device

    def _workspace(self, rows: int, slots: int) -> dict[str, torch.Tensor]:
        """The cache and mask for `rows` x `slots`, allocated once per shape."""
        key = (rows, slots)
        if key not in self._buffers:
            s, dtype, device = self.decoder.shape, self.decoder.dtype, self.device
            cache = (s.layers, rows, s.kv_heads, slots, s.head_dim)
            self._buffers = {
                key: {  # keep one shape: a new batch shape frees the old cache
                    "k": torch.zeros(cache, dtype=dtype, device=device),
                    "v": torch.zeros(cache, dtype=dtype, device=device),
                    "bias": torch.empty(rows, 1, 1, slots, dtype=dtype, device=device),
                    "position": torch.empty(rows, dtype=torch.long, device=device),
                    "slot": torch.empty(1, dtype=torch.long, device=device),
                }
            }
        return self._buffers[key]

    def _decode_step(
        self, token: torch.Tensor, cell: torch.Tensor, ws: dict[str, torch.Tensor]
    ) -> torch.Tensor:
        """Feeds token [R] (in grid cell [1]) at ws["slot"] / ws["position"]; returns the last
        hidden state [R, D]."""
        ws["bias"].index_fill_(3, ws["slot"], 0.0)
        x = self.decoder.embed(token[:, None], cell.expand(len(token), 1))
        hidden = self.decoder.forward_static(
            x, ws["position"][:, None], ws["bias"], ws["k"], ws["v"], ws["slot"]
        )
        ws["position"].add_(1)
        ws["slot"].add_(1)
        return hidden

    @torch.no_grad()
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
        """One image per conversation -> codes [B, h, w] (arguments as generate_image_tokens).
        `decoding`: "plain" (one forward pass per token) or "sjd" (speculative Jacobi decoding
        over `window` positions a pass: the same distribution of images, fewer passes; see
        `_sjd`). `self.forward_passes` counts the passes of the last call."""
        if decoding not in DECODINGS:
            raise ValueError(f"decoding must be one of {DECODINGS}, got {decoding!r}")
        if isinstance(window, bool) or not isinstance(window, int) or window < 1:
            raise ValueError(f"window must be an integer >= 1, got {window!r}")
        check_sampling(guidance, temperature, top_k, top_p)
        processor, vocab = self.processor, self.vocab
        examples = [
            processor.encode_conversation(c, add_generation_prompt=True)
            for c in guided_conversations(conversations, unconditional, guidance)
        ]
        h, w = self.grid
        batch = prompt_batch(self.model, processor, examples, new_tokens=h * (w + 1) + 2)
        ids, mask = batch["input_ids"], batch["attention_mask"]
        rows, prompt = ids.shape
        drawn = image_positions(self.grid)
        last_drawn = max(i for i, d in enumerate(drawn) if d)
        ws = self._workspace(rows, prompt + last_drawn)

        # Prefill: the prompts into slots [0, prompt).
        ws["k"].zero_(), ws["v"].zero_()
        key_mask = torch.zeros(rows, ws["bias"].shape[-1], dtype=mask.dtype, device=mask.device)
        key_mask[:, :prompt] = mask
        slots = torch.arange(prompt, device=self.device)
        embeds = self.model.prompt_embeddings(ids, batch.get("pixel_values")).to(self.decoder.dtype)
        hidden = self.decoder.forward_static(
            embeds,
            positions_from_mask(mask),
            padding_causal_bias(key_mask, slots, embeds.dtype),
            ws["k"],
            ws["v"],
            slots,
        )
        ws["bias"].copy_(padding_causal_bias(key_mask, slots[-1:], embeds.dtype))
        ws["position"].copy_(mask.sum(-1))
        ws["slot"].fill_(prompt)
        self.forward_passes = 1
        sampling = (guidance, temperature, top_k, top_p, generator)
        if decoding == "sjd":
            return self._sjd(ws, key_mask, prompt, rows, sampling, window)

        # Decode: forced tokens are fed without an LM head; drawn ones from the vision rows only.
        half = rows // 2 if guidance != 1.0 else rows
        vision = vocab.vision_ids
        forced = {0: vocab.start_of_image}
        codes = []
        for position, is_drawn in enumerate(drawn[: last_drawn + 1]):
            if is_drawn:
                logits = self.decoder.logits(hidden, slice(vision.start, vision.stop))
                uncond = logits[half:] if guidance != 1.0 else None
                code = draw_codes(
                    logits[:half], uncond, guidance, temperature, top_k, top_p, generator
                )
                codes.append(code)
                token = (code + vision.start).repeat(rows // half)
            else:
                value = forced.get(position, vocab.end_of_line)
                token = torch.full((rows,), value, dtype=torch.long, device=self.device)
            if position < last_drawn:
                hidden = self._step(token, self._cells[position : position + 1], ws)
                self.forward_passes += 1
        h, w = self.grid
        return torch.stack(codes, dim=1).view(half, h, w).cpu()

    def _sjd(self, ws, key_mask, prompt: int, rows: int, sampling: tuple, window: int):
        """`SpeculativeJacobi` over the static KV cache: no rollback is needed, as a window
        overwrites the slots of its positions and the causal mask hides slots past a query's."""
        guidance = sampling[0]
        device, vision = self.device, self.vocab.vision_ids
        sjd = SpeculativeJacobi(self.vocab, self.grid, rows // 2 if guidance != 1.0 else rows,
                                window, *sampling)  # fmt: skip
        key_mask[:, prompt:] = 1
        while not sjd.done:
            span, fed = sjd.span, sjd.fed()  # fed [B, T]: the last committed token, then drafts
            slots = torch.arange(prompt + span.start - 1, prompt + span.stop - 1, device=device)
            hidden = self.decoder.forward_static(
                self.decoder.embed(
                    fed.repeat(rows // len(fed), 1).to(device),
                    self._cells[span.start - 1 : span.stop - 1].expand(rows, -1),
                ),
                (ws["position"] + span.start - 1)[:, None] + torch.arange(len(span), device=device),
                padding_causal_bias(key_mask, slots, self.decoder.dtype),
                ws["k"],
                ws["v"],
                slots,
                every_position=True,
            )  # [R, T, D]: position span[i] predicted from hidden[:, i]
            self.forward_passes += 1
            sjd.verify(self.decoder.logits(hidden, slice(vision.start, vision.stop)))
        return sjd.codes()


class SpeculativeJacobi:
    """Speculative Jacobi decoding of one batch of images (Teng et al., arXiv 2410.01699), apart
    from whatever runs the model (the torch loop, illume-runtime's ONNX one):

        sjd = SpeculativeJacobi(vocab, grid, images, window, guidance, temperature, top_k, top_p, g)
        while not sjd.done:
            logits = model(sjd.fed(), ...)       # [R, T, K] vision logits at the positions of sjd.span
            sjd.verify(logits)
        codes = sjd.codes()                      # [B, h, w]

    Each pass feeds the last committed token and the drafts of a window and gets every window
    position's distribution p at once (CFG inside, as `code_probs`; R = 2B rows under guidance).
    Drafts are accepted in order, each with probability min(1, p(d) / q(d)), q being what it was
    drawn from; the first rejected one is drawn anew from max(0, p - q), normalised. That is
    speculative sampling's rule, so every committed code has exactly the distribution plain
    decoding draws it from (tested). Positions after it get fresh drafts from this pass's p (the
    Jacobi step: they improve as their context settles), positions entering the window uniform
    ones. A batch commits the prefix every image has settled (the others' extra accepted codes are
    drafted again), so the saving is largest for one image."""

    def __init__(self, vocab, grid, images: int, window: int, guidance=1.0, temperature=1.0,
                 top_k=None, top_p=None, generator=None):  # fmt: skip
        self.vocab, self.window, self.images = vocab, window, images
        self.sampling = (guidance, temperature, top_k, top_p)
        self.generator = generator
        self.grid = tuple(grid)
        self.drawn = image_positions(self.grid)
        self.total = max(i for i, d in enumerate(self.drawn) if d) + 1  # up to the last code
        self.is_drawn = torch.tensor(self.drawn[: self.total])
        forced = [vocab.start_of_image if i == 0 else vocab.end_of_line for i in range(self.total)]
        self.tokens = torch.tensor(forced).repeat(images, 1)  # [B, total] committed, then drafts
        codebook = len(vocab.vision_ids)
        self.q = torch.empty(images, self.total, codebook)  # what each draft was drawn from
        self.uniform = torch.full((images, codebook), 1.0 / codebook)
        self.committed = 1  # position 0, <start_of_image>, is forced
        self._draft(range(1, min(1 + window, self.total)), None)

    @property
    def done(self) -> bool:
        return self.committed >= self.total

    @property
    def span(self) -> range:
        """The image positions this pass verifies."""
        return range(self.committed, min(self.committed + self.window, self.total))

    def fed(self) -> torch.Tensor:
        """The token ids [B, T] to feed (image positions span - 1): the last committed, drafts."""
        return self.tokens[:, self.span.start - 1 : self.span.stop - 1]

    def _draft(self, positions: range, probs: torch.Tensor | None) -> None:
        """New drafts at `positions`, from probs [B, len, K] (uniform where None)."""
        if not len(positions):
            return
        if probs is None:
            probs = self.uniform[:, None].expand(-1, len(positions), -1)
        start = self.vocab.vision_ids.start
        drafts = _draw(probs, self.generator) + start
        self.tokens[:, positions] = torch.where(
            self.is_drawn[positions], drafts, self.tokens[:, positions]
        )
        self.q[:, positions] = probs

    def verify(self, logits: torch.Tensor) -> int:
        """Vision logits [R, T, K] of the span's positions -> the positions committed (>= 1)."""
        span, images, start = self.span, self.images, self.vocab.vision_ids.start
        guidance = self.sampling[0]
        logits = logits.float()
        k = logits.shape[-1]
        cond = logits[:images].reshape(-1, k)
        uncond = logits[images:].reshape(-1, k) if guidance != 1.0 else None
        p = code_probs(cond, uncond, *self.sampling).view(images, len(span), k).cpu()

        # every draft's test at once; an image settles up to its first rejection, included
        codes = (self.tokens[:, span] - start).clamp(min=0)[..., None]  # [B, T, 1]
        p_code, q_code = p.gather(2, codes)[..., 0], self.q[:, span].gather(2, codes)[..., 0]
        uniform = _uniform(images, len(span), self.generator)
        passed = (uniform * q_code < p_code) | ~self.is_drawn[span]  # p = 0: never
        first_failed = torch.where(passed.all(1), len(span), (~passed).int().argmax(1))
        step = int((first_failed + 1).clamp(max=len(span)).min())
        failing = first_failed < step  # the code redrawn there is committed
        if failing.any():
            at = first_failed.clamp(max=len(span) - 1)
            every = torch.arange(images)
            p_at = p[every, at]
            residual = (p_at - self.q[every, span.start + at]).clamp(min=0)
            mass = residual.sum(-1, keepdim=True)
            residual = torch.where(mass > 0, residual / mass.clamp(min=1e-30), p_at)
            redrawn = _draw(residual[:, None], self.generator)[:, 0] + start
            rows = torch.nonzero(failing)[:, 0]
            self.tokens[rows, span.start + at[rows]] = redrawn[rows]
        self.committed += step
        # the Jacobi step: positions left in the window take this pass's p, new ones uniform
        rest = range(self.committed, span.stop)
        self._draft(rest, p[:, rest.start - span.start :] if len(rest) else None)
        self._draft(range(span.stop, min(self.committed + self.window, self.total)), None)
        return step

    def codes(self) -> torch.Tensor:
        """The committed codes [B, h, w]."""
        h, w = self.grid
        codes = self.tokens[:, self.is_drawn] - self.vocab.vision_ids.start
        return codes.view(self.images, h, w)
