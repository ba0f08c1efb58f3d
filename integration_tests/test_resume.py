"""Exact resume: a run SIGKILLed mid-epoch and resumed from `last` ends where the uninterrupted run
ends (weights, optimizer state, and the next batch), bit for bit."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from illume_eval.shapes import write_dataset
from illume_tokenizer import build_siglip, siglip_image_processor
from illume_trainer.checkpointing import AtomicCheckpointIO

ROOT = Path(__file__).resolve().parents[1]
STEPS, KILL_AT = 9, 4  # 6 batches per epoch: killed mid-epoch, finished in the next one


def _train(work: Path, name: str, kill_at: int | None, resume: bool) -> subprocess.CompletedProcess:
    run = work / name
    callbacks = [
        {"class_path": "illume_trainer.checkpointing.ResumeState"},
        {
            "class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
            "init_args": {
                "dirpath": str(run / "ckpt"),
                "save_last": True,
                "save_top_k": 0,
                "every_n_train_steps": 1,
            },
        },
        {
            "class_path": "integration_tests.resume_helpers.RecordBatches",
            "init_args": {"path": str(run / "batches.jsonl")},
        },
    ]
    if kill_at is not None:
        callbacks.append(
            {
                "class_path": "integration_tests.resume_helpers.KillAtStep",
                "init_args": {"step": kill_at},
            }
        )
    extra = {
        "trainer": {
            "callbacks": callbacks,
            "plugins": [{"class_path": "illume_trainer.checkpointing.AtomicCheckpointIO"}],
        }
    }
    run.mkdir(exist_ok=True)
    (run / "extra.yaml").write_text(yaml.safe_dump(extra))
    args = [
        sys.executable,
        "-m",
        "illume_trainer.cli",
        "tokenizer",
        "--config",
        "recipes/shapes/tokenizer.yaml",
        "--config",
        str(run / "extra.yaml"),
        "--model.preset",
        "tiny",
        "--model.encoder",
        str(work / "enc"),
        "--model.output_dir",
        str(run / "out"),
        "--data.train",
        f"[{work}/data/train/captions.jsonl]",
        "--data.val",
        "null",
        "--data.batch_size",
        "8",
        "--data.image_size",
        "32",
        "--trainer.max_steps",
        str(STEPS + 1),
        "--trainer.enable_progress_bar",
        "false",
        "--trainer.logger",
        "false",
        "--trainer.default_root_dir",
        str(run),
        "--trainer.num_sanity_val_steps",
        "0",
    ]
    if resume:
        args += ["--ckpt_path", str(run / "ckpt" / "last.ckpt")]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run(args, env=env, capture_output=True, text=True, timeout=600)


def _batches(work: Path, name: str) -> dict:
    """{step: what its batch held}, as RecordBatches wrote it (a resumed step overwrites)."""
    rows = [json.loads(x) for x in (work / name / "batches.jsonl").read_text().splitlines()]
    return {r["step"]: r["index"] for r in rows}


def _kill_and_resume(work: Path, train) -> tuple[dict, dict]:
    """Trains straight through, then killed at KILL_AT and resumed from `last`; checks that both
    end at the same step with the same weights and returns their last checkpoints."""
    done = train(work, "straight", None, resume=False)
    assert done.returncode == 0, done.stderr[-3000:]
    killed = train(work, "killed", KILL_AT, resume=False)
    assert killed.returncode == -9, killed.stderr[-3000:]
    resumed = train(work, "killed", None, resume=True)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    # Step STEPS + 1 ran in both: compare the state after STEPS steps and the batch of step STEPS.
    io = AtomicCheckpointIO()
    straight = io.load_checkpoint(work / "straight" / "ckpt" / "last.ckpt")
    again = io.load_checkpoint(work / "killed" / "ckpt" / "last.ckpt")
    assert straight["global_step"] == again["global_step"] == STEPS + 1
    for key, value in straight["state_dict"].items():
        assert torch.equal(value, again["state_dict"][key]), key
    return straight, again


@pytest.mark.slow  # two training runs and a kill: ~13 s
def test_sigkill_mid_epoch_then_resume_matches_the_uninterrupted_run(tmp_path):
    write_dataset(tmp_path / "data", 48, seed=0, n_eval=8, progress=False)
    torch.manual_seed(0)
    build_siglip("tiny", vocab_size=40).save_pretrained(tmp_path / "enc")
    siglip_image_processor(32).save_pretrained(tmp_path / "enc")

    straight, again = _kill_and_resume(tmp_path, _train)
    for a, b in zip(
        straight["optimizer_states"][0]["state"].values(),
        again["optimizer_states"][0]["state"].values(),
    ):
        for name in a:
            assert torch.equal(torch.as_tensor(a[name]), torch.as_tensor(b[name])), name
    # every step, the killed one included, saw the same ids
    assert _batches(tmp_path, "straight") == _batches(tmp_path, "killed")


def _train_mllm(work: Path, name: str, kill_at: int | None, resume: bool):
    """MLLM stage 1 streaming packed shards through one loader worker (illume_trainer.shards)."""
    run = work / name
    callbacks = [
        {"class_path": "illume_trainer.checkpointing.ResumeState"},
        {
            "class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
            "init_args": {"dirpath": str(run / "ckpt"), "save_last": True, "save_top_k": 0,
                          "every_n_train_steps": 1},
        },
        {"class_path": "integration_tests.resume_helpers.RecordBatches",
         "init_args": {"path": str(run / "batches.jsonl")}},
    ]  # fmt: skip
    if kill_at is not None:
        callbacks.append(
            {
                "class_path": "integration_tests.resume_helpers.KillAtStep",
                "init_args": {"step": kill_at},
            }
        )
    run.mkdir(exist_ok=True)
    extra = {"trainer": {"callbacks": callbacks,
                         "plugins": [{"class_path": "illume_trainer.checkpointing.AtomicCheckpointIO"}]}}  # fmt: skip
    (run / "extra.yaml").write_text(yaml.safe_dump(extra))
    args = [
        sys.executable, "-m", "illume_trainer.cli", "mllm",
        "--config", "recipes/shapes/mllm_stage1.yaml",
        "--config", str(run / "extra.yaml"),
        "--model.llm", "tiny",
        "--model.tokenizer", str(work / "tok"),
        "--model.tokenizer_corpus", "[]",
        "--model.vision_feature_layer", "-1",
        "--model.output_dir", str(run / "out"),
        "--data.train", json.dumps([str(work / "i2t"), str(work / "t2i")]),
        "--data.val", "null",
        "--data.batch_size", "4",
        "--data.num_workers", "1",
        "--trainer.max_steps", str(STEPS + 1),
        "--trainer.val_check_interval", "null",
        "--trainer.enable_progress_bar", "false",
        "--trainer.logger", "false",
        "--trainer.default_root_dir", str(run),
        "--trainer.num_sanity_val_steps", "0",
    ]  # fmt: skip
    if resume:
        args += ["--ckpt_path", str(run / "ckpt" / "last.ckpt")]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run(args, env=env, capture_output=True, text=True, timeout=600)


@pytest.mark.slow  # two short MLLM runs and a kill
def test_sigkill_mid_shard_then_resume_streams_the_same_batches(tmp_path):
    from illume_tokenizer import SemanticTokenizer, TokenizerConfig, VisionEncoder
    from illume_trainer.packing import pack_conversations

    write_dataset(tmp_path / "data", 48, seed=0, n_eval=8, progress=False)
    torch.manual_seed(0)
    build_siglip("tiny", vocab_size=40).save_pretrained(tmp_path / "enc")
    siglip_image_processor(32).save_pretrained(tmp_path / "enc")
    SemanticTokenizer(
        TokenizerConfig.from_name("tiny"), VisionEncoder.from_pretrained(tmp_path / "enc")
    ).save_pretrained(tmp_path / "tok")
    for name in ("i2t", "t2i"):  # shards of 10: the kill lands inside one
        pack_conversations(tmp_path / "data" / "train" / f"{name}.json", tmp_path / name,
                           tokenizer=tmp_path / "tok", shard_size=10, progress=False)  # fmt: skip

    _kill_and_resume(tmp_path, _train_mllm)
    seen = _batches(tmp_path, "straight")
    assert len(seen) == STEPS + 1 and _batches(tmp_path, "killed") == seen
