"""The model card a saved pipeline carries (README.md with YAML metadata, as on the Hugging Face
Hub): what it is, how to load it, how it draws, and, when the demo made it, how it was trained and
what it scored, each figure with its sample size and interval."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import yaml

CARD_FILE = "README.md"


def pipeline_card(pipe, training: dict[str, Any] | None = None, figures: str | None = None) -> str:
    """The card of `pipe` (an IllumePipeline). `training`: how it was made (e.g. the chain's
    settings: {"chain", "file", "sha256", "stages": [{"name", "recipe", "steps" or "foundation"}],
    "data"}); `figures`: its evaluation as a plain-text table (illume.demo.headline_table)."""
    model, tokenizer = pipe.model, pipe.tokenizer
    text = model.config.text_config
    h, w = tokenizer.grid
    meta = {
        "library_name": "illume",
        "pipeline_tag": "any-to-any",
        "tags": [
            "illume",
            "multimodal",
            "text-to-image",
            "image-editing",
            "visual-question-answering",
            "vision-tokens",
        ],
    }
    if training and training.get("data"):
        meta["datasets"] = ["shapesworld"]
    lines = [
        "---",
        yaml.safe_dump(meta, sort_keys=False).strip(),
        "---",
        "",
        "# ILLUME pipeline",
        "",
        "A unified multimodal LLM that sees, draws and edits (ILLUME, arXiv 2412.06673): a semantic "
        "vision tokenizer, an MLLM that reads images and writes vision tokens, and a diffusion "
        "detokenizer, saved by `IllumePipeline.save_pretrained`.",
        "",
        "| part | what |",
        "|---|---|",
        f"| `tokenizer/` | {tokenizer.codebook_size} codes on a {h}x{w} grid per image |",
        f"| `mllm/` | {getattr(text, 'model_type', 'llm')}, {text.num_hidden_layers} layers of "
        f"{text.hidden_size}, vocabulary {text.vocab_size} (text and vision tokens) |",
        f"| `detokenizer/` | U-Net, {pipe.detokenizer.image_size} px images |",
        "",
        "## Use",
        "",
        "```python",
        "from illume.pipeline import IllumePipeline",
        "",
        'pipe = IllumePipeline.from_pretrained("THIS_DIR")',
        'images = pipe.generate_image("a red circle above a blue square", seed=0)',
        'answer = pipe.answer(images[0], "How many circles are there?")',
        'edited = pipe.edit(images[0], "change the red circle to green", seed=0)',
        "```",
        "",
        "or `illume generate / answer / edit / chat --model THIS_DIR ...`, or "
        "`illume serve --model THIS_DIR` (an OpenAI-compatible API and a web page).",
        "",
        "## Sampling (`generation_config.json`)",
        "",
        "| setting | value |",
        "|---|---|",
        *[f"| {k} | {v} |" for k, v in dataclasses.asdict(pipe.sampling).items()],
    ]
    if training:
        lines += ["", "## How it was trained", ""]
        if training.get("chain"):
            lines.append(
                f"`illume demo --chain {training['chain']}` (file `{Path(training.get('file') or '?').name}`, "
                f"SHA-256 `{str(training.get('sha256', '?'))[:16]}...`)."
            )
        if training.get("data"):
            data = training["data"]
            lines.append(
                f"Data: ShapesWorld, {data.get('scenes')} training scenes, seed {data.get('seed', 0)}, "
                f"{data.get('image_size')} px."
            )
        stages = training.get("stages") or []
        if stages:
            lines += ["", "| stage | recipe | steps |", "|---|---|---|"]
            for s in stages:
                steps = (
                    f"copied: {s['foundation']} (pretrained)"
                    if s.get("foundation")
                    else s.get("steps", "recipe's")
                )
                lines.append(f"| {s['name']} | `{s.get('recipe', '')}` | {steps} |")
    if figures:
        lines += [
            "",
            "## Figures",
            "",
            "Measured on what the model never trained on (ShapesWorld splits by meaning), with the "
            "sample size and 95% interval of each; for drawing, the lookup baseline and the codec "
            "ceiling on the same prompts.",
            "",
            "```",
            figures,
            "```",
        ]
    return "\n".join(lines) + "\n"
