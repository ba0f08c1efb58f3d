"""`illume.demo.train`'s knobs: steps by stage name; LightningCLI arguments of the profile and of
ablations."""

import json
import os
from dataclasses import replace

import pytest
import yaml

from illume.demo import PROFILES, STAGES, train, with_steps
from illume_eval.shapes import ensure_dataset


def test_with_steps_replaces_only_the_named_stages():
    full = PROFILES["full"]
    changed = with_steps(full, {"mllm_stage3": 1500, "detokenizer": 3000, "mllm_anneal": 200})
    assert changed.mllm_steps == (full.mllm_steps[0], full.mllm_steps[1], 1500)
    assert changed.detokenizer_steps == 3000 and changed.encoder_steps == full.encoder_steps
    assert changed.mllm_anneal_steps == 200
    with pytest.raises(ValueError, match="unknown stage 'mllm_stage4'"):
        with_steps(full, {"mllm_stage4": 1})


def test_extra_args_reach_the_stage_and_unknown_stages_are_refused(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ValueError, match="unknown stage"):
        train(PROFILES["smoke"], progress=False, extra_args={"stage9": ["--model.lr", "1"]})
    with pytest.raises(ValueError, match="unknown stage"):
        train(
            replace(PROFILES["smoke"], stage_args={"stage9": ("--model.lr", "1")}), progress=False
        )
    ensure_dataset("data/shapes", 300, seed=0, n_eval=16, progress=False)
    # finished (present) stages are skipped: only the encoder trains
    for *_, output in STAGES[1:]:
        os.makedirs(output)
    profile = replace(
        with_steps(PROFILES["smoke"], {"encoder": 1}),
        self_enhance=None,
        train_encoder=True,
        # the profile's own departures from the recipe; the caller's extra_args come after them
        stage_args={"encoder": ("--model.weight_decay", "0.0321", "--model.lr", "0.5")},
    )
    seconds = train(profile, progress=False, extra_args={"encoder": ["--model.lr", "0.00123"]})
    assert set(seconds) == {"encoder"}
    [hparams] = (tmp_path / "runs/shapes/encoder/lightning_logs").glob("*/hparams.yaml")
    hparams = yaml.safe_load(hparams.read_text())
    assert hparams["lr"] == pytest.approx(0.00123)
    assert hparams["weight_decay"] == pytest.approx(0.0321)
    assert (tmp_path / "runs/shapes/encoder/final").is_dir()


def test_stages_trained_on_old_splits_are_not_resumed(tmp_path, monkeypatch):
    """A work folder whose data predates splits by meaning: its stages drew what validation now
    calls unseen, so the demo refuses to go on there rather than report memory as drawing."""
    import json

    import pytest

    from illume.demo import refuse_stale_runs

    monkeypatch.chdir(tmp_path)
    (tmp_path / "data/shapes").mkdir(parents=True)
    (tmp_path / "data/shapes/info.json").write_text(json.dumps({"format_version": 4}))
    refuse_stale_runs()  # no runs yet: the data is simply rewritten
    (tmp_path / "runs").mkdir()
    with pytest.raises(ValueError, match="format 4, whose validation overlaps training"):
        refuse_stale_runs()
    (tmp_path / "data/shapes/info.json").write_text(
        json.dumps({"format_version": 5, "image_size": 32})
    )
    refuse_stale_runs()
    # stages trained on other images than the profile draws are not resumed either
    with pytest.raises(
        ValueError, match="trained on 32 px ShapesWorld images; this profile draws 36 px"
    ):
        refuse_stale_runs(image_size=36)
    refuse_stale_runs(image_size=32)


def test_profiles_start_from_the_shipped_encoder_unless_told_to_train_it(tmp_path, monkeypatch):
    """The default demo starts from the shipped encoder, as the paper starts from SigLIP: the
    encoder stage's output is a copy of it, loadable, and nothing trained it (no run logs); the
    ledger still names the stage."""
    from illume.demo import SECONDS, STAGES
    from illume_eval.shapes.foundations import foundation
    from illume_tokenizer import VisionEncoder

    assert not PROFILES["default"].train_encoder and PROFILES["scratch"].train_encoder
    monkeypatch.chdir(tmp_path)
    for *_, output in STAGES[1:]:
        os.makedirs(output)
    seconds = train(replace(PROFILES["smoke"], self_enhance=None), progress=False)
    encoder = tmp_path / STAGES[0][3]
    shipped = foundation("encoder")
    assert (encoder / "model.safetensors").read_bytes() == (
        shipped / "model.safetensors"
    ).read_bytes()
    assert set(seconds) == {"encoder"}
    assert not (tmp_path / "runs/shapes/encoder/lightning_logs").exists()
    assert "encoder" in json.loads((tmp_path / SECONDS).read_text())
    assert VisionEncoder.from_pretrained(encoder).grid == (3, 3)
