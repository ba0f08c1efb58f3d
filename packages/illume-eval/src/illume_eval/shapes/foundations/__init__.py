"""ShapesWorld's pretrained foundations: the stand-ins for what the paper starts from.

ILLUME does not train its vision encoder (SigLIP) or its language model (Vicuna); it starts from
them. ShapesWorld's stand-ins ship here as small Hugging Face directories, so that the default
demo trains only what ILLUME itself trains:

- `encoder/`: the `shapes-cells` SigLIP encoder (36 px images, one token per cell of the 3x3
  grid), a `SiglipModel` with its word-level text tokenizer and image processor, about 5 MB;
  recipe `recipes/shapes/encoder.yaml`.
- `language_model/`: the `shapes` Llama (4 layers of 256) pretrained on ShapesWorld text alone
  (illume_eval.shapes.language: the conversations with every image written as its layout in
  words), with its byte-level BPE tokenizer, bf16, about 7.5 MB; recipe
  `recipes/shapes/language_model.yaml`.

Both were made by `tools/train_foundations.py` from ShapesWorld data of seed 1 (the demo's is
seed 0; figures in benchmarks/RESULTS.md); `illume demo --chain scratch` trains them from
nothing instead.

    from illume_eval.shapes.foundations import foundation
    encoder_dir = foundation("encoder")       # a directory SemanticTokenizer / MLLM stages load
    llm_dir = foundation("language_model")    # an LLM directory MLLM stage 1 loads (model.llm)
"""

from __future__ import annotations

from pathlib import Path

#: Where the shipped foundations live (inside the installed package).
FOUNDATIONS_DIR = Path(__file__).parent

#: Name -> what it stands in for.
FOUNDATIONS = {
    "encoder": "SigLIP (the paper's pretrained vision encoder)",
    "language_model": "Vicuna (the paper's pretrained language model)",
}


def foundation(name: str) -> Path:
    """The directory of a shipped foundation, checked to be complete."""
    if name not in FOUNDATIONS:
        raise ValueError(
            f"no ShapesWorld foundation {name!r}; foundations: {', '.join(FOUNDATIONS)}"
        )
    path = FOUNDATIONS_DIR / name
    if not (path / "config.json").is_file() or not (path / "model.safetensors").is_file():
        raise FileNotFoundError(
            f"{path} is missing or incomplete; reinstall illume-eval, or remake it with "
            "tools/train_foundations.py"
        )
    return path
