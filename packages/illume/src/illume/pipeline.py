"""`IllumePipeline`: the vision tokenizer, the unified MLLM and the diffusion detokenizer, composed.

    pipe = IllumePipeline.from_pretrained("runs/shapes/pipeline")
    images = pipe.generate_image("a red circle above a blue square", num_images=4, seed=0)
    best = pipe.generate_image("a red circle above a blue square", best_of=4, seed=0)  # self-judged
    answer = pipe.answer(image, "How many circles are in the image?")
    edited = pipe.edit(image, "change the red circle to green")

A pipeline directory holds `tokenizer/`, `mllm/` (model + processor) and `detokenizer/`.

Vision tokens are drawn by one of the runtimes of illume-runtime (`pipe.use_runtime(...)`), all of
which give the same codes for the same seed on the CPU: "torch" (default: the fast PyTorch loop),
"reference" (transformers' `generate`), and three over the graphs that `illume export` writes
(exported into `<pipeline dir>/onnx` on first use when no directory is given): "onnx" (ONNX
Runtime, on the CPU or CUDA as the model is), "onnx-tensorrt" (ONNX Runtime's TensorRT execution
provider) and "tensorrt" (native TensorRT engines, illume_runtime.tensorrt, over graphs in
standard operators only: exported into `<pipeline dir>/onnx-portable`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from diffusers.utils import BaseOutput
from PIL import Image

from illume_core import Message, atomic_directory, read_json
from illume_detokenizer import DetokenizerPipeline
from illume_mllm import (
    IllumeForConditionalGeneration,
    IllumeProcessor,
    answer_log_likelihood,
    check_sampling,
    generate_image_tokens,
    generate_text,
)
from illume_tokenizer import SemanticTokenizer

logger = logging.getLogger(__name__)

RUNTIMES = ("torch", "reference", "onnx", "onnx-tensorrt", "tensorrt")


@dataclass
class SamplingConfig:
    """How images are drawn: vision-token sampling, then the detokenizer's denoising."""

    guidance: float = 3.0
    """Classifier-free guidance of the MLLM's vision tokens (1 = none)."""
    temperature: float = 1.0
    edit_temperature: float | None = None
    """Editing's temperature (`edit`, and a chat turn that draws with an image in the conversation);
    None: `temperature`. An edit copies most of its source token for token, and a cooler draw
    copies more faithfully."""
    edit_guidance: float | None = None
    """Editing's classifier-free guidance, against the image without the instruction; None:
    `guidance`. Guidance pushes every code away from what the unguided model would write for the
    image alone, which for an edit is mostly a copy: an edit wants less of it than a drawing."""
    top_k: int | None = None
    top_p: float | None = None
    steps: int = 20
    """Detokenizer denoising steps."""
    detokenizer_guidance: float = 3.0
    sampler: str = "dpm++"
    best_of: int = 1
    """Text to image: images drawn per image asked for, of which the one the MLLM itself rates most
    consistent with the prompt is kept (`IllumePipeline.judge`); 1 keeps the first."""
    judge_question: str = "Describe the image."
    """The captioning question the judge asks of each drawing; the prompt is scored as its answer."""
    decoding: str = "plain"
    """How vision tokens are decoded: "plain" (one forward pass a token) or "sjd" (speculative
    Jacobi decoding, `sjd_window` positions a pass: images of the same distribution in fewer
    passes; every runtime but "reference")."""
    sjd_window: int = 16

    def __post_init__(self):
        check_sampling(self.guidance, self.temperature, self.top_k, self.top_p)
        if self.edit_temperature is not None:
            check_sampling(temperature=self.edit_temperature)
        if self.edit_guidance is not None:
            check_sampling(guidance=self.edit_guidance)
        check_sampling(guidance=self.detokenizer_guidance)
        if self.decoding not in ("plain", "sjd"):
            raise ValueError(f"decoding must be 'plain' or 'sjd', got {self.decoding!r}")
        for name in ("steps", "best_of", "sjd_window"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
        for name in ("sampler", "judge_question"):
            if not isinstance(getattr(self, name), str):
                raise ValueError(f"{name} must be a string, got {getattr(self, name)!r}")

    def guidance_for(self, edits: bool) -> float:
        """The vision tokens' guidance for a drawing, or for an edit (`edit_guidance` when set)."""
        return self.edit_guidance if edits and self.edit_guidance is not None else self.guidance

    def temperature_for(self, edits: bool) -> float:
        """The vision tokens' temperature for a drawing, or for an edit (`edit_temperature` when set)."""
        if edits and self.edit_temperature is not None:
            return self.edit_temperature
        return self.temperature

    @classmethod
    def from_json_file(cls, path: str | os.PathLike) -> SamplingConfig:
        """Settings from `generation_config.json` (transformers' names for the vision tokens'
        sampling, the rest under "illume"), or from the `sampling.json` of older directories."""
        values = read_json(path)
        if not isinstance(values, dict):
            raise ValueError(f"{path}: expected a JSON object of sampling settings")
        if Path(path).name == GENERATION_FILE:
            values = _from_generation_config(values, path)
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(
                f"{path}: unknown sampling settings {unknown}; known: {sorted(known)} (fix or delete the file)"
            )
        try:
            return cls(**values)
        except ValueError as err:
            raise ValueError(f"{path}: {err}") from None

    def generation_config(self) -> dict:
        """The settings as `generation_config.json` holds them: the vision tokens' sampling in
        transformers' GenerationConfig names (greedy when the temperature is 0, whose top-k and
        top-p then mean nothing), the rest under "illume"."""
        from transformers import GenerationConfig

        fields = dataclasses.asdict(self)
        greedy = fields["temperature"] == 0
        values = {"do_sample": not greedy, "guidance_scale": fields["guidance"]}
        if not greedy:
            values |= {
                k: fields[k] for k in ("temperature", "top_k", "top_p") if fields[k] is not None
            }
        values["illume"] = {k: v for k, v in fields.items() if k not in _TRANSFORMERS_NAMES}
        GenerationConfig(**values).validate(strict=True)  # what transformers would refuse
        return values


#: The pipeline directory's sampling settings, in transformers' format (SamplingConfig).
GENERATION_FILE = "generation_config.json"
#: Where directories saved before generation_config.json kept them (read, never written).
SAMPLING_FILE = "sampling.json"
# SamplingConfig's fields that GenerationConfig names (its name: ours)
_TRANSFORMERS_NAMES = {"temperature": "temperature", "top_k": "top_k", "top_p": "top_p", "guidance": "guidance_scale"}  # fmt: skip


def _from_generation_config(values: dict, path) -> dict:
    illume = values.get("illume", {})
    if not isinstance(illume, dict):
        raise ValueError(f'{path}: "illume" must be a JSON object of sampling settings')
    out = dict(illume)
    for ours, theirs in _TRANSFORMERS_NAMES.items():
        if ours in out:
            raise ValueError(f'{path}: {ours} belongs in "{theirs}", not under "illume"')
        if theirs in values:
            out[ours] = values[theirs]
    if values.get("do_sample") is False:
        out["temperature"] = 0.0
    return out


@dataclass
class IllumePipelineOutput(BaseOutput):
    """What `IllumePipeline.__call__` returns (a diffusers `BaseOutput`: by attribute, key or index).

    Attributes:
        images: the drawings, `num_images_per_prompt` per prompt in prompt order.
        codes: [B, h, w] the vision tokens each was drawn from (what the MLLM wrote).
    """

    images: list[Image.Image]
    codes: torch.Tensor


def _saved_sampling(directory: Path) -> SamplingConfig | None:
    """A pipeline directory's sampling settings: generation_config.json, else the sampling.json
    of older directories, else (saved before either) the defaults."""
    for name in (GENERATION_FILE, SAMPLING_FILE):
        if (directory / name).is_file():
            return SamplingConfig.from_json_file(directory / name)
    return None


class IllumePipeline:
    """See the module docstring. Every image-drawing call takes a `seed` (or a generator)."""

    def __init__(
        self,
        tokenizer: SemanticTokenizer,
        model: IllumeForConditionalGeneration,
        processor: IllumeProcessor,
        detokenizer: DetokenizerPipeline,
        sampling: SamplingConfig | None = None,
    ):
        self.tokenizer = tokenizer.eval()
        self.model = model.eval()
        self.processor = processor
        self.detokenizer = detokenizer
        self.detokenizer.set_progress_bar_config(disable=True)
        self.sampling = sampling or SamplingConfig()
        self.directory: Path | None = None
        self.runtime = "torch"
        self._generator_impl = None
        if (model.config.codebook_size, tuple(model.config.image_grid)) != (
            tokenizer.codebook_size,
            tokenizer.grid,
        ):
            raise ValueError(
                f"the MLLM speaks {model.config.codebook_size} codes on a {model.config.image_grid} grid, the "
                f"tokenizer {tokenizer.codebook_size} on {list(tokenizer.grid)}: they were not trained together"
            )

    # -- placement ---------------------------------------------------------------------------------

    def to(
        self, device: str | torch.device | None = None, dtype: torch.dtype | None = None
    ) -> IllumePipeline:
        """Moves (and casts) the vision tokenizer, the MLLM and the detokenizer, as a diffusers
        pipeline's `.to` does: `pipe.to("cuda", torch.bfloat16)`. Every task then runs there;
        seeds still draw on the CPU's generators, so a seed means the same draw anywhere."""
        if isinstance(device, torch.dtype):  # pipe.to(torch.bfloat16)
            device, dtype = None, device
        if dtype is not None and not dtype.is_floating_point:
            raise ValueError(f"dtype must be a floating-point torch dtype, got {dtype}")
        from diffusers.utils import logging as diffusers_logging

        self.tokenizer.to(device=device, dtype=dtype)
        self.model.to(device=device, dtype=dtype)
        quiet = diffusers_logging.get_verbosity()
        diffusers_logging.set_verbosity_error()  # "modules to keep in float32: []", of none
        try:
            self.detokenizer.to(device, dtype)
        finally:
            diffusers_logging.set_verbosity(quiet)
        self._generator_impl = None  # the fast loop's buffers are rebuilt where the model now is
        return self

    @property
    def device(self) -> torch.device:
        return self.model.device

    @property
    def dtype(self) -> torch.dtype:
        return self.model.dtype

    @contextlib.contextmanager
    def sampling_as(self, **overrides) -> Iterator[SamplingConfig]:
        """The sampling settings with `overrides` (SamplingConfig's fields; None leaves one as it
        is) for the calls inside the block: `with pipe.sampling_as(temperature=0.5): ...`."""
        base = self.sampling
        changes = {k: v for k, v in overrides.items() if v is not None}
        self.sampling = dataclasses.replace(base, **changes)
        try:
            yield self.sampling
        finally:
            self.sampling = base

    # -- persistence ------------------------------------------------------------------------------

    @classmethod
    def from_pretrained(
        cls,
        directory: str | os.PathLike,
        device: str | torch.device | None = None,
        dtype: torch.dtype | None = None,
    ) -> IllumePipeline:
        """A pipeline directory, moved to `device` and cast to `dtype` when given (`.to`)."""
        directory = Path(directory)
        missing = [p for p in ("tokenizer", "mllm", "detokenizer") if not (directory / p).is_dir()]
        if missing:
            raise FileNotFoundError(
                f"{directory} is not an ILLUME pipeline directory: no {', '.join(missing)}/ "
                "(make one with IllumePipeline.save_pretrained or `illume demo`)"
            )
        pipe = cls(
            SemanticTokenizer.from_pretrained(directory / "tokenizer"),
            IllumeForConditionalGeneration.from_pretrained(directory / "mllm"),
            IllumeProcessor.from_pretrained(directory / "mllm"),
            DetokenizerPipeline.from_pretrained(directory / "detokenizer"),
            _saved_sampling(directory),
        )
        pipe.directory = directory
        if device is not None or dtype is not None:
            pipe.to(device, dtype)
        return pipe

    @classmethod
    def from_stages(
        cls,
        tokenizer: str | os.PathLike,
        mllm: str | os.PathLike,
        detokenizer: str | os.PathLike,
        sampling: SamplingConfig | None = None,
    ) -> IllumePipeline:
        """The outputs of the training stages, each from its own directory."""
        return cls(
            SemanticTokenizer.from_pretrained(tokenizer),
            IllumeForConditionalGeneration.from_pretrained(mllm),
            IllumeProcessor.from_pretrained(mllm),
            DetokenizerPipeline.from_pretrained(detokenizer),
            sampling,
        )

    def save_pretrained(self, directory: str | os.PathLike, card: str | None = None) -> None:
        """Every part, the sampling settings (`generation_config.json`), and a model card (README.md; `card`, else one saying what
        the pipeline is and how to load it: illume.model_card.pipeline_card)."""
        from .model_card import CARD_FILE, pipeline_card

        with atomic_directory(directory, "pipeline") as tmp:
            (Path(tmp) / CARD_FILE).write_text(card if card is not None else pipeline_card(self))
            self.tokenizer.save_pretrained(Path(tmp) / "tokenizer")
            self.model.save_pretrained(Path(tmp) / "mllm")
            self.processor.save_pretrained(Path(tmp) / "mllm")
            self.detokenizer.save_pretrained(Path(tmp) / "detokenizer")
            (Path(tmp) / GENERATION_FILE).write_text(
                json.dumps(self.sampling.generation_config(), indent=2) + "\n"
            )

    # -- runtimes ---------------------------------------------------------------------------------

    def use_runtime(
        self, runtime: str, onnx_dir: str | os.PathLike | None = None
    ) -> IllumePipeline:
        """Chooses what draws vision tokens: "torch", "reference", "onnx", "onnx-tensorrt" or
        "tensorrt" (see the module docstring); "onnx" and "onnx-tensorrt" run the detokenizer's
        U-Net steps too (illume_runtime.OnnxUNetStep). `onnx_dir`: the export to run (default
        `<pipeline dir>/onnx`)."""
        if runtime not in RUNTIMES:
            raise ValueError(f"runtime must be one of {RUNTIMES}, got {runtime!r}")
        impl = None
        if runtime == "torch":
            from illume_mllm import TorchImageGenerator

            impl = TorchImageGenerator(self.model, self.processor)
        elif runtime == "tensorrt":
            from illume_runtime import OnnxImageGenerator
            from illume_runtime.tensorrt import TensorRTModels

            models = TensorRTModels(self._onnx_dir(onnx_dir, portable=True))
            impl = OnnxImageGenerator(models, self.processor)
        elif runtime in ("onnx", "onnx-tensorrt"):
            from illume_runtime import OnnxImageGenerator

            device = (
                "tensorrt"
                if runtime == "onnx-tensorrt"
                else ("cuda" if self.model.device.type == "cuda" else "cpu")
            )
            impl = OnnxImageGenerator(self._onnx_dir(onnx_dir), self.processor, device=device)
        self.runtime, self._generator_impl = runtime, impl
        unet_step = None
        # ONNX Runtime runs the detokenizer's U-Net steps too, at any batch; the native TensorRT
        # engines are built for at most 32 rows (16 guided images), so they leave it to PyTorch
        if runtime in ("onnx", "onnx-tensorrt"):
            from illume_runtime import OnnxUNetStep

            unet_step = OnnxUNetStep(impl.models)
        self.detokenizer.use_unet_step(unet_step)
        return self

    def _onnx_dir(self, onnx_dir: str | os.PathLike | None, portable: bool = False) -> Path:
        """The export to run: `onnx_dir`, or one made once beside the pipeline (`onnx/`, or for
        TensorRT's native engines `onnx-portable/`, standard operators only)."""
        if onnx_dir is not None:
            return Path(onnx_dir)
        if self.directory is None:
            raise ValueError(
                "this pipeline was not loaded from a directory: pass onnx_dir (made by `illume export`)"
            )
        out = self.directory / ("onnx-portable" if portable else "onnx")
        if not (out / "manifest.json").is_file():
            from illume_runtime import export_pipeline

            logger.info("exporting ONNX graphs to %s (once)", out)
            export_pipeline(self.directory, out, portable=portable)
        return out

    def _draw(
        self, conversations, unconditional, generator: torch.Generator, **sampling
    ) -> torch.Tensor:
        if self.runtime != "reference" and self._generator_impl is None:
            self.use_runtime(self.runtime)
        if self.sampling.decoding != "plain":
            if self.runtime == "reference":
                raise ValueError(
                    f"decoding {self.sampling.decoding!r} runs in the fast runtimes (torch, onnx, "
                    "onnx-tensorrt, tensorrt), not the reference: pick one, or decoding='plain'"
                )
            sampling |= {"decoding": self.sampling.decoding, "window": self.sampling.sjd_window}
        if self.runtime == "reference":
            return generate_image_tokens(
                self.model,
                self.processor,
                conversations,
                unconditional,
                generator=generator,
                **sampling,
            )
        return self._generator_impl(conversations, unconditional, generator=generator, **sampling)

    # -- helpers ----------------------------------------------------------------------------------

    def _generator(self, seed: int | None, generator: torch.Generator | None) -> torch.Generator:
        if generator is not None:
            return generator
        if seed is not None and (
            isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**63
        ):
            raise ValueError(f"seed must be an integer in [0, 2**63), got {seed!r}")
        return torch.Generator().manual_seed(seed if seed is not None else torch.seed() % 2**31)

    def _row_generators(self, seeds: Sequence[int], rows_each: int) -> list[torch.Generator]:
        """One generator per seed, repeated for each of its `rows_each` rows (drawn in row order)."""
        out = []
        for seed in seeds:
            generator = self._generator(seed, None)
            out += [generator] * rows_each
        return out

    def render(
        self, codes: torch.Tensor, generator: torch.Generator | Sequence[torch.Generator]
    ) -> list[Image.Image]:
        """codes [B, h, w] -> B images through the detokenizer; `generator`: one, or one per row
        (the denoising seed of a row then comes from its own generator)."""
        s = self.sampling
        self.detokenizer.use_scheduler(s.sampler)
        if isinstance(generator, torch.Generator):
            seeds = torch.randint(0, 2**31 - 1, (len(codes),), generator=generator).tolist()
        else:
            seeds = [int(torch.randint(0, 2**31 - 1, (1,), generator=g)) for g in generator]
        return self.detokenizer(
            codes=codes.to(next(self.tokenizer.parameters()).device),
            tokenizer=self.tokenizer,
            num_inference_steps=s.steps,
            guidance_scale=s.detokenizer_guidance,
            generator=[torch.Generator().manual_seed(x) for x in seeds],
        ).images

    def reconstruct(
        self,
        image: Image.Image | Sequence[Image.Image],
        seed: int | None = None,
        generator: torch.Generator | None = None,
    ) -> list[Image.Image]:
        """Image -> the tokenizer's codes -> the detokenizer: what this pipeline draws for an image
        when the MLLM gets every code right (the ceiling of its drawing and editing figures)."""
        images = [image] if isinstance(image, Image.Image) else list(image)
        generator = self._generator(seed, generator)
        return self.render(self.image_codes(images), generator)

    @torch.no_grad()
    def image_codes(self, images: Sequence[Image.Image]) -> torch.Tensor:
        """The tokenizer's codes [B, h, w] of images: what a perfect MLLM would draw for them."""
        weight = next(self.tokenizer.parameters())
        pixels = self.tokenizer.preprocess(list(images)).to(weight.device, weight.dtype)
        return self.tokenizer.encode(pixels).codes

    def draw_codes(
        self,
        conversations: Sequence[Sequence[Message]],
        unconditional,
        generator: torch.Generator | Sequence[torch.Generator],
        edits: bool = False,
    ) -> torch.Tensor:
        """Vision tokens [B, h, w] for conversations ending in a drawing request, at the pipeline's
        sampling (`edits`: the requests show images to edit, drawn at its edit guidance and
        temperature)."""
        s = self.sampling
        return self._draw(
            conversations,
            unconditional,
            generator,
            guidance=s.guidance_for(edits),
            temperature=s.temperature_for(edits),
            top_k=s.top_k,
            top_p=s.top_p,
        )

    # -- tasks ------------------------------------------------------------------------------------

    def __call__(
        self,
        prompt: str | Sequence[str],
        num_images_per_prompt: int = 1,
        guidance_scale: float | None = None,
        temperature: float | None = None,
        top_k: int | None = None,
        top_p: float | None = None,
        num_inference_steps: int | None = None,
        best_of: int | None = None,
        seed: int | Sequence[int] | None = None,
        generator: torch.Generator | None = None,
        return_dict: bool = True,
    ) -> IllumePipelineOutput | tuple:
        """Text to image, as a diffusers pipeline is called: `pipe("a red circle").images[0]`.
        `guidance_scale`, `temperature`, `top_k`, `top_p`: the vision tokens' sampling;
        `num_inference_steps`: the detokenizer's; None takes the pipeline's `sampling`
        (generation_config.json). The other arguments are `generate_image`'s."""
        with self.sampling_as(
            guidance=guidance_scale, temperature=temperature, top_k=top_k, top_p=top_p,
            steps=num_inference_steps,
        ):  # fmt: skip
            images, codes = self._generate(prompt, num_images_per_prompt, seed, generator, best_of)
        if not return_dict:
            return images, codes
        return IllumePipelineOutput(images=images, codes=codes)

    def generate_image(
        self,
        prompt: str | Sequence[str],
        num_images: int = 1,
        seed: int | Sequence[int] | None = None,
        generator: torch.Generator | None = None,
        best_of: int | None = None,
    ) -> list[Image.Image]:
        """Text to image: `num_images` images per prompt, in prompt order. `best_of` (default: the
        sampling config's) draws that many candidates for each image and keeps the one `judge`
        rates best, the model's own understanding checking its drawing. `seed`: one for the call,
        or one per prompt, each prompt then drawn exactly as it would be alone (how a server
        batches requests)."""
        return self._generate(prompt, num_images, seed, generator, best_of)[0]

    def _generate(self, prompt, num_images, seed, generator, best_of):
        """generate_image's images, and the codes [B, h, w] each was drawn from."""
        best_of = self.sampling.best_of if best_of is None else best_of
        if best_of < 1:
            raise ValueError(f"best_of must be at least 1, got {best_of}")
        if isinstance(num_images, bool) or not isinstance(num_images, int) or num_images < 1:
            raise ValueError(f"num_images must be an integer >= 1, got {num_images!r}")
        prompts = [prompt] if isinstance(prompt, str) else list(prompt)
        if not prompts:
            raise ValueError("no prompt given: pass a prompt or a list of prompts")
        if isinstance(seed, Sequence):
            if len(seed) != len(prompts):
                raise ValueError(
                    f"{len(seed)} seeds for {len(prompts)} prompts: give one per prompt"
                )
            generator = self._row_generators(seed, num_images * best_of)
        else:
            generator = self._generator(seed, generator)
        drawn = [p for p in prompts for _ in range(num_images * best_of)]
        conversations = [self.processor.t2i_messages(p) for p in drawn]
        unconditional = [self.processor.t2i_messages("")] * len(conversations)
        codes = self.draw_codes(conversations, unconditional, generator)
        images = self.render(codes, generator)
        if best_of == 1:
            return images, codes
        scores = self.judge(images, drawn).view(-1, best_of)  # [prompts x num_images, best_of]
        keep = [i * best_of + int(k) for i, k in enumerate(scores.argmax(1))]
        return [images[i] for i in keep], codes[keep]

    def judge(self, images: Sequence[Image.Image], prompts: Sequence[str]) -> torch.Tensor:
        """How well each image shows its prompt, by the MLLM's own understanding: log p(prompt |
        image) [B] as the answer to the sampling config's captioning question (`judge_question`).
        Comparable between images of the same prompt."""
        question = self.sampling.judge_question
        return answer_log_likelihood(
            self.model,
            self.processor,
            [
                [Message("user", [im, question]), Message("assistant", p)]
                for im, p in zip(images, prompts, strict=True)
            ],
        )

    def image_log_likelihood(self, prompts: Sequence[str], codes: torch.Tensor) -> torch.Tensor:
        """log p(codes | text-to-image prompt) [B] under the MLLM, summed over the answer's tokens
        (the image's codes and markers); an empty prompt gives the unconditional likelihood."""
        processor = self.processor
        return answer_log_likelihood(
            self.model,
            processor,
            [
                [*processor.t2i_messages(p), Message("assistant", [c])]
                for p, c in zip(prompts, codes, strict=True)
            ],
        )

    def answer(
        self,
        image: Image.Image | Sequence[Image.Image],
        question: str | Sequence[str],
        max_new_tokens: int = 16,
    ) -> str | list[str]:
        """Visual question answering (greedy); a list of images and questions gives a list of answers."""
        single = isinstance(question, str)
        images = [image] if single else list(image)
        questions = [question] if single else list(question)
        answers = generate_text(
            self.model,
            self.processor,
            [[Message("user", [im, q])] for im, q in zip(images, questions, strict=True)],
            max_new_tokens=max_new_tokens,
        )
        return answers[0] if single else answers

    def edit(
        self,
        image: Image.Image | Sequence[Image.Image],
        instruction: str | Sequence[str],
        seed: int | Sequence[int] | None = None,
        generator: torch.Generator | None = None,
    ) -> Image.Image | list[Image.Image]:
        """Image + instruction -> the edited image (CFG against the image without the instruction).
        `seed`: one for the call, or one per edit (each then drawn as it would be alone)."""
        single = isinstance(instruction, str)
        images = [image] if single else list(image)
        instructions = [instruction] if single else list(instruction)
        if isinstance(seed, Sequence):
            if len(seed) != len(instructions):
                raise ValueError(
                    f"{len(seed)} seeds for {len(instructions)} edits: give one per edit"
                )
            generator = self._row_generators(seed, 1)
        else:
            generator = self._generator(seed, generator)
        out = self.render(self.edit_codes(images, instructions, generator), generator)
        return out[0] if single else out

    def edit_codes(
        self,
        images: Sequence[Image.Image],
        instructions: Sequence[str],
        generator: torch.Generator | Sequence[torch.Generator],
    ) -> torch.Tensor:
        """The MLLM's half of `edit`: the edited images' codes [B, h, w], before the detokenizer."""
        conversations = [
            [Message("user", [t, im])] for im, t in zip(images, instructions, strict=True)
        ]
        unconditional = [[Message("user", [im])] for im in images]
        if self.processor.config.edit_source_codes:  # the model reads the source's codes too
            show = self.processor.with_source_codes
            codes = self.image_codes(images)  # once, for both prompts of each edit
            conversations = [[show(c[0], [x])] for c, x in zip(conversations, codes, strict=True)]
            unconditional = [[show(u[0], [x])] for u, x in zip(unconditional, codes, strict=True)]
        return self.draw_codes(conversations, unconditional, generator, edits=True)

    def _with_codes(self, message: Message) -> Message:
        """A drawing request's user turn with its input images' codes after them, the format a
        model trained with `edit_source_codes` reads."""
        images = [p for p in message.parts if isinstance(p, Image.Image)]
        return self.processor.with_source_codes(
            message, list(self.image_codes(images)) if images else []
        )

    def chat(
        self,
        messages: Sequence[Message],
        seed: int | None = None,
        max_new_tokens: int = 32,
        streamer=None,
    ) -> str | Image.Image:
        """Answers the last user turn of a conversation with images in its history: text, or an
        image when the model starts its answer with one. An earlier answer may hold the drawing as
        this method returned it (`drawings_as_codes`). `streamer`: a transformers streamer that
        receives a text answer's tokens as they come (a drawing comes whole)."""
        messages = self.drawings_as_codes(messages)
        if self.processor.config.edit_source_codes:  # earlier drawing requests, as trained
            messages = [
                self._with_codes(m)
                if m.role == "user" and i + 1 < len(messages) and _draws(messages[i + 1])
                else m
                for i, m in enumerate(messages)
            ]
        text_ids = self.processor.encode_conversation(
            messages, add_generation_prompt=True
        ).input_ids
        with torch.no_grad():
            pixels = self._pixels(messages)
            logits = self.model(
                input_ids=torch.tensor([text_ids], device=self.device),
                pixel_values=None if pixels is None else pixels.to(self.device, self.dtype),
            ).logits[0, -1]
        if int(logits.argmax()) == self.processor.vocab.start_of_image:
            if self.processor.config.edit_source_codes:  # this turn is a drawing request too
                messages[-1] = self._with_codes(messages[-1])
            generator = self._generator(seed, None)
            return self.render(self.chat_codes(messages, generator), generator)[0]
        extra = {"streamer": streamer} if streamer is not None else {}
        return generate_text(
            self.model, self.processor, [messages], max_new_tokens=max_new_tokens, **extra
        )[0]

    def chat_codes(self, messages: Sequence[Message], generator: torch.Generator) -> torch.Tensor:
        """The MLLM's half of a drawing `chat` answers with: codes [1, h, w] for a conversation
        whose last user turn asks for one (drawings in its history as codes, input images with
        theirs where the processor wants them), guided as `draw_codes` and `edit_codes` guide:
        against the same conversation without the last turn's words (a first request: the empty
        prompt; an image and an instruction: the image alone). With an image anywhere in the
        conversation (shown, or drawn in an earlier turn) it is an edit, at the edit sampling."""
        edits = any(_draws(m) or any(isinstance(p, Image.Image) for p in m.parts) for m in messages)
        last = messages[-1]
        shown = [p for p in last.parts if not isinstance(p, str)]
        unconditional = [*messages[:-1], Message(last.role, shown or "")]
        return self.draw_codes([list(messages)], [unconditional], generator, edits=edits)

    def drawings_as_codes(self, messages: Sequence[Message]) -> list[Message]:
        """The conversation with each image in an assistant turn (a drawing, as `chat` returned
        it) replaced by its codes: what the model wrote there was vision tokens, not pixels."""
        out = []
        for m in messages:
            images = [p for p in m.parts if isinstance(p, Image.Image)]
            if m.role == "assistant" and images:
                codes = iter(self.image_codes(images))
                m = Message(
                    m.role, [next(codes) if isinstance(p, Image.Image) else p for p in m.parts]
                )
            out.append(m)
        return out

    def _pixels(self, messages: Sequence[Message]):
        images = [p for m in messages for p in m.parts if isinstance(p, Image.Image)]
        return self.processor.pixel_values(images) if images else None


def _draws(message: Message) -> bool:
    """Whether an assistant turn answers with an image (a code grid)."""
    return any(isinstance(p, (torch.Tensor, np.ndarray)) for p in message.parts)
