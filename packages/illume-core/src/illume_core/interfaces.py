"""The seams between packages (DESIGN.md section 3): Protocols and the dataclasses they return.

Shapes are written `[B, N, D]`: B images, N = h * w tokens in row-major order, D feature channels.
Tensors are `torch.Tensor` at run time; this module does not import torch, so it is typed `Any`.
Implementations live in the model packages and never inherit from each other across packages:
anything with these methods fits (structural typing, checkable with `isinstance`).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
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
        self,
        features: Tensor,
        *,
        num_inference_steps: int,
        guidance_scale: float,
        generator: Any | None = None,
    ) -> DetokenizerOutput:
        """`[B, N, D]` reconstructed features -> B images."""
        ...


@runtime_checkable
class UnifiedPipeline(Protocol):
    """What sees, draws and edits: a tokenizer, a unified MLLM and a detokenizer behind one object
    (`illume.IllumePipeline`). illume-eval's evaluation measures anything of this shape. `generator`
    is a `torch.Generator`: one per evaluation run, so that its figures are reproducible."""

    def generate_image(
        self,
        prompt: str | Sequence[str],
        num_images: int = 1,
        seed: int | None = None,
        generator: Any | None = None,
        best_of: int | None = None,
    ) -> list[Image.Image]:
        """Text to image: `num_images` images per prompt, in prompt order."""
        ...

    def answer(
        self,
        image: Image.Image | Sequence[Image.Image],
        question: str | Sequence[str],
        max_new_tokens: int = 16,
    ) -> str | list[str]:
        """Visual question answering; lists give lists."""
        ...

    def edit(
        self,
        image: Image.Image | Sequence[Image.Image],
        instruction: str | Sequence[str],
        seed: int | None = None,
        generator: Any | None = None,
    ) -> Image.Image | list[Image.Image]:
        """The image edited as its instruction says; lists give lists."""
        ...

    def reconstruct(
        self,
        image: Image.Image | Sequence[Image.Image],
        seed: int | None = None,
        generator: Any | None = None,
    ) -> list[Image.Image]:
        """Image -> the tokenizer's codes -> the detokenizer: the ceiling of drawing and editing."""
        ...

    def image_codes(self, images: Sequence[Image.Image]) -> Tensor:
        """The tokenizer's codes `[B, h, w]` of images."""
        ...

    def edit_codes(
        self, images: Sequence[Image.Image], instructions: Sequence[str], generator: Any
    ) -> Tensor:
        """The MLLM's codes `[B, h, w]` for edits, before the detokenizer."""
        ...

    def judge(self, images: Sequence[Image.Image], prompts: Sequence[str]) -> Tensor:
        """How well each image shows its prompt by the model's own understanding `[B]`."""
        ...

    def image_log_likelihood(self, prompts: Sequence[str], codes: Tensor) -> Tensor:
        """log p(codes | text-to-image prompt) `[B]`; an empty prompt: unconditional."""
        ...
