"""MLLM training speed: float32 against bf16 mixed precision, on this machine.

What `illume-train` chooses for the MLLM stages when a recipe names no precision
(`illume_trainer.precision.fast_precision`) rests on these figures:

- the rate of one matrix product of a ShapesWorld MLLM's size ([3400, 256] x [256, 1024], a batch
  of 32 conversations through a 256-wide layer) in float32 and in bf16;
- one training step (forward, backward, AdamW) of a ShapesWorld-scale MLLM (the `shapes` presets,
  random weights: speed does not depend on them) on a stage-2-like batch of 32 conversations,
  two thirds text-to-image (a prompt and a 64-code image) and a third captioning (an image in, a
  caption out), in float32 and under a bf16 autocast (Lightning's `bf16-mixed`: float32 weights
  and optimizer), with transformers' sdpa attention (its default), and in bf16 with eager
  attention too (what the shapes recipes of stages 1-2 set: `attn_implementation: eager`).

Prints a table, then one JSON object on its last line with keys matmul_gflops_fp32,
matmul_gflops_bf16, step_seconds_fp32, step_seconds_bf16, step_seconds_bf16_eager, step_speedup,
eager_speedup and chosen_precision.

Run: .venv/bin/python benchmarks/training_speed.py [--repeats 5] [--threads N]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import platform
import random
import tempfile
from pathlib import Path

import torch
from generation_speed import PROMPTS, best_seconds, shapes_pipeline  # same directory
from PIL import Image


def matmul_gflops(dtype: torch.dtype, repeats: int) -> float:
    a, b = torch.randn(3400, 256, dtype=dtype), torch.randn(256, 1024, dtype=dtype)
    seconds = best_seconds(lambda: [a @ b for _ in range(20)], repeats) / 20
    return 2 * 3400 * 256 * 1024 / seconds / 1e9


def stage2_batch(processor, grid: tuple[int, int], codebook_size: int, batch: int = 32) -> dict:
    """A stage-2-like batch: 2/3 text-to-image, 1/3 captioning, as the ShapesWorld recipe mixes."""
    from illume_core import Message

    rng = random.Random(0)
    examples = []
    for i in range(batch):
        if i % 3 == 2:
            image = Image.new("RGB", (32, 32), tuple(rng.randrange(256) for _ in range(3)))
            messages = [
                Message("user", [image, "What does the image show?"]),
                Message("assistant", rng.choice(PROMPTS)),
            ]
        else:
            codes = torch.randint(0, codebook_size, grid)
            messages = [
                Message("user", f"Please create an image showing {rng.choice(PROMPTS)}."),
                Message("assistant", [codes]),
            ]
        examples.append(processor.encode_conversation(messages))
    return processor.collate(examples)


def train_step_seconds(model, inputs: dict, bf16: bool, repeats: int) -> float:
    from illume_mllm import IGNORE

    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-5)
    inputs = {k: v for k, v in inputs.items() if v is not None}
    labels = inputs.pop("labels")[:, 1:]

    def step():
        autocast = torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()
        with autocast:
            logits = model(**inputs, use_cache=False).logits[:, :-1]
        loss = torch.nn.functional.cross_entropy(
            logits.flatten(0, 1).float(), labels.flatten(), ignore_index=IGNORE
        )
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return best_seconds(step, repeats)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    from illume_trainer.precision import cpu_has_bf16_units, fast_precision

    with tempfile.TemporaryDirectory() as root:
        tokenizer, model, processor, _ = shapes_pipeline(Path(root))
    model.train()
    model.vision_tower.requires_grad_(False)  # stage 2: adapter and LLM train
    inputs = stage2_batch(processor, tokenizer.grid, tokenizer.codebook_size)
    out = {
        "matmul_gflops_fp32": matmul_gflops(torch.float32, args.repeats),
        "matmul_gflops_bf16": matmul_gflops(torch.bfloat16, args.repeats),
        "step_seconds_fp32": train_step_seconds(model, inputs, False, args.repeats),
        "step_seconds_bf16": train_step_seconds(model, inputs, True, args.repeats),
    }
    model.set_attn_implementation("eager")
    out["step_seconds_bf16_eager"] = train_step_seconds(model, inputs, True, args.repeats)
    out["step_speedup"] = out["step_seconds_fp32"] / out["step_seconds_bf16"]
    out["eager_speedup"] = out["step_seconds_bf16"] / out["step_seconds_bf16_eager"]
    out["chosen_precision"] = fast_precision("cpu")
    out["cpu_has_bf16_units"] = cpu_has_bf16_units()
    out["tokens_per_batch"] = int(inputs["attention_mask"].sum())
    out["machine"] = (
        f"{platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}"
    )
    print(f"machine: {out['machine']}; native bf16 units: {out['cpu_has_bf16_units']}")
    print(f"{'':28} {'float32':>10} {'bf16':>10}")
    print(
        f"{'matmul GFLOP/s':28} {out['matmul_gflops_fp32']:>10.1f} {out['matmul_gflops_bf16']:>10.1f}"
    )
    print(
        f"{'training step (s, 32 conv.)':28} {out['step_seconds_fp32']:>10.3f} {out['step_seconds_bf16']:>10.3f}"
    )
    print(f"{'  bf16, eager attention':28} {'':>10} {out['step_seconds_bf16_eager']:>10.3f}")
    print(
        f"step speed-up {out['step_speedup']:.2f}x; illume-train's MLLM default here: {out['chosen_precision']}"
    )
    print(f"eager attention against sdpa, bf16: {out['eager_speedup']:.2f}x")
    print(json.dumps(out))


if __name__ == "__main__":
    main()
