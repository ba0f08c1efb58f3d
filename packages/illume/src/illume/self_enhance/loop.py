"""Self-enhancing multimodal alignment (ILLUME section 3.3, Fig. 5, Fig. C), the whole loop.

    illume self-enhance --config recipes/shapes/self_enhance.yaml [--key value ...]

1. corpus self-generation: the stage-3 model draws an image for `num_prompts` prompts (corpus.py);
2. assessment generation: an assessor judges each image as the paper's JSON (assessors.py);
3. SFT data in Fig. C's format (`sft_conversations`): turn 1, the assessment of the drawn image;
   turn 2, only for images with a 0 score, "Based on the above analysis, carefully generate an
   image according to the text description: ..." answered by the ground-truth image;
4. SFT: the stage-3 recipe, initialised from the stage-3 model, on its own data mixed with the
   assessment conversations (`sft_ratio` of the mixture), for `sft_steps` steps.

Every step resumes: finished images and judgements are kept, the SFT run resumes from its last
checkpoint, and a finished output directory is not trained again.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from illume_core import atomic_write_bytes, atomic_write_json, read_bounded, read_text

from .assessors import (
    ModelAssessor,
    OpenAICompatibleAssessor,
    OracleAssessor,
    assess_corpus,
    instruction,
)
from .corpus import draw_corpus, prompts_from_captions

#: The largest ground-truth image copied into the SFT data.
MAX_TRUTH_BYTES = 64 * 1024 * 1024
FOLLOW_UP = "Based on the above analysis, carefully generate an image according to the text description: {prompt}"
ASSESSORS = ("oracle", "model", "openai-compatible")


def sft_conversations(
    items, judgements, corpus_dir: str | os.PathLike, out_dir: str | os.PathLike
) -> list[dict]:
    """LLaVA-style conversations of Fig. C from the accepted judgements (rejected ones are left
    out), for a file in `out_dir`. Image paths are relative to `out_dir`, as a conversation file's
    must be (they stay inside its folder): the drawings are in the corpus, under it, and each
    ground truth a second turn needs is copied into `out_dir/truth/` (a few KB each)."""
    out_dir = Path(out_dir).resolve()
    corpus_dir = Path(corpus_dir).resolve()
    out = []
    for item, judgement in zip(items, judgements, strict=True):
        if not judgement.accepted:
            continue
        turns = [
            {"from": "human", "value": "<image>\n" + instruction(item.prompt)},
            {"from": "gpt", "value": json.dumps(judgement.assessment, ensure_ascii=False)},
        ]
        images = [os.path.relpath(corpus_dir / item.image, out_dir)]
        if any(aspect["Score"] == 0 for aspect in judgement.assessment.values()):
            turns += [
                {"from": "human", "value": FOLLOW_UP.format(prompt=item.prompt)},
                {"from": "gpt", "value": "<image>"},
            ]
            truth = Path("truth") / f"{item.id}{Path(item.truth).suffix}"
            if not (out_dir / truth).is_file():
                atomic_write_bytes(out_dir / truth, read_bounded(item.truth, MAX_TRUTH_BYTES))
            images.append(str(truth))
        out.append({"id": f"self-enhance-{item.id}", "images": images, "conversations": turns})
    return out


def make_assessor(name: str, args: dict | None, pipe):
    args = dict(args or {})
    if name == "oracle":
        return OracleAssessor()
    if name == "model":
        return ModelAssessor(pipe.model, pipe.processor, **args)
    if name == "openai-compatible":
        if "base_url" not in args or "model" not in args:
            raise ValueError(
                "the openai-compatible assessor needs assessor_args with base_url and model"
            )
        return OpenAICompatibleAssessor(**args)
    raise ValueError(f"assessor must be one of {ASSESSORS}, got {name!r}")


def mixture_weight(
    sources: list[str],
    weights: list[float],
    extra_size: int,
    ratio: float,
    packing: list[bool] | None = None,
    max_pack: int = 16,
) -> float:
    """The weight of a source of `extra_size` conversations that makes it `ratio` of the mixture's
    items (a source packed by image counts its packs, as the data module does)."""
    from illume_trainer.conversations import pack_by_image, read_conversations

    if not 0 < ratio < 1:
        raise ValueError(f"sft_ratio must lie in (0, 1), got {ratio}")
    packing = packing or [False] * len(sources)
    rest = sum(
        w * len(pack_by_image(read_conversations(s), max_pack) if pack else read_conversations(s))
        for s, w, pack in zip(sources, weights, packing, strict=True)
    )
    return ratio / (1 - ratio) * rest / max(extra_size, 1)


def self_enhance(
    tokenizer: str,
    mllm: str,
    detokenizer: str,
    prompts: str,
    out: str,
    num_prompts: int = 1000,
    assessor: str = "oracle",
    assessor_args: dict | None = None,
    guidance: float = 3.0,
    temperature: float = 1.0,
    top_k: int | None = None,
    steps: int = 20,
    batch_size: int = 16,
    sft_recipe: str = "recipes/shapes/mllm_stage3.yaml",
    sft_ratio: float = 0.25,
    sft_steps: int = 300,
    sft_args: list[str] | None = None,
    seed: int = 0,
    progress: bool = True,
) -> dict:
    """Runs the loop of the module docstring; returns counts and paths (also in `out/summary.json`).

    Args:
        tokenizer: the trained vision tokenizer's directory.
        mllm: the trained MLLM's directory (stage 3's output).
        detokenizer: the trained detokenizer's directory.
        prompts: a captions JSONL manifest (text = prompt, image = its ground truth; a `spec` per
            line enables the oracle assessor).
        out: where the corpus, the judgements, the SFT data and the SFT run go.
        num_prompts: a seeded subset of the manifest to draw.
        assessor: who judges the drawings: "oracle" (ShapesWorld's exact scorer), "model" (the
            MLLM itself) or "openai-compatible" (a served model).
        assessor_args: the assessor's settings: "model": batch_size, retries, ...;
            "openai-compatible": base_url, model, api_key, timeout, retries, concurrency.
        guidance: CFG scale of the vision tokens the corpus is drawn with.
        temperature: sampling temperature of those vision tokens.
        top_k: draw among the k likeliest codes (null: all).
        steps: detokenizer denoising steps.
        batch_size: prompts drawn together.
        sft_recipe: the stage-3 recipe whose data and settings the SFT continues.
        sft_ratio: share of the SFT mixture that is assessment conversations.
        sft_steps: optimizer steps of the SFT.
        sft_args: further LightningCLI overrides for the SFT run.
        seed: seeds the prompt subset, the drawings and the SFT mixture.
        progress: show progress bars.
    """

    out_dir = Path(out)
    final = out_dir / "final"
    from ..pipeline import IllumePipeline, SamplingConfig

    sampling = SamplingConfig(guidance=guidance, temperature=temperature, top_k=top_k, steps=steps)
    pipe = IllumePipeline.from_stages(tokenizer, mllm, detokenizer, sampling=sampling)
    chosen = prompts_from_captions(prompts, num_prompts, seed)
    items = draw_corpus(
        pipe, chosen, out_dir / "corpus", batch_size=batch_size, seed=seed, progress=progress
    )
    judge = make_assessor(assessor, assessor_args, pipe)
    judgements = assess_corpus(judge, items, out_dir / "corpus", progress=progress)
    conversations = sft_conversations(items, judgements, out_dir / "corpus", out_dir)
    sft_data = out_dir / "sft.json"
    atomic_write_json(sft_data, conversations)
    accepted = [j for j in judgements if j.accepted]
    summary = {
        "items": len(items),
        "accepted": len(accepted),
        "rejected": len(judgements) - len(accepted),
        "passed": sum(all(a["Score"] == 1 for a in j.assessment.values()) for j in accepted),
        "second_turns": sum(len(c["conversations"]) == 4 for c in conversations),
        "sft_data": str(sft_data),
        "output_dir": str(final),
    }
    continue_training(
        mllm,
        tokenizer,
        sft_recipe,
        out_dir,
        sft_steps,
        seed,
        sft_data,
        sft_ratio,
        sft_args,
        progress,
    )
    atomic_write_json(out_dir / "summary.json", summary)
    return summary


def continue_training(
    mllm: str,
    tokenizer: str,
    recipe: str,
    out_dir: str | os.PathLike,
    steps: int,
    seed: int = 0,
    extra: str | os.PathLike | None = None,
    ratio: float = 0.25,
    args: list[str] | None = None,
    progress: bool = True,
) -> Path:
    """`recipe` (an MLLM stage) continued from `mllm` for `steps` steps into `out_dir/final`, its
    data mixed with the conversations of `extra` as `ratio` of the mixture (no `extra`: the
    control of the self-enhancement ablation, the same training without assessment data).
    Resumes from `out_dir/sft/checkpoints/last.ckpt`; a finished output is kept as it is."""
    import yaml

    from illume_trainer.cli import resolve_recipe, run_stage
    from illume_trainer.conversations import read_conversations

    out_dir = Path(out_dir)
    final = out_dir / "final"
    if (final / "config.json").is_file():
        return final
    data = yaml.safe_load(read_text(resolve_recipe(recipe)))["data"]
    sources, weights = list(data["train"]), list(data.get("weights") or [1.0] * len(data["train"]))
    packing = list(data.get("pack_by_image") or [False] * len(sources))
    if extra is not None:
        size = len(read_conversations(extra))
        weights.append(
            mixture_weight(sources, weights, size, ratio, packing, data.get("max_pack", 16))
        )
        sources.append(str(extra))
        packing.append(False)
    # one override over the recipe, merged by jsonargparse as a second config
    override = {
        "seed_everything": seed,
        "trainer": {
            "default_root_dir": str(out_dir / "sft"),
            "max_steps": steps,
            "enable_progress_bar": progress,
            "callbacks": [
                {"class_path": "illume_trainer.checkpointing.ResumeState"},
                {
                    "class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
                    "init_args": {
                        "dirpath": str(out_dir / "sft" / "checkpoints"),
                        "save_last": True,
                        "save_top_k": 0,
                        "every_n_train_steps": 100,
                    },
                },
            ],
        },
        "model": {"init": mllm, "tokenizer": tokenizer, "output_dir": str(final), "seed": seed},
        "data": {"train": sources, "weights": weights, "pack_by_image": packing, "seed": seed},
    }
    last = out_dir / "sft" / "checkpoints" / "last.ckpt"
    resume = ["--ckpt_path", str(last)] if last.is_file() else []
    run_stage(
        "mllm", ["--config", recipe, "--config", json.dumps(override), *resume, *(args or [])]
    )
    return final


def main(argv: list[str]) -> int:
    """`illume self-enhance --config RECIPE [--key value ...]`: a `--config` that is not a file is
    looked up among illume-trainer's shipped recipes."""
    from jsonargparse import CLI

    from illume_trainer.cli import resolve_recipe

    argv = list(argv)
    for i, arg in enumerate(argv):
        if arg == "--config" and i + 1 < len(argv):
            argv[i + 1] = resolve_recipe(argv[i + 1])
    summary = CLI(self_enhance, args=argv, as_positional=False, prog="illume self-enhance")
    print(json.dumps(summary))
    return 0
