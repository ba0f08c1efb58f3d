"""The MLLM's added vocabulary (DESIGN.md section 4).

    <image>            understanding placeholder, expanded to N slots that receive adapter outputs
    <start_of_image>   opens a generated image
    <end_of_line>      closes each row of vision tokens (lets any aspect ratio be generated)
    <end_of_image>     closes a generated image
    <image_0> .. <image_{K-1}>   one token per codebook entry

The vision tokens are added last, in code order, so code k is token id `offset + k`.
"""

from __future__ import annotations

from dataclasses import dataclass

IMAGE = "<image>"
START_OF_IMAGE = "<start_of_image>"
END_OF_IMAGE = "<end_of_image>"
END_OF_LINE = "<end_of_line>"
MARKERS = (IMAGE, START_OF_IMAGE, END_OF_IMAGE, END_OF_LINE)


def vision_token(code: int) -> str:
    return f"<image_{code}>"


@dataclass(frozen=True)
class VisionVocab:
    """Ids of the added tokens in a text tokenizer's vocabulary."""

    image: int
    start_of_image: int
    end_of_image: int
    end_of_line: int
    offset: int
    """Id of <image_0>; code k is `offset + k`."""
    codebook_size: int

    @property
    def vision_ids(self) -> range:
        return range(self.offset, self.offset + self.codebook_size)


def extend_tokenizer(tokenizer, codebook_size: int) -> VisionVocab:
    """Adds the markers and K vision tokens to a transformers tokenizer (no-op where present)."""
    tokenizer.add_special_tokens({"additional_special_tokens": list(MARKERS)})
    tokenizer.add_tokens([vision_token(k) for k in range(codebook_size)], special_tokens=True)
    return vocab_of(tokenizer, codebook_size)


def vocab_of(tokenizer, codebook_size: int) -> VisionVocab:
    """The added tokens' ids, checking that the vision tokens are contiguous and in code order."""
    ids = tokenizer.convert_tokens_to_ids(
        [*MARKERS, vision_token(0), vision_token(codebook_size - 1)]
    )
    if tokenizer.unk_token_id is not None and tokenizer.unk_token_id in ids:
        raise ValueError(
            "the tokenizer lacks ILLUME's image tokens; call extend_tokenizer(tokenizer, codebook_size)"
        )
    image, soi, eoi, eol, first, last = ids
    if last - first != codebook_size - 1:
        raise ValueError(
            f"vision tokens are not contiguous: <image_0> is {first}, <image_{codebook_size - 1}> is {last}"
        )
    return VisionVocab(image, soi, eoi, eol, first, codebook_size)
