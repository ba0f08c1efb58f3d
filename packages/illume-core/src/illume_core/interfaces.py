"""The seams between packages (DESIGN.md section 3): Protocols and the dataclasses they return.

Shapes are written `[B, N, D]`: B images, N = h * w tokens in row-major order, D feature channels.
Tensors are `torch.Tensor` at run time; this module does not import torch, so it is typed `Any`.
Implementations live in the model packages and never inherit from each other across packages:
anything with these methods fits (structural typing, checkable with `isinstance`).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, runtime_checkable

from PIL import Image

Tensor = Any  # torch.Tensor, without importing torch here
PathLike = str | os.PathLike


@dataclass
class VisionTokens:
    """Discrete image tokens from `VisionTokenizer.encode`.

    Attributes:
        codes: `[B, h, w]` int64 codebook indices in `[0, codebook_size)`, row-major.
        quantized: `[B, h*w, C]` the chosen codebook vectors (before the feature decoder), if kept.
    """

    codes: Tensor
    quantized: Tensor | None = None

    @property
    def grid(self) -> tuple[int, int]:
        return int(self.codes.shape[-2]), int(self.codes.shape[-1])


@dataclass
class DetokenizerOutput:
    """Images from a `Detokenizer`.

    Attributes:
        images: B PIL RGB images.
        pixels: `[B, 3, H, W]` float in `[0, 1]`, the same images as a tensor.
    """

    images: list[Image.Image]
    pixels: Tensor | None = None


@dataclass
class ImageGenerationOutput:
    """Images drawn by a unified model.

    Attributes:
        codes: `[B, h, w]` int64 vision-token codes the model sampled.
        images: B PIL RGB images rendered from the codes by a detokenizer (empty if not rendered).
    """

    codes: Tensor
    images: list[Image.Image] = field(default_factory=list)


@dataclass
class TextGenerationOutput:
    """Text answers of a unified model.

    Attributes:
        texts: B decoded answers, special tokens removed.
        token_ids: `[B, T]` the generated token ids, if kept.
    """

    texts: list[str]
    token_ids: Tensor | None = None


@dataclass
class Message:
    """One chat turn. `content` interleaves text and images in reading order."""

    role: Literal["system", "user", "assistant"]
    content: str | list[str | Image.Image]

    @property
    def parts(self) -> list[str | Image.Image]:
        return [self.content] if isinstance(self.content, str) else list(self.content)


@runtime_checkable
class Pretrained(Protocol):
    """A model stored as `config.json` + `model.safetensors` in one directory."""

    def save_pretrained(self, directory: PathLike) -> None: ...

    @classmethod
    def from_pretrained(cls, directory: PathLike) -> Pretrained: ...


@runtime_checkable
class VisionTokenizer(Protocol):
    """Semantic vision tokenizer: a frozen encoder, a VQ codebook and a feature decoder."""

    @property
    def codebook_size(self) -> int:
        """K, the number of codes."""
        ...

    @property
    def grid(self) -> tuple[int, int]:
        """(h, w) of the code grid for the configured image size."""
        ...

    def encode(self, pixels: Tensor) -> VisionTokens:
        """`[B, 3, H, W]` float pixels (the tokenizer's normalisation) -> codes `[B, h, w]`."""
        ...

    def features(self, pixels: Tensor) -> Tensor:
        """`[B, 3, H, W]` -> `[B, N, D]` continuous encoder features (for understanding)."""
        ...

    def decode_features(self, codes: Tensor) -> Tensor:
        """codes `[B, h, w]` -> `[B, N, D]` reconstructed semantic features."""
        ...


@runtime_checkable
class Detokenizer(Protocol):
    """Semantic features back to pixels (a conditioned diffusion model)."""

    def __call__(
        self, features: Tensor, *, steps: int, guidance: float, generator: Any | None = None
    ) -> DetokenizerOutput:
        """`[B, N, D]` reconstructed features -> B images."""
        ...


@runtime_checkable
class UnifiedModel(Protocol):
    """An LLM that reads images as continuous features and writes them as vision tokens."""

    def generate_text(self, messages: Sequence[Message], **sampling: Any) -> TextGenerationOutput:
        """Answers the last user turn of a conversation whose turns may hold images."""
        ...

    def generate_image_tokens(self, prompt: str, **sampling: Any) -> Tensor:
        """A text prompt -> codes `[num_images, h, w]` sampled with classifier-free guidance."""
        ...
