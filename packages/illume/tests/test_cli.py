import json

import numpy as np
from PIL import Image

from illume.cli import installed_packages
from illume.cli import main as illume_main
from illume_eval.interop import write_geneval_samples
from illume_eval.shapes import render, sample_prompt


def test_installed_packages_lists_ours_first():
    names = list(installed_packages())
    assert names[:2] == ["illume-core", "illume-eval"] and names[7] == "illume"


def test_no_command_prints_help(capsys):
    assert illume_main([]) == 0
    assert "shapes" in capsys.readouterr().out


def test_cli_make_and_score(tmp_path, capsys):
    assert (
        illume_main(
            [
                "shapes",
                "make",
                "--out",
                str(tmp_path / "data"),
                "--n",
                "20",
                "--n-eval",
                "5",
                "--seed",
                "1",
            ]
        )
        == 0
    )
    info = json.loads((tmp_path / "data" / "info.json").read_text())
    assert info["counts"]["train"]["scenes"] == 20 and info["heldout"]["color_shape_pairs"]
    rng = np.random.default_rng(3)
    pairs = [sample_prompt(rng) for _ in range(4)]
    write_geneval_samples(
        tmp_path / "samples",
        [s for _, s in pairs],
        [[Image.fromarray(render(sc))] for sc, _ in pairs],
    )
    assert (
        illume_main(
            ["shapes", "score", str(tmp_path / "samples"), "--results", str(tmp_path / "r.jsonl")]
        )
        == 0
    )
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert json.loads(last)["overall"] == 1.0
    assert len((tmp_path / "r.jsonl").read_text().splitlines()) == 4


def test_data_pack_writes_shards_a_stage_can_stream(tmp_path, capsys):
    import pytest

    from illume_trainer.shards import ShardStream

    illume_main(["shapes", "make", "--out", str(tmp_path / "data"), "--n", "20", "--n-eval", "5"])
    capsys.readouterr()
    qa = str(tmp_path / "data" / "train" / "qa.json")
    out = str(tmp_path / "packed")
    assert (
        illume_main(["data", "pack", qa, "--out", out, "--shard-size", "4", "--pack-by-image"]) == 0
    )
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    # one sample per image: its questions packed together
    assert summary["samples"] == 20 and summary["shards"] == 5 and not summary["codes"]
    first = next(iter(ShardStream([out])))
    assert len(first.samples) > 1 and first.samples[0].inputs[0].size == (32, 32)
    with pytest.raises(SystemExit) as bad:
        illume_main(["data", "pack", qa, "--out", str(tmp_path / "x"), "--shard-size", "0"])
    assert bad.value.code == 2
    assert (
        capsys.readouterr().err.strip() == "illume: error: --shard-size must be at least 1, got 0"
    )


def test_data_pack_turns_a_captions_file_into_conversations_both_ways(tmp_path, capsys):
    from illume_trainer.shards import ShardStream

    illume_main(["shapes", "make", "--out", str(tmp_path / "data"), "--n", "12", "--n-eval", "4"])
    captions = str(tmp_path / "data" / "train" / "captions.jsonl")
    first = json.loads((tmp_path / "data" / "train" / "captions.jsonl").read_text().splitlines()[0])
    for task in ("i2t", "t2i"):
        out = str(tmp_path / task)
        assert illume_main(["data", "pack", captions, "--out", out, "--captions", task]) == 0
        assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["samples"] == 12
        stream = iter(ShardStream([out]))
        samples = {s.id: s for s in (next(stream) for _ in range(12))}
        sample = samples["captions-1"]
        if task == "i2t":
            assert sample.turns == (
                ("user", "<image>\nWhat does the image show?"),
                ("assistant", first["text"]),
            )
            assert 0 in sample.inputs
        else:
            assert sample.turns == (
                ("user", f"Generate an image of {first['text']}."),
                ("assistant", "<image>"),
            )
            assert 0 in sample.output_images
