"""`illume.demo.train` over a chain (illume.chain): steps by stage name, the chain's recipe
overrides and a caller's extra arguments, foundations copied instead of trained."""

import json
import os
from pathlib import Path

import pytest
import yaml

from illume.chain import Chain, shipped_chains
from illume.demo import train
from illume_eval.shapes import ensure_dataset


def test_shipped_chains_load_and_name_their_outputs():
    assert {"default", "scratch", "full", "smoke"} <= set(shipped_chains())
    default = Chain.load("default")
    assert default.name == "default" and len(default.sha256) == 64
    assert default.output("detokenizer") == "runs/shapes/detokenizer/final"
    assert default.final_mllm() == "runs/shapes/mllm/anneal/final"
    assert default.steps("encoder") == 1500  # no steps in the chain: the recipe's
    full = Chain.load("full")
    assert full.final_mllm() == "runs/shapes/self_enhance/final"
    assert full.recipe("mllm_stage3")["model"]["groups"]["llm"] == pytest.approx(3e-4)
    assert full.recipe("mllm_stage3")["model"]["warmup_steps"] == 50  # the rest is the recipe's
    assert default.stage("encoder").foundation == "encoder"
    assert Chain.load("scratch").stage("encoder").foundation is None


def test_with_steps_replaces_only_the_named_stages():
    full = Chain.load("full")
    changed = full.with_steps({"mllm_stage3": 1500, "detokenizer": 3000, "mllm_anneal": 200})
    assert [changed.steps(n) for n in ("mllm_stage2", "mllm_stage3", "detokenizer")] == [
        full.steps("mllm_stage2"),
        1500,
        3000,
    ]
    assert changed.steps("mllm_anneal") == 200 and changed.sha256 == full.sha256
    with pytest.raises(ValueError, match="unknown stage 'mllm_stage4'"):
        full.with_steps({"mllm_stage4": 1})
    with pytest.raises(ValueError, match="steps must be an integer >= 1"):
        full.with_steps({"mllm_stage3": 0})


def test_bad_chain_files_are_one_line_errors_naming_file_and_field(tmp_path):
    chain = yaml.safe_load(Path(Chain.load("smoke").source).read_text())
    with pytest.raises(ValueError, match="no chain 'nope'.*default"):
        Chain.load("nope")
    bad = tmp_path / "bad.yaml"
    chain["stages"][1]["steps"] = -3
    bad.write_text(yaml.safe_dump(chain))
    with pytest.raises(
        ValueError, match=r"bad.yaml: stages.1.steps: Input should be greater than 0"
    ):
        Chain.load(bad)
    chain["stages"][1]["steps"] = 3
    chain["stages"][1]["step"] = 3  # a typo is refused, not ignored
    bad.write_text(yaml.safe_dump(chain))
    with pytest.raises(ValueError, match=r"stages.1.step: Extra inputs are not permitted"):
        Chain.load(bad)
    del chain["stages"][1]["step"]
    chain["stages"][2]["name"] = "tokenizer"
    bad.write_text(yaml.safe_dump(chain))
    with pytest.raises(ValueError, match=r"repeated: \['tokenizer'\]"):
        Chain.load(bad)


def test_overrides_and_extra_args_reach_the_stage_and_unknown_stages_are_refused(
    tmp_path, monkeypatch
):
    monkeypatch.chdir(tmp_path)
    smoke = Chain.load("smoke")
    with pytest.raises(ValueError, match="unknown stage"):
        train(smoke, progress=False, extra_args={"stage9": ["--model.lr", "1"]})
    ensure_dataset("data/shapes", 300, seed=0, n_eval=16, progress=False)
    # finished (present) stages are skipped: only the encoder trains
    for name in smoke.stage_names[1:]:
        os.makedirs(smoke.output(name))
    encoder = smoke.stage("encoder").model_copy(
        # the chain's own departures from the recipe; the caller's extra_args come after them
        update={"foundation": None, "overrides": {"model": {"weight_decay": 0.0321, "lr": 0.5}}}
    )
    chain = smoke.model_copy(update={"stages": (encoder, *smoke.stages[1:]), "self_enhance": None})
    chain = chain.with_steps({"encoder": 1})
    seconds = train(chain, progress=False, extra_args={"encoder": ["--model.lr", "0.00123"]})
    assert set(seconds) == {"encoder"}
    [hparams] = (tmp_path / "runs/shapes/encoder/lightning_logs").glob("*/hparams.yaml")
    hparams = yaml.safe_load(hparams.read_text())
    assert hparams["lr"] == pytest.approx(0.00123)
    assert hparams["weight_decay"] == pytest.approx(0.0321)
    assert (tmp_path / "runs/shapes/encoder/final").is_dir()


def test_stages_trained_on_old_splits_are_not_resumed(tmp_path, monkeypatch):
    """A work folder whose data predates splits by meaning: its stages drew what validation now
    calls unseen, so the demo refuses to go on there rather than report memory as drawing."""
    from illume.chain import refuse_stale_runs

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
        ValueError, match="trained on 32 px ShapesWorld images; this chain draws 36 px"
    ):
        refuse_stale_runs(image_size=36)
    refuse_stale_runs(image_size=32)


def test_chains_start_from_the_shipped_encoder_unless_told_to_train_it(tmp_path, monkeypatch):
    """The default demo starts from the shipped encoder, as the paper starts from SigLIP: the
    encoder stage's output is a copy of it, loadable, and nothing trained it (no run logs); the
    ledger still names the stage."""
    from illume.demo import SECONDS
    from illume_eval.shapes.foundations import foundation
    from illume_tokenizer import VisionEncoder

    monkeypatch.chdir(tmp_path)
    smoke = Chain.load("smoke").without_self_enhance()
    for name in smoke.stage_names[1:]:
        os.makedirs(smoke.output(name))
    seconds = train(smoke, progress=False)
    encoder = tmp_path / smoke.output("encoder")
    shipped = foundation("encoder")
    assert (encoder / "model.safetensors").read_bytes() == (
        shipped / "model.safetensors"
    ).read_bytes()
    assert set(seconds) == {"encoder"}
    assert not (tmp_path / "runs/shapes/encoder/lightning_logs").exists()
    assert "encoder" in json.loads((tmp_path / SECONDS).read_text())
    assert VisionEncoder.from_pretrained(encoder).grid == (3, 3)


def test_each_headline_figure_is_printed_against_its_target_with_an_honest_verdict():
    from illume.demo import headline_table
    from illume.report import HEADLINE, target_verdict

    # met only when the whole interval clears the target; an interval across it cannot tell
    assert target_verdict(0.70, [0.62, 0.78], 0.60) == "met"
    assert target_verdict(0.62, [0.50, 0.74], 0.60) == "inconclusive"
    assert target_verdict(0.40, [0.30, 0.50], 0.60) == "missed"
    assert target_verdict(0.86, None, 0.85) == "met"
    default = Chain.load("default")
    assert default.targets["t2i_unseen"] == 0.60 and set(default.targets) <= set(HEADLINE)
    metrics = {key: 0.5 for key in (*HEADLINE, "t2i_seen", "qa_seen_macro")}
    metrics["intervals"] = {key: {"n": 10, "ci95": [0.4, 0.6]} for key in metrics}
    row = {"lookup_baseline": {"overall": 0.0}, "codec_ceiling": {"overall": 0.9}}
    metrics["t2i"] = {k: row for k in ("unseen", "seen", "heldout_compositions")}
    metrics["targets"] = {"t2i_unseen": 0.6, "qa_macro": 0.3}
    lines = {line.split()[0]: line for line in headline_table(metrics).splitlines()}
    assert lines["t2i_unseen"].endswith(">= 0.60  inconclusive")
    assert lines["qa_macro"].endswith(">= 0.30  met")
    assert "verdict" in lines["figure"] and "target" not in lines["pope_f1_worst"]
    bad = yaml.safe_load(Path(default.source).read_text()) | {"targets": {"t2i_everything": 1.0}}
    with pytest.raises(Exception, match="targets for unknown figures"):
        Chain(**bad)


def test_the_language_model_chain_copies_the_shipped_llm_and_stage_1_builds_on_it(
    tmp_path, monkeypatch
):
    """`--chain language_model`: the language model is a foundation copied like the encoder, and
    MLLM stage 1 reads it as its LLM; a chain that trains it writes its text corpus first."""
    from illume_eval.shapes.foundations import foundation

    monkeypatch.chdir(tmp_path)
    chain = Chain.load("language_model").without_self_enhance()
    assert chain.recipe("mllm_stage1")["model"]["llm"] == chain.output("language_model")
    for name in chain.stage_names[2:]:
        os.makedirs(chain.output(name))
    assert set(train(chain, progress=False)) == {"encoder", "language_model"}
    copied = tmp_path / chain.output("language_model")
    shipped = foundation("language_model")
    assert (copied / "model.safetensors").read_bytes() == (
        shipped / "model.safetensors"
    ).read_bytes()

    # trained instead of copied (two steps): the corpus is written from the data, then read
    ensure_dataset("data/shapes", 300, seed=0, n_eval=16, progress=False)
    stage = chain.stage("language_model").model_copy(
        update={"foundation": None, "overrides": {"model": {"preset": "tiny"}}}
    )
    scratch = chain.model_copy(
        update={"stages": (chain.stages[0], stage, *chain.stages[2:])}
    ).with_steps({"language_model": 2})
    import shutil

    shutil.rmtree(copied)
    assert set(train(scratch, progress=False)) >= {"language_model"}
    assert (tmp_path / "data/shapes/train/language/t2i.json").is_file()
    assert (copied / "config.json").is_file() and (
        tmp_path / "runs/shapes/language_model/lightning_logs"
    ).is_dir()


def test_a_background_stage_must_not_feed_a_later_stage():
    smoke = Chain.load("smoke")
    # the detokenizer's output is read by no later stage: it may train beside them
    smoke.check_background()
    assert smoke.stage("detokenizer").background
    # every MLLM stage reads the tokenizer: it may not
    stages = tuple(s.model_copy(update={"background": s.name == "tokenizer"}) for s in smoke.stages)
    with pytest.raises(ValueError, match=r"'detokenizer' reads runs/shapes/tokenizer/final"):
        smoke.model_copy(update={"stages": stages}).check_background()
    stages = tuple(s.model_copy(update={"background": s.name == "encoder"}) for s in smoke.stages)
    with pytest.raises(ValueError, match="only a trained stage"):
        smoke.model_copy(update={"stages": stages}).check_background()


def test_a_background_stage_that_fails_stops_the_chain_naming_its_log(tmp_path, monkeypatch):
    """The detokenizer trains in a child process; its failure is one error that names the stage
    and its log, raised once the stages beside it are done, and the rerun can resume it."""
    monkeypatch.chdir(tmp_path)
    ensure_dataset("data/shapes", 300, seed=0, n_eval=16, progress=False)
    smoke = Chain.load("smoke").without_self_enhance()
    for name in ("tokenizer", *smoke.stage_names[3:]):  # present: finished
        os.makedirs(smoke.output(name))
    with pytest.raises(RuntimeError, match=r"stage detokenizer failed in the background") as err:
        train(smoke, progress=False, extra_args={"detokenizer": ["--model.lr", "not-a-rate"]})
    log = tmp_path / "runs/shapes/detokenizer/train.log"
    assert str(log.relative_to(tmp_path)) in str(err.value) and "run the demo again" in str(
        err.value
    )
    assert "not-a-rate" in log.read_text()
    assert not (tmp_path / smoke.output("detokenizer")).exists()
