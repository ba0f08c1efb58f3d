"""The shipped ShapesWorld foundations load as real weights do and know what each cell holds."""

import numpy as np
import torch

from illume_eval.shapes import sample_prompt
from illume_eval.shapes.foundations import FOUNDATIONS_DIR, foundation
from illume_eval.shapes.world import CELLS, render_pil
from illume_tokenizer import VisionEncoder

#: The shipped language model wrote 0.517 of these 60 layouts right (benchmarks/RESULTS.md): counts
#: always, positions and colour binding about a quarter of the time; a model that knew nothing
#: of ShapesWorld would write none.
LAYOUT_ACCURACY_FLOOR = 0.40


def _cells(encoder, scenes):
    with torch.no_grad():
        tokens = encoder(encoder.preprocess([render_pil(s, 36) for s in scenes]))  # [B, 9, D]
    labels = [[(o.shape, o.color) if (o := s.at(cell)) else None for cell in CELLS] for s in scenes]
    return tokens.flatten(0, 1), [label for row in labels for label in row]


def test_the_shipped_encoder_is_small_and_its_tokens_name_their_cells():
    size = sum(p.stat().st_size for p in FOUNDATIONS_DIR.rglob("*") if p.is_file())
    assert size < 20 * 2**20  # the bound on shipped weights
    encoder = VisionEncoder.from_pretrained(foundation("encoder"), feature_layer=-2).eval()
    assert encoder.grid == (3, 3) and encoder.image_size == 36
    rng = np.random.default_rng(0)
    train = [sample_prompt(rng, "train")[0] for _ in range(200)]
    held = [sample_prompt(rng, "validation")[0] for _ in range(100)]
    # nearest class mean of the training cells' tokens, on validation scenes' cells
    tokens, labels = _cells(encoder, train)
    classes = sorted(set(labels), key=str)
    means = torch.stack(
        [tokens[[i for i, x in enumerate(labels) if x == c]].mean(0) for c in classes]
    )
    tokens, labels = _cells(encoder, held)
    nearest = torch.cdist(tokens, means).argmin(-1)
    accuracy = np.mean([classes[int(k)] == x for k, x in zip(nearest, labels, strict=True)])
    assert accuracy >= 0.99, accuracy


def test_the_shipped_language_model_loads_as_an_llm_does_and_writes_unseen_prompts_layouts(
    tmp_path,
):
    """The stand-in for Vicuna: a Llama and its tokenizer loaded by path, bf16 on disk; asked in
    the MLLM's phrasing to draw validation's unseen prompts (never in its text), it writes layouts
    that the exact scorer accepts far above chance."""
    from transformers import AutoModelForCausalLM

    from illume_eval.shapes import write_dataset
    from illume_eval.shapes.language import layout_quality

    directory = foundation("language_model")
    assert AutoModelForCausalLM.from_pretrained(directory, dtype="auto").dtype == torch.bfloat16
    write_dataset(tmp_path, 20, seed=0, n_eval=200, progress=False)
    written = layout_quality(directory, tmp_path / "validation", n=60)
    assert written["n"] == 60
    assert written["accuracy"] >= LAYOUT_ACCURACY_FLOOR, written["by_tag"]
