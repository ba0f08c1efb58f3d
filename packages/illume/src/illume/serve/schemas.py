"""Request and response bodies of the OpenAI-compatible API (`illume serve`).

OpenAI's shapes (https://platform.openai.com/docs/api-reference/images and /chat), validated
strictly: an unknown field or a wrong type is a 400 naming it, never ignored. ILLUME's own
sampling settings are extensions beside OpenAI's fields (`seed`, `guidance_scale`,
`temperature`, `top_k`, `top_p`).
"""

from __future__ import annotations

from typing import Annotated, Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field

MAX_PROMPT_CHARS = 2000
MAX_IMAGES_PER_REQUEST = 8


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Sampling(_Strict):
    """ILLUME's sampling settings a request may change (the pipeline's generation_config.json otherwise)."""

    seed: Annotated[int, Field(ge=0, lt=2**63)] | None = None
    guidance_scale: Annotated[float, Field(ge=0.0, le=50.0)] | None = None
    temperature: Annotated[float, Field(ge=0.0, le=10.0)] | None = None
    top_k: Annotated[int, Field(ge=1)] | None = None
    top_p: Annotated[float, Field(gt=0.0, le=1.0)] | None = None

    # request field -> SamplingConfig field
    sampling_fields: ClassVar[dict[str, str]] = {
        "guidance_scale": "guidance", "temperature": "temperature", "top_k": "top_k", "top_p": "top_p",
    }  # fmt: skip

    def overrides(self) -> dict[str, Any]:
        """SamplingConfig fields this request sets."""
        names = self.sampling_fields
        return {names[k]: v for k, v in self.model_dump(exclude_none=True).items() if k in names}


class _ImageRequest(Sampling):
    """The fields both image endpoints take."""

    prompt: Annotated[str, Field(min_length=1, max_length=MAX_PROMPT_CHARS)]
    model: str | None = None
    n: Annotated[int, Field(ge=1, le=MAX_IMAGES_PER_REQUEST)] = 1
    size: str | None = None
    response_format: Literal["b64_json"] | None = None
    """Only b64_json: the server keeps no files to link to."""
    user: str | None = None


class ImageGenerationRequest(_ImageRequest):
    """POST /v1/images/generations."""

    quality: str | None = None
    style: str | None = None


class ImageEditRequest(_ImageRequest):
    """POST /v1/images/edits (multipart: the image is a file part, these are the form fields).
    Its guidance and temperature are the edit's (SamplingConfig.edit_guidance, edit_temperature),
    which an edit draws at."""

    sampling_fields: ClassVar[dict[str, str]] = {
        **Sampling.sampling_fields, "guidance_scale": "edit_guidance", "temperature": "edit_temperature",
    }  # fmt: skip


class ImageData(BaseModel):
    b64_json: str
    revised_prompt: str | None = None
    seed: int | None = None
    """Extension: the seed this image was drawn with (send it back to draw it again)."""


class ImagesResponse(BaseModel):
    created: int
    data: list[ImageData]


class TextPart(_Strict):
    type: Literal["text"]
    text: Annotated[str, Field(max_length=MAX_PROMPT_CHARS)]


class ImageURL(_Strict):
    url: str
    detail: Literal["auto", "low", "high"] | None = None


class ImagePart(_Strict):
    type: Literal["image_url"]
    image_url: ImageURL


class ChatMessage(_Strict):
    role: Literal["system", "user", "assistant"]
    content: str | list[Annotated[TextPart | ImagePart, Field(discriminator="type")]]
    name: str | None = None


class ChatCompletionRequest(Sampling):
    """POST /v1/chat/completions. An assistant message's image (a drawing of an earlier turn)
    comes back as an image_url part, as the server returned it."""

    model: str | None = None
    messages: Annotated[list[ChatMessage], Field(min_length=1, max_length=64)]
    stream: bool = False
    max_tokens: Annotated[int, Field(ge=1, le=512)] | None = None
    max_completion_tokens: Annotated[int, Field(ge=1, le=512)] | None = None
    n: Literal[1] = 1
    user: str | None = None
