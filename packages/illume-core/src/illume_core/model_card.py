"""Model cards: the README.md with YAML metadata that every saved illume component carries (as on
the Hugging Face Hub): what it is, how to load it, and, when a training stage made it, how it was
trained (recipe, steps, data) and what it scored.

    text = model_card("ILLUME vision tokenizer", "A semantic vision tokenizer ...",
                      load="SemanticTokenizer.from_pretrained(DIR)", tags=["illume"],
                      facts={"codebook": 1024, "grid": "8x8"})
    write_model_card(directory, text)
    add_training(directory, {"stage": "tokenizer", "recipe": "recipes/shapes/tokenizer.yaml",
                             "steps": 1000, "data": ["data/shapes/train/captions.jsonl"],
                             "metrics": {"val/loss": 0.12}})
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from .checkpoint import atomic_write_bytes
from .files import read_text

CARD_FILE = "README.md"
TRAINING_HEADING = "## How it was trained"


def _yaml_scalar(value: Any) -> str:
    import json

    return json.dumps(value)  # a JSON scalar or list is valid YAML flow syntax


def model_card(
    title: str,
    summary: str,
    load: str,
    tags: Sequence[str] = (),
    pipeline_tag: str | None = None,
    library: str = "illume",
    facts: Mapping[str, Any] | None = None,
    training: Mapping[str, Any] | None = None,
) -> str:
    """The card's text. `load`: Python that loads the component (THIS_DIR stands for its folder);
    `facts`: a table of what it is (sizes, grids); `training`: see `training_lines`."""
    meta = [f"library_name: {library}"]
    if pipeline_tag:
        meta.append(f"pipeline_tag: {pipeline_tag}")
    meta.append(f"tags: {_yaml_scalar(['illume', *tags])}")
    lines = ["---", *meta, "---", "", f"# {title}", "", summary, ""]
    if facts:
        lines += ["| | |", "|---|---|", *[f"| {k} | {v} |" for k, v in facts.items()], ""]
    lines += ["## Use", "", "```python", load, "```"]
    if training:
        lines += ["", *training_lines(training)]
    return "\n".join(lines) + "\n"


def training_lines(training: Mapping[str, Any]) -> list[str]:
    """The "How it was trained" section: {"stage", "recipe", "steps", "data": [files],
    "metrics": {name: value}} (every key optional)."""
    lines = [TRAINING_HEADING, ""]
    what = []
    if training.get("stage"):
        what.append(f"illume-train stage `{training['stage']}`")
    if training.get("recipe"):
        what.append(f"recipe `{training['recipe']}`")
    if training.get("steps") is not None:
        what.append(f"{training['steps']} optimizer steps")
    if what:
        lines.append(", ".join(what) + ".")
    data = list(training.get("data") or [])
    if data:
        lines += ["", "Data:", "", *[f"- `{d}`" for d in data]]
    metrics = dict(training.get("metrics") or {})
    if metrics:
        lines += ["", "| last logged | value |", "|---|---|"]
        lines += [
            f"| {k} | {v:.4g} |" if isinstance(v, float) else f"| {k} | {v} |"
            for k, v in metrics.items()
        ]
    return lines


def write_model_card(directory: str | os.PathLike, text: str) -> Path:
    """Writes `text` as the folder's README.md (atomically)."""
    return atomic_write_bytes(Path(directory) / CARD_FILE, text.encode("utf-8"))


def add_training(directory: str | os.PathLike, training: Mapping[str, Any]) -> Path:
    """Puts the "How it was trained" section into the folder's card, replacing one already there
    (a card is written by `save_pretrained`; the training stage that called it knows the rest)."""
    path = Path(directory) / CARD_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{directory} has no {CARD_FILE} to add how it was trained to")
    text = read_text(path)
    if TRAINING_HEADING in text:
        head, _, rest = text.partition(TRAINING_HEADING)
        after = rest.find("\n## ")
        text = head.rstrip("\n") + "\n" + (rest[after:] if after >= 0 else "")
    text = text.rstrip("\n") + "\n\n" + "\n".join(training_lines(training)) + "\n"
    return write_model_card(directory, text)
