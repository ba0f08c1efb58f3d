"""A 2-process DDP run (gloo, CPU) of an MLLM stage trains exactly like one process with the same
global batch: each process reads its shard and the loss is normalised by the global token count."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from illume_eval.shapes import write_dataset
from illume_tokenizer import (
    SemanticTokenizer,
    TokenizerConfig,
    VisionEncoder,
    build_siglip,
    siglip_image_processor,
)

ROOT = Path(__file__).resolve().parents[1]


def _stage(work: Path, name: str, devices: int, batch: int) -> Path:
    out = work / name / "final"
    args = [
        sys.executable,
        "-m",
        "illume_trainer.cli",
        "mllm",
        "--config",
        "recipes/shapes/mllm_stage1.yaml",
        "--model.llm",
        "tiny",
        "--model.tokenizer",
        str(work / "tok"),
        "--model.output_dir",
        str(out),
        "--model.p_uncond",
        "0",
        "--data.train",
        f"[{work}/data/train/i2t.json]",
        "--data.weights",
        "null",
        "--data.val",
        "null",
        "--model.tokenizer_corpus",
        f"[{work}/data/train/qa.json, {work}/data/train/assessments.json]",
        "--data.batch_size",
        str(batch),
        "--trainer.max_steps",
        "3",
        "--trainer.devices",
        str(devices),
        "--trainer.strategy",
        "ddp" if devices > 1 else "auto",
        "--trainer.enable_progress_bar",
        "false",
        "--trainer.logger",
        "false",
        "--trainer.num_sanity_val_steps",
        "0",
        # float32: bf16 products of a batch of 8 and of two of 4 round differently
        "--trainer.precision",
        "32-true",
        "--trainer.default_root_dir",
        str(work / name),
    ]
    done = subprocess.run(
        args,
        cwd=work / name,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return out


@pytest.mark.slow  # two processes training: ~13 s
def test_two_process_ddp_matches_one_process_with_the_same_global_batch(tmp_path):
    write_dataset(tmp_path / "data", 40, seed=0, n_eval=8, progress=False)
    torch.manual_seed(0)
    build_siglip("tiny", vocab_size=40).save_pretrained(tmp_path / "enc")
    siglip_image_processor(32).save_pretrained(tmp_path / "enc")
    SemanticTokenizer(
        TokenizerConfig.from_name("tiny"), VisionEncoder.from_pretrained(tmp_path / "enc")
    ).save_pretrained(tmp_path / "tok")
    for name in ("one", "two"):
        (tmp_path / name).mkdir()
    one = load_file(_stage(tmp_path, "one", devices=1, batch=8) / "model.safetensors")
    two = load_file(_stage(tmp_path, "two", devices=2, batch=4) / "model.safetensors")
    assert one.keys() == two.keys()
    for key in one:
        torch.testing.assert_close(one[key], two[key], atol=2e-5, rtol=1e-4, msg=key)
