"""`illume demo` end to end on the smoke chain: every stage, the evaluation, the report, resume."""

import json

import pytest

from illume.cli import main
from illume.commands.demo import SLOW_CPU_NOTE
from illume.demo import HEADLINE
from illume.pipeline import IllumePipeline
from illume_eval.shapes import UNSEEN_TAGS
from illume_trainer.precision import cpu_has_bf16_units


@pytest.mark.slow  # every stage, twice: ~11 s
def test_demo_smoke_chain_runs_and_resumes(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "--chain", "smoke"]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    for key in HEADLINE:
        assert 0.0 <= metrics[key] <= 1.0
    assert set(metrics["train_seconds"]) == {
        "encoder",
        "tokenizer",
        "detokenizer",
        "mllm_stage1",
        "mllm_stage2",
        "mllm_stage3",
        "mllm_anneal",
        "self_enhance",
    }
    # Self-enhancement drew, judged and learned: the corpus, the judgements, Fig. C's data, a model.
    summary = json.loads((out / "runs/shapes/self_enhance/summary.json").read_text())
    assert summary["items"] == 4 and summary["accepted"] == 4
    sft = json.loads((out / "runs/shapes/self_enhance/sft.json").read_text())
    # its images named relative to its own folder, and there
    assert len(sft) == 4 and all(
        (out / "runs/shapes/self_enhance" / p).is_file() for c in sft for p in c["images"]
    )
    assert (out / "runs/shapes/self_enhance/final/config.json").is_file()
    # Honest figures: the unseen prompts' and held-out compositions' lookup baseline is 0 by
    # construction (no training image was drawn for their specs), the seen prompts' is not; every
    # headline figure has its sample size and interval.
    t2i = metrics["t2i"]
    assert t2i["unseen"]["lookup_baseline"]["overall"] == 0.0
    assert t2i["heldout_compositions"]["lookup_baseline"]["overall"] == 0.0
    assert t2i["seen"]["lookup_baseline"]["overall"] > 0.5
    assert set(t2i["unseen"]["model"]) - {"overall"} <= set(UNSEEN_TAGS)
    for key in HEADLINE:
        assert metrics["intervals"][key]["n"] > 0
    # Every category drawn has its row of failing aspects, also in the report.
    failed = metrics["t2i_failed_aspects"]
    assert set(failed) == set(t2i["unseen"]["model"]) - {"overall"}
    assert all(
        0.0 <= v <= 1.0 for row in failed.values() for k, v in row.items() if k != "drawings"
    )
    # the chain that produced the figures: its file, hash and settings as run
    chain = metrics["chain_settings"]
    assert metrics["chain"] == "smoke" and chain["file"].endswith("chains/smoke.yaml")
    assert len(chain["sha256"]) == 64 and chain["stages"][1]["steps"] == 2
    drawn = chain["evaluation"]["t2i"] * chain["evaluation"]["t2i_images"]
    # the demo ends with each headline figure against the chain's target, with a verdict
    assert metrics["targets"] == chain["targets"] and metrics["targets"]["t2i_unseen"] == 0.60
    printed = capsys.readouterr().out
    # where the MLLM stages must train in float32, the demo says so first, and what it costs
    assert printed.startswith(SLOW_CPU_NOTE) == (not cpu_has_bf16_units())
    t2i_row = next(line for line in printed.splitlines() if line.startswith("t2i_unseen"))
    assert ">= 0.60" in t2i_row and t2i_row.split()[-1] in ("met", "missed", "inconclusive")
    assert sum(row["drawings"] for row in failed.values()) == drawn
    # Where the drawings put their objects, beside where the prompts' scenes have them.
    layout = metrics["t2i_layout"]
    assert sum(layout["scenes"]["rows"]) == pytest.approx(1.0, abs=0.002)
    assert all(0.0 <= v <= 1.0 for part in layout.values() for axis in part.values() for v in axis)
    report = (out / "report.html").read_text()
    assert report.count("data:image/png;base64,") >= 20 and "<svg" in report
    assert "Where the misses come from" in report and "lookup baseline" in report
    IllumePipeline.from_pretrained(out / "pipeline")
    card = (out / "pipeline" / "README.md").read_text()  # how it was made, what it scored
    assert "`illume demo --chain smoke`" in card and t2i_row in card
    # A second run finds every stage finished and trains nothing: the seconds it reports are
    # the first run's, kept in the directory.
    # (the same chain, named by its file)
    assert main(["demo", "--out", str(out), "--chain", chain["file"]]) == 0
    assert (
        json.loads((out / "metrics.json").read_text())["train_seconds"] == metrics["train_seconds"]
    )


def test_demo_refuses_an_unknown_chain_in_one_line(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["demo", "--out", str(tmp_path / "demo"), "--chain", "nope"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "no chain 'nope'" in err and "smoke" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "demo").exists()  # nothing made before the chain is read
