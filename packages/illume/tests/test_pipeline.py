"""IllumePipeline and the task commands on tiny, untrained components (shapes and plumbing only)."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from illume.cli import main
from illume.pipeline import IllumePipeline, SamplingConfig
from illume_core import Message
from illume_mllm import (
    ContextLengthError,
)


def test_pipeline_round_trip_and_tasks(pipeline_dir):
    from illume_core import UnifiedPipeline

    pipe = IllumePipeline.from_pretrained(pipeline_dir)
    # what illume-eval's evaluation measures (illume_eval.shapes.evaluation)
    assert isinstance(pipe, UnifiedPipeline)
    pipe.sampling.steps = 2
    images = pipe.generate_image(["a red circle", "a blue square"], num_images=2, seed=0)
    assert len(images) == 4 and all(im.size == (32, 32) for im in images)
    again = pipe.generate_image(["a red circle", "a blue square"], num_images=2, seed=0)
    assert all((a.tobytes() == b.tobytes()) for a, b in zip(images, again))
    source = Image.new("RGB", (32, 32), (16, 16, 16))
    answer = pipe.answer(source, "how many circles ?")
    # greedy: the same answer again, and a list of one question gives a list of that answer
    assert isinstance(answer, str) and pipe.answer([source], ["how many circles ?"]) == [answer]
    edited = pipe.edit(source, "make it blue", seed=0)
    assert edited.size == (32, 32)
    assert edited.tobytes() == pipe.edit(source, "make it blue", seed=0).tobytes()
    reply = pipe.chat([Message("user", [source, "how many circles ?"])], max_new_tokens=16)
    # a chat turn that does not draw is answered as `answer` answers it
    assert reply == answer


def test_best_of_keeps_the_candidate_the_model_judges_best(pipeline_dir):
    pipe = IllumePipeline.from_pretrained(pipeline_dir)
    pipe.sampling.steps = 2
    prompts = ["a red circle", "a blue square"]
    # best_of draws the candidates in the order a plain call of best_of x num_images would
    candidates = pipe.generate_image(prompts, num_images=2 * 3, seed=0)
    scores = pipe.judge(candidates, [p for p in prompts for _ in range(6)]).view(4, 3)
    assert scores.std() > 0 and scores.argmax(1).any()  # not always the first candidate
    kept = pipe.generate_image(prompts, num_images=2, seed=0, best_of=3)
    expected = [candidates[3 * i + int(k)] for i, k in enumerate(scores.argmax(1))]
    assert [im.tobytes() for im in kept] == [im.tobytes() for im in expected]
    pipe.sampling.best_of = 3  # the sampling config's default
    assert [im.tobytes() for im in pipe.generate_image(prompts, num_images=2, seed=0)] == [
        im.tobytes() for im in kept
    ]
    with pytest.raises(ValueError, match="best_of must be at least 1"):
        pipe.generate_image("a red circle", best_of=0)


def test_sampling_settings_are_saved_with_the_pipeline(pipeline_dir, tmp_path):
    import shutil

    from transformers import GenerationConfig

    from illume.pipeline import GENERATION_FILE, SAMPLING_FILE, SamplingConfig

    assert IllumePipeline.from_pretrained(pipeline_dir).sampling == SamplingConfig()
    pipe = IllumePipeline.from_pretrained(pipeline_dir)
    for sampling in (
        SamplingConfig(guidance=2.0, temperature=0.7, top_k=20, top_p=0.9, best_of=4),
        # greedy, edits apart
        SamplingConfig(temperature=0.0, edit_temperature=0.1, edit_guidance=1.25, steps=3),
    ):
        pipe.sampling = sampling
        pipe.save_pretrained(tmp_path / "cool")
        assert IllumePipeline.from_pretrained(tmp_path / "cool").sampling == sampling
    # transformers reads the file as a GenerationConfig of its own
    read = GenerationConfig.from_pretrained(tmp_path / "cool")
    assert (read.do_sample, read.guidance_scale, read.illume["steps"]) == (False, 3.0, 3)
    # directories saved before: sampling.json, or neither file (the defaults)
    shutil.copytree(tmp_path / "cool", tmp_path / "old")
    (tmp_path / "old" / GENERATION_FILE).unlink()
    assert IllumePipeline.from_pretrained(tmp_path / "old").sampling == SamplingConfig()
    (tmp_path / "old" / SAMPLING_FILE).write_text('{"temperature": 0.7, "steps": 4}')
    assert IllumePipeline.from_pretrained(tmp_path / "old").sampling == SamplingConfig(
        temperature=0.7, steps=4
    )
    (tmp_path / "old" / SAMPLING_FILE).write_text('{"temprature": 0.7}')
    with pytest.raises(ValueError, match="unknown sampling settings \\['temprature'\\]"):
        IllumePipeline.from_pretrained(tmp_path / "old")
    (tmp_path / "cool" / GENERATION_FILE).write_text('{"do_sample": true, "illume": {"top_k": 3}}')
    with pytest.raises(ValueError, match='top_k belongs in "top_k", not under "illume"'):
        IllumePipeline.from_pretrained(tmp_path / "cool")


def test_task_commands(pipeline_dir, tmp_path, capsys):
    image = tmp_path / "in.png"
    Image.new("RGB", (32, 32), (16, 16, 16)).save(image)
    fast = ["--model", str(pipeline_dir), "--steps", "2"]
    assert (
        main(
            [
                "generate",
                *fast,
                "a red circle",
                "--num-images",
                "2",
                "--best-of",
                "2",
                "--out",
                str(tmp_path / "gen"),
            ]
        )
        == 0
    )
    assert sorted(p.name for p in (tmp_path / "gen").glob("*.png")) == ["0000.png", "0001.png"]
    # one drawing may be named as a file; several, or a prompts file, need a folder
    one = tmp_path / "one.png"
    assert main(["generate", *fast, "a red circle", "--out", str(one)]) == 0
    assert one.is_file() and Image.open(one).size == (32, 32)
    code, err = _fails(["generate", *fast, "a red circle", "--out", str(one)], capsys)
    assert code == 2 and "exists; name a new file, or pass --overwrite" in err
    code, err = _fails(
        ["generate", *fast, "a red circle", "--num-images", "2", "--out", str(tmp_path / "x.png")],
        capsys,
    )
    assert code == 2 and "names one PNG; with --num-images name a folder" in err
    assert not (tmp_path / "x.png").exists()
    assert (
        main(["edit", *fast, str(image), "make it blue", "--out", str(tmp_path / "edited.png")])
        == 0
    )
    assert Image.open(tmp_path / "edited.png").size == (32, 32)
    assert main(["answer", "--model", str(pipeline_dir), str(image), "how many circles ?"]) == 0
    bf16 = ["--model", str(pipeline_dir), "--device", "cpu", "--dtype", "bfloat16"]
    assert main(["answer", *bf16, str(image), "how many circles ?"]) == 0
    with pytest.raises(FileNotFoundError, match="not an ILLUME pipeline directory"):
        IllumePipeline.from_pretrained(tmp_path)


def _fails(argv, capsys) -> tuple[int, str]:
    capsys.readouterr()  # what earlier commands printed
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("illume: error: "), err  # one line
    return exit_info.value.code, err


def test_bad_command_lines_are_one_line_errors_and_lose_nothing(pipeline_dir, tmp_path, capsys):
    """Wrong values are refused before the model loads (exit 2); what fails later is one line
    (exit 1); no user folder is touched; user text with control-token spellings just works."""
    model = ["--model", str(pipeline_dir), "--steps", "2"]
    for extra, expected in (
        (["--temperature", "-1"], "--temperature must be >= 0"),
        (["--temperature", "nan"], "--temperature must be a finite number"),
        (["--top-k", "-5"], "--top-k must be None or an integer >= 1"),
        (["--top-p", "1.5"], "--top-p must be None or in (0, 1]"),
        (["--seed", str(2**70)], "--seed must be in"),
        (["--num-images", "0"], "--num-images must be at least 1"),
        (["--guidance", "inf"], "--guidance must be a finite number"),
        (["--device", "tpu"], "--device tpu: not a device"),
        (["--device", "mps"], "illume runs on cpu or cuda"),
        *([] if torch.cuda.is_available() else [(["--device", "cuda"], "no CUDA GPU")]),
    ):
        code, err = _fails(
            ["generate", *model, "a red circle", *extra, "--out", str(tmp_path / "x")], capsys
        )
        assert code == 2 and expected in err, err
    assert not (tmp_path / "x").exists()
    mine = tmp_path / "thesis"
    mine.mkdir()
    (mine / "chapter1.txt").write_text("years of work")
    code, err = _fails(["generate", *model, "a red circle", "--out", str(mine)], capsys)
    assert code == 2 and "not empty" in err
    code, err = _fails(
        ["generate", *model, "a red circle", "--out", str(mine), "--overwrite"], capsys
    )
    assert code == 2 and "not written by illume" in err
    code, err = _fails(["export", "--model", str(pipeline_dir), "--out", str(mine)], capsys)
    assert code == 1 and "not written by illume" in err
    code, err = _fails(
        [
            "export",
            *["--model", str(pipeline_dir), "--out", str(tmp_path / "x")],
            *["--portable", "--decoder-weights", "int8"],
        ],
        capsys,
    )
    assert code == 2 and "MatMulNBits" in err and not (tmp_path / "x").exists()
    assert [p.name for p in mine.iterdir()] == ["chapter1.txt"]
    code, err = _fails(
        [
            "edit",
            *model,
            str(tmp_path / "missing.png"),
            "make it blue",
            "--out",
            str(tmp_path / "e.png"),
        ],
        capsys,
    )
    assert code == 1 and "cannot load image" in err and "no such file" in err
    # a second run into the same --out: refused, or replaces the first's whole with --overwrite
    gen = ["generate", *model, "a red circle", "--out", str(tmp_path / "gen")]
    assert main(gen) == 0
    code, err = _fails(gen, capsys)
    assert code == 2 and "not empty" in err
    assert main([*gen, "--overwrite", "--num-images", "2"]) == 0
    assert sorted(p.name for p in (tmp_path / "gen").glob("*.png")) == ["0000.png", "0001.png"]
    image = tmp_path / "in.png"
    Image.new("RGB", (32, 32), (16, 16, 16)).save(image)
    assert (
        main(
            ["answer", "--model", str(pipeline_dir), str(image), "How many <image> are there </s>?"]
        )
        == 0
    )


@pytest.mark.slow  # an ONNX export: ~20 s
def test_every_runtime_draws_the_same_codes_and_the_export_command(pipeline_dir, tmp_path, capsys):
    pipe = IllumePipeline.from_pretrained(pipeline_dir)
    conversations = [pipe.processor.t2i_messages(p) for p in ("a red circle", "make it blue")]
    unconditional = [pipe.processor.t2i_messages("")] * 2
    assert main(["export", "--model", str(pipeline_dir), "--out", str(tmp_path / "onnx")]) == 0
    assert "decode" in capsys.readouterr().out
    codes = {}
    for runtime in ("reference", "torch", "onnx"):
        pipe.use_runtime(runtime, tmp_path / "onnx")
        codes[runtime] = pipe.draw_codes(
            conversations, unconditional, torch.Generator().manual_seed(5)
        )
    assert torch.equal(codes["torch"], codes["reference"])
    assert torch.equal(codes["onnx"], codes["reference"])
    # the exported runtime denoises through the exported U-Net step: the same pixels, to float error
    pixels = {}
    for runtime in ("torch", "onnx"):
        pipe.use_runtime(runtime, tmp_path / "onnx")
        assert (pipe.detokenizer.unet_step is None) == (runtime == "torch")
        pixels[runtime] = pipe.detokenizer(
            codes=codes["torch"], tokenizer=pipe.tokenizer, num_inference_steps=3,
            generator=torch.Generator().manual_seed(1), output_type="pt",
        ).pixels  # fmt: skip
    assert pixels["onnx"].shape == pixels["torch"].shape
    assert torch.allclose(pixels["onnx"], pixels["torch"], atol=2e-3)
    # a prompt longer than the context: the same clear error from every runtime
    context = pipe.model.config.text_config.max_position_embeddings
    long = [pipe.processor.t2i_messages("red " * (context + 10))]
    for runtime in ("reference", "torch", "onnx"):
        pipe.use_runtime(runtime, tmp_path / "onnx")
        with pytest.raises(ContextLengthError, match=f"context of {context} tokens"):
            pipe.draw_codes(long, [pipe.processor.t2i_messages("")], torch.Generator())
    with pytest.raises(ValueError, match="runtime must be one of"):
        pipe.use_runtime("tensorflow")
    out = tmp_path / "gen"
    args = [
        "generate",
        "--model",
        str(pipeline_dir),
        "--steps",
        "2",
        "--runtime",
        "onnx",
        "--onnx",
        str(tmp_path / "onnx"),
    ]
    assert main([*args, "a red circle", "--out", str(out)]) == 0
    assert [p.name for p in out.glob("*.png")] == ["0000.png"]


def test_reconstruct_and_the_editing_ceiling(pipeline_dir, tmp_path):
    from illume_core import load_image
    from illume_eval.shapes import ensure_dataset
    from illume_eval.shapes.evaluation import edit_ceiling

    pipe = IllumePipeline.from_pretrained(pipeline_dir)
    pipe.sampling.steps = 2
    ensure_dataset(tmp_path / "shapes", 8, seed=0, n_eval=3, progress=False)
    split = tmp_path / "shapes" / "validation"
    figures = edit_ceiling(pipe, split, n=3)
    assert set(figures["summary"]) >= {"target_reached", "preserved"}
    assert set(figures["copy"]) >= {"target_reached", "preserved"}
    # what is scored is each edit's *target* through tokenizer and detokenizer, seeded as asked
    first = figures["records"][0]
    target = load_image(split / first["row"]["target"])
    again = pipe.reconstruct([target], seed=0)[0]
    assert again.size == first["image"].size == (32, 32)
    diff = np.abs(np.asarray(again, dtype=float) - np.asarray(first["image"], dtype=float))
    assert diff.mean() < 1.0
    source = pipe.reconstruct([load_image(split / first["row"]["source"])], seed=0)[0]
    assert np.abs(np.asarray(source, dtype=float) - np.asarray(again, dtype=float)).mean() > 1.0


def test_code_agreement_counts_copied_and_changed_cells():
    from illume_eval.shapes.evaluation import code_agreement

    source = torch.zeros(2, 2, 3, dtype=torch.long)
    target = source.clone()
    target[0, 0, 0] = 5  # edit 0 changes one cell, edit 1 none
    assert code_agreement(target, source, target) == {
        "copied": 1.0,
        "changed": 1.0,
        "all_copied": 1.0,
        "cells": {"copied": 11, "changed": 1},
        "copied_by_distance": {"1": 1.0, "2": 1.0, "3+": 1.0},
    }
    # returning the source copies every cell and changes none
    unedited = code_agreement(source, source, target)
    assert (unedited["copied"], unedited["changed"], unedited["all_copied"]) == (1.0, 0.0, 1.0)
    drawn = target.clone()
    drawn[1, 1, 2] = 7  # one cell of edit 1 that should have been copied
    figures = code_agreement(drawn, source, target)
    assert figures["copied"] == pytest.approx(10 / 11) and figures["all_copied"] == 0.5
    # edit 1 changes nothing: its miss is far from any change (3+); edit 0's cells at distance 1
    # and 2 from its changed corner are all right
    assert figures["copied_by_distance"] == {"1": 1.0, "2": 1.0, "3+": pytest.approx(5 / 6)}
    drawn[0, 1, 1] = 7  # diagonal to edit 0's changed cell: distance 1
    near = code_agreement(drawn, source, target)["copied_by_distance"]
    assert near["1"] == pytest.approx(2 / 3) and near["2"] == 1.0


def test_code_agreement_by_distance_on_a_wide_grid():
    from illume_eval.shapes.evaluation import code_agreement

    source = torch.zeros(1, 1, 7, dtype=torch.long)
    target = source.clone()
    target[0, 0, 0] = 1  # cells 1, 2 and 3-6 lie 1, 2 and 3+ cells away
    drawn = target.clone()
    drawn[0, 0, 2] = drawn[0, 0, 5] = 9
    by_distance = code_agreement(drawn, source, target)["copied_by_distance"]
    assert by_distance == {"1": 1.0, "2": 0.0, "3+": pytest.approx(3 / 4)}


def test_code_agreement_by_content_and_object_cells():
    from illume_eval.shapes.evaluation import code_agreement, object_cells

    image = np.full((8, 8, 3), 16, dtype=np.uint8)
    image[5, 6] = (200, 0, 0)  # one object pixel, in the 4x4 grid's cell (2, 3)
    on_object = object_cells([Image.fromarray(image)], (4, 4))
    assert on_object.shape == (1, 4, 4) and on_object.sum() == 1 and on_object[0, 2, 3]
    with pytest.raises(ValueError, match="does not tile"):
        object_cells([Image.fromarray(image)], (3, 3))
    source = torch.arange(16).reshape(1, 4, 4)
    drawn = source.clone()
    drawn[0, 2, 3] = 99  # the object's cell missed, every background cell copied
    figures = code_agreement(drawn, source, source.clone(), on_object)["copied_by_content"]
    assert figures == {"object": 0.0, "background": 1.0}
    assert "copied_by_content" not in code_agreement(drawn, source, source.clone())


def test_edit_codes_are_what_edit_renders(pipeline_dir, tmp_path):
    from illume_core import load_image
    from illume_eval.shapes import ensure_dataset
    from illume_eval.shapes.evaluation import edit_codes

    pipe = IllumePipeline.from_pretrained(pipeline_dir)
    pipe.sampling.steps = 2
    ensure_dataset(tmp_path / "shapes", 8, seed=0, n_eval=4, progress=False)
    split = tmp_path / "shapes" / "validation"
    row = json.loads((split / "edits.jsonl").read_text().splitlines()[0])
    source = load_image(split / row["source"])
    codes = pipe.edit_codes([source], [row["instruction"]], torch.Generator().manual_seed(3))
    assert codes.shape == (1, *pipe.processor.config.image_grid)
    generator = torch.Generator().manual_seed(3)
    pipe.edit_codes([source], [row["instruction"]], generator)
    rendered = pipe.render(codes, generator)[0]
    edited = pipe.edit(source, row["instruction"], seed=3)
    assert np.array_equal(np.asarray(rendered), np.asarray(edited))
    figures = edit_codes(pipe, split, n=4, batch_size=3)
    kinds = {
        json.loads(line)["kind"] for line in (split / "edits.jsonl").read_text().splitlines()[:4]
    }
    assert set(figures["by_kind"]) == kinds
    cells = figures["summary"]["cells"]
    assert cells["copied"] + cells["changed"] == 4 * codes[0].numel()
    assert set(figures["summary"]["copied_by_content"]) == {"object", "background"}


def test_edits_draw_at_the_edit_temperature(pipeline_dir):
    """`edit_temperature` cools edits and only edits: near zero an edit's codes stop depending on
    the seed, while text-to-image at the same settings still does."""
    from PIL import Image

    pipe = IllumePipeline.from_pretrained(pipeline_dir)
    pipe.sampling.temperature = 1.0
    source = Image.new("RGB", (32, 32), (200, 40, 40))

    def edit(seed):
        return pipe.edit_codes([source], ["make it blue"], torch.Generator().manual_seed(seed))

    def draw(seed):
        t2i = pipe.processor.t2i_messages
        return pipe.draw_codes(
            [t2i("a red circle")], [t2i("")], torch.Generator().manual_seed(seed)
        )

    assert pipe.sampling.edit_temperature is None  # the library default: edits as drawings
    assert not torch.equal(edit(0), edit(1))
    pipe.sampling.edit_temperature = 1e-4
    assert torch.equal(edit(0), edit(1))
    assert not torch.equal(draw(0), draw(1))


def test_edits_draw_at_the_edit_guidance(pipeline_dir):
    """`edit_guidance` guides edits and only edits: with it at 1, an edit's codes are those of an
    unguided pipeline whatever `guidance` is, while text-to-image follows `guidance`."""
    pipe = IllumePipeline.from_pretrained(pipeline_dir)
    pipe.sampling.temperature = 1.0
    source = Image.new("RGB", (32, 32), (200, 40, 40))

    def edit():
        return pipe.edit_codes([source], ["make it blue"], torch.Generator().manual_seed(0))

    def draw():
        t2i = pipe.processor.t2i_messages
        return pipe.draw_codes([t2i("a red circle")], [t2i("")], torch.Generator().manual_seed(0))

    pipe.sampling.guidance = 1.0
    unguided_edit, unguided_drawing = edit(), draw()
    pipe.sampling.guidance = 100.0  # the random tiny model's instruction barely moves its logits
    assert pipe.sampling.edit_guidance is None  # the library default: edits as drawings
    assert not torch.equal(edit(), unguided_edit)
    pipe.sampling.edit_guidance = 1.0
    assert torch.equal(edit(), unguided_edit)
    assert not torch.equal(draw(), unguided_drawing)
    with pytest.raises(ValueError, match="guidance"):
        SamplingConfig(edit_guidance=-1.0)


def test_an_edits_guidance_and_temperature_set_the_edit_settings(pipeline_dir, tmp_path):
    """`illume edit --guidance/--temperature` and an /v1/images/edits request's guidance_scale and
    temperature set the settings edits draw at (edit_guidance, edit_temperature), which a saved
    pipeline may hold apart from the drawings' ones."""
    from illume.serve.schemas import ImageEditRequest, ImageGenerationRequest

    pipe = IllumePipeline.from_pretrained(pipeline_dir)
    pipe.sampling.steps = 2
    pipe.sampling.edit_guidance, pipe.sampling.edit_temperature = 4.0, 1.0
    pipe.save_pretrained(tmp_path / "pipe")
    source = tmp_path / "source.png"
    Image.new("RGB", (32, 32), (200, 40, 40)).save(source)
    out = tmp_path / "edited.png"
    cli = ["edit", "--model", str(tmp_path / "pipe"), str(source), "make it blue", "--seed", "3"]
    assert main([*cli, "--guidance", "1", "--temperature", "0", "--out", str(out)]) == 0
    with pipe.sampling_as(edit_guidance=1.0, edit_temperature=0.0):
        expected = pipe.edit(Image.open(source), "make it blue", seed=3)
    assert np.array_equal(np.asarray(Image.open(out)), np.asarray(expected))
    assert not np.array_equal(np.asarray(pipe.edit(Image.open(source), "make it blue", seed=3)),
                              np.asarray(expected))  # fmt: skip

    fields = {"prompt": "make it blue", "guidance_scale": 1.25, "temperature": 0.2, "top_k": 3}
    assert ImageEditRequest(**fields).overrides() == {
        "edit_guidance": 1.25, "edit_temperature": 0.2, "top_k": 3
    }  # fmt: skip
    assert ImageGenerationRequest(**fields).overrides() == {
        "guidance": 1.25, "temperature": 0.2, "top_k": 3
    }  # fmt: skip


def test_object_layout_counts_objects_by_row_and_column(tmp_path):
    from types import SimpleNamespace as Obj

    from illume_eval.shapes import ensure_dataset
    from illume_eval.shapes.evaluation import object_layout

    ensure_dataset(tmp_path / "shapes", 8, seed=0, n_eval=16, progress=False)
    split = tmp_path / "shapes" / "validation"
    drawn = [[Obj(row=2, col=0)], [], [Obj(row=0, col=1), Obj(row=2, col=2)]]
    layout = object_layout([{"objects": objects} for objects in drawn], split)
    assert layout["drawn"] == {"rows": [0.333, 0.0, 0.667], "columns": [0.333, 0.333, 0.333]}
    # the scenes of the same (first three) prompts
    scenes = [json.loads(line)["scene"] for line in (split / "scenes.jsonl").open()][:3]
    cells = [(o["row"], o["col"]) for scene in scenes for o in scene["objects"]]
    assert layout["scenes"]["rows"] == [
        round(sum(r == i for r, _ in cells) / len(cells), 3) for i in range(3)
    ]
    assert sum(layout["scenes"]["columns"]) == pytest.approx(1.0, abs=0.002)


def test_likelihood_and_judge_probes_score_each_scene_against_its_counterfactual(
    pipeline_dir, tmp_path
):
    from illume_eval.shapes import ensure_dataset
    from illume_eval.shapes.evaluation import judge_probe, likelihood_probe
    from illume_mllm.processing import IGNORE

    pipe = IllumePipeline.from_pretrained(pipeline_dir)
    ensure_dataset(tmp_path / "shapes", 8, seed=0, n_eval=16, progress=False)
    split = tmp_path / "shapes" / "validation"
    probe = likelihood_probe(pipe, split, n=16, batch_size=16)
    records, summary = probe["records"], probe["summary"]
    assert records and sum(v["pairs"] for v in summary.values()) == len(records)
    assert all(0.0 <= v[k] <= 1.0 for v in summary.values() for k in ("conditional", "guided"))
    # batching (and its padding) changes no score
    again = likelihood_probe(pipe, split, n=16, batch_size=3)["records"]
    for a, b in zip(records, again, strict=True):
        assert a["prompt"] == b["prompt"]
        assert torch.allclose(
            torch.tensor(a["conditional"]), torch.tensor(b["conditional"]), atol=1e-3
        )
    # a score is the model's own training loss on that answer, summed instead of averaged
    processor = pipe.processor
    h, w = processor.config.image_grid
    codes = torch.randint(
        0, processor.config.codebook_size, (2, h, w), generator=torch.Generator().manual_seed(0)
    )
    scores = pipe.image_log_likelihood(["a red circle", ""], codes)
    for prompt, grid, score in zip(["a red circle", ""], codes, scores, strict=True):
        example = processor.encode_conversation(
            [*processor.t2i_messages(prompt), Message("assistant", [grid])]
        )
        batch = processor.collate([example])
        with torch.no_grad():
            loss = pipe.model(
                input_ids=batch["input_ids"],
                attention_mask=batch["attention_mask"],
                labels=batch["labels"],
            ).loss
        tokens = int((batch["labels"][:, 1:] != IGNORE).sum())
        assert tokens == h * (w + 1) + 3  # markers, codes, end of line per row, end of turn
        assert torch.allclose(score, -loss * tokens, rtol=1e-4)
    # the same pairs judged by understanding: the prompt as a caption of each image
    judged = judge_probe(pipe, split, n=16, batch_size=5)
    assert [r["prompt"] for r in judged["records"]] == [r["prompt"] for r in records]
    assert {t: v["pairs"] for t, v in judged["summary"].items()} == {
        t: v["pairs"] for t, v in summary.items()
    }
    first = judged["records"][0]["judged"]
    assert first[0] != first[1] and all(
        0.0 <= v["judged"] <= 1.0 for v in judged["summary"].values()
    )


def test_edit_source_codes_reach_the_model_in_edits_and_in_chat_history(
    pipeline_dir, tmp_path, monkeypatch
):
    """With `edit_source_codes` (saved with the processor), every drawing request with an input
    image shows the model the image's codes after its features: edits, their unconditional
    prompts, and earlier edits in a chat's history; questions never."""
    pipe = IllumePipeline.from_pretrained(pipeline_dir)
    pipe.processor.config.edit_source_codes = True
    pipe.save_pretrained(tmp_path / "pipe")
    pipe = IllumePipeline.from_pretrained(tmp_path / "pipe")
    assert pipe.processor.config.edit_source_codes
    pipe.sampling.steps = 2
    source = Image.new("RGB", (32, 32), (200, 16, 16))
    codes = pipe.image_codes([source])[0]
    seen = []
    draw = pipe._draw
    monkeypatch.setattr(
        pipe, "_draw", lambda c, u, *a, **k: seen.append((c, u)) or draw(c, u, *a, **k)
    )
    pipe.edit_codes([source], ["make it blue"], torch.Generator().manual_seed(0))
    (conversation,), (unconditional,) = seen[0]
    assert [type(p) for p in conversation[0].parts] == [str, Image.Image, torch.Tensor]
    assert [type(p) for p in unconditional[0].parts] == [Image.Image, torch.Tensor]
    assert torch.equal(conversation[0].parts[2], codes)
    assert torch.equal(unconditional[0].parts[1], codes)

    encoded = []
    encode = pipe.processor.encode_conversation
    monkeypatch.setattr(
        pipe.processor,
        "encode_conversation",
        lambda m, **k: encoded.append(list(m)) or encode(m, **k),
    )
    history = [
        Message("user", ["make it blue", source]),
        Message("assistant", [codes]),
        Message("user", [source, "how many circles ?"]),
    ]
    pipe.chat(history, seed=0, max_new_tokens=2)
    first = encoded[0]
    assert torch.equal(first[0].parts[2], codes)  # the earlier edit, as trained
    assert first[2].parts[:2] == history[2].parts  # the question: not known to draw yet


def test_t2i_quality_draws_several_images_per_prompt(pipeline_dir, tmp_path):
    from illume_eval.shapes import ensure_dataset
    from illume_eval.shapes.evaluation import object_layout, t2i_quality

    ensure_dataset(tmp_path / "shapes", 8, seed=0, n_eval=16, progress=False)
    split = tmp_path / "shapes" / "validation"
    pipe = IllumePipeline.from_pretrained(pipeline_dir)
    pipe.sampling.steps = 2
    result = t2i_quality(pipe, split, n=4, images_per_prompt=3, batch_size=6)
    records = result["records"]
    prompts = [json.loads(line)["prompt"] for line in (split / "geneval_metadata.jsonl").open()][:4]
    # a prompt's drawings together, in prompt order, drawn as generate_image draws them
    assert [r["spec"].prompt for r in records] == [p for p in prompts for _ in range(3)]
    generator = torch.Generator().manual_seed(0)
    expected = [
        im
        for start in (0, 2)
        for im in pipe.generate_image(prompts[start : start + 2], num_images=3, generator=generator)
    ]
    assert [r["image"].tobytes() for r in records] == [im.tobytes() for im in expected]
    assert len({r["image"].tobytes() for r in records[:3]}) > 1  # three draws, not one repeated
    by_tag: dict[str, list[bool]] = {}
    for r in records:
        by_tag.setdefault(r["spec"].tag, []).append(r["correct"])
    means = [sum(v) / len(v) for v in by_tag.values()]  # GenEval: over every drawing of a tag
    assert result["summary"]["overall"] == pytest.approx(sum(means) / len(means))
    assert [r["prompt"] for r in records] == [i for i in range(4) for _ in range(3)]
    layout = object_layout(records, split)  # the scenes of the 4 prompts, each once
    scenes = [json.loads(line)["scene"] for line in (split / "scenes.jsonl").open()][:4]
    cells = [(o["row"], o["col"]) for scene in scenes for o in scene["objects"]]
    assert layout["scenes"]["rows"] == [
        round(sum(r == i for r, _ in cells) / len(cells), 3) for i in range(3)
    ]
    with pytest.raises(ValueError, match="images_per_prompt must be at least 1"):
        t2i_quality(pipe, split, n=1, images_per_prompt=0)


_EXPORT_KILLED_AT = """
import os, signal, sys
from illume_runtime import export_pipeline

WRITES = {"open", "os.rename", "os.replace", "os.mkdir", "os.remove", "os.unlink", "shutil.rmtree"}
kill_at, count = int(sys.argv[3]), 0

def hook(event, args):
    global count
    if event not in WRITES or not str(args[0] if args else "").startswith(sys.argv[4]):
        return
    if event == "open":
        mode, flags = (args[1] if len(args) > 1 else "r"), (args[2] if len(args) > 2 else 0)
        if not ((isinstance(mode, str) and any(c in mode for c in "wax+"))
                or (isinstance(flags, int) and flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT))):
            return
    count += 1
    if count == kill_at:
        os.kill(os.getpid(), signal.SIGKILL)

sys.addaudithook(hook)
export_pipeline(sys.argv[1], sys.argv[2], verify=False)
print("writes", count)
"""


@pytest.mark.slow
def test_an_export_killed_at_its_writes_leaves_the_previous_export_usable(pipeline_dir, tmp_path):
    """`illume export` killed at the first, middle and last of its writes into the output's
    folder: the previous export still opens in ONNX Runtime, whole; the next export succeeds and
    leaves nothing of the killed one behind."""
    import subprocess
    import sys

    from illume_runtime.engines import OnnxModels

    out = tmp_path / "onnx"
    script = tmp_path / "export.py"
    script.write_text(_EXPORT_KILLED_AT)

    def export(kill_at: int) -> subprocess.CompletedProcess:
        argv = [
            sys.executable,
            str(script),
            str(pipeline_dir),
            str(out),
            str(kill_at),
            str(tmp_path),
        ]
        return subprocess.run(argv, capture_output=True, text=True)

    def usable() -> dict:
        models = OnnxModels(out)
        for name in models.manifest["graphs"]:
            models.session(name)  # every graph file there, and whole
        return models.manifest["graphs"]

    first = export(0)
    assert first.returncode == 0, first.stderr
    total, graphs = int(first.stdout.split()[-1]), usable()
    for kill_at in sorted({1, total // 2, total}):
        crashed = export(kill_at)
        assert crashed.returncode == -9, (kill_at, crashed.stderr[-500:])
        assert usable().keys() == graphs.keys(), kill_at
        assert export(0).returncode == 0
        assert sorted(p.name for p in tmp_path.iterdir()) == ["export.py", "onnx"], kill_at


def test_one_seed_per_prompt_draws_each_prompt_as_it_would_alone(pipeline_dir):
    """How a server batches requests: with a seed per prompt, a prompt's codes do not depend on
    which prompts share its batch, and its image differs by at most a rounding of the batched
    detokenizer."""
    import numpy as np

    pipe = IllumePipeline.from_pretrained(pipeline_dir)
    pipe.sampling.steps = 2
    prompts = ["a red circle", "a blue square", "a green triangle"]
    t2i = [pipe.processor.t2i_messages(p) for p in prompts]
    unconditional = [pipe.processor.t2i_messages("")] * 3
    together = pipe.draw_codes(t2i, unconditional, pipe._row_generators([5, 6, 7], 1))
    for k in range(3):
        alone = pipe.draw_codes(t2i[k : k + 1], unconditional[:1], pipe._row_generators([5 + k], 1))
        assert torch.equal(together[k], alone[0])
    images = pipe.generate_image(prompts, seed=[5, 6, 7])
    single = pipe.generate_image(prompts[1:2], seed=[6])[0]
    assert np.abs(np.asarray(images[1], dtype=int) - np.asarray(single, dtype=int)).max() <= 2
    with pytest.raises(ValueError, match="2 seeds for 3 prompts"):
        pipe.generate_image(prompts, seed=[1, 2])


def test_a_saved_pipeline_carries_a_model_card(pipeline_dir, tmp_path):
    """README.md with YAML metadata: what the pipeline is, how to load it, how it draws; with the
    demo's training and figures when given."""
    import yaml

    from illume.model_card import pipeline_card

    pipe = IllumePipeline.from_pretrained(pipeline_dir)
    pipe.save_pretrained(tmp_path / "saved")
    card = (tmp_path / "saved" / "README.md").read_text()
    meta = yaml.safe_load(card.split("---")[1])
    assert meta["library_name"] == "illume" and "text-to-image" in meta["tags"]
    assert f"{pipe.tokenizer.codebook_size} codes on a" in card
    assert "IllumePipeline.from_pretrained" in card and "| guidance |" in card
    training = {
        "chain": "default", "file": "default.yaml", "sha256": "ab" * 32,
        "data": {"scenes": 20000, "image_size": 36},
        "stages": [{"name": "encoder", "recipe": "recipes/shapes/encoder.yaml", "foundation": "encoder"},
                   {"name": "tokenizer", "recipe": "recipes/shapes/tokenizer.yaml", "steps": 600}],
    }  # fmt: skip
    full = pipeline_card(pipe, training, "figure  value\nt2i_unseen  0.365")
    assert (
        "`illume demo --chain default`" in full
        and "| tokenizer | `recipes/shapes/tokenizer.yaml` | 600 |" in full
    )
    assert "copied: encoder (pretrained)" in full and "t2i_unseen  0.365" in full
    assert IllumePipeline.from_pretrained(tmp_path / "saved").sampling == pipe.sampling
    # and every part carries its own card, saying how to load that part alone
    for part, loader in (
        ("tokenizer", "SemanticTokenizer.from_pretrained"),
        ("mllm", "AutoModelForImageTextToText.from_pretrained"),
        ("detokenizer", "DetokenizerPipeline.from_pretrained"),
    ):
        part_card = (tmp_path / "saved" / part / "README.md").read_text()
        assert (
            loader in part_card and yaml.safe_load(part_card.split("---")[1])["tags"][0] == "illume"
        )


def test_a_drawing_sent_back_in_a_conversation_is_read_as_its_codes(pipeline_dir):
    pipe = IllumePipeline.from_pretrained(pipeline_dir)
    drawing = Image.new("RGB", (32, 32), (20, 200, 20))
    history = [Message("user", "Draw a green square."), Message("assistant", [drawing])]
    converted = pipe.drawings_as_codes(history)
    assert converted[0] is history[0]  # user images stay images
    assert torch.equal(converted[1].parts[0], pipe.image_codes([drawing])[0])
    assert isinstance(
        pipe.chat([*history, Message("user", "Another one.")], max_new_tokens=2), (str, Image.Image)
    )


def test_called_like_a_diffusers_pipeline_with_typed_output_and_overrides(pipeline_dir):
    from diffusers.utils import BaseOutput

    pipe = IllumePipeline.from_pretrained(pipeline_dir)
    pipe.sampling.steps = 2
    out = pipe(["a red circle", "a blue square"], num_images_per_prompt=2, seed=0)
    assert isinstance(out, BaseOutput) and out[0] is out.images and out["codes"] is out.codes
    assert out.codes.shape == (4, *pipe.tokenizer.grid)
    listed = pipe.generate_image(["a red circle", "a blue square"], num_images=2, seed=0)
    assert [im.tobytes() for im in out.images] == [im.tobytes() for im in listed]
    # the vision tokens' drawn codes are what the images were rendered from
    rendered = pipe.render(out.codes, torch.Generator().manual_seed(0))
    assert len(rendered) == 4
    # per-call sampling overrides apply to the call alone
    before = pipe.sampling
    greedy = pipe("a red circle", temperature=0.0, guidance_scale=1.0, seed=1).codes
    assert torch.equal(
        greedy, pipe("a red circle", temperature=0.0, guidance_scale=1.0, seed=2).codes
    )
    assert pipe.sampling is before
    images, codes = pipe("a red circle", seed=0, num_inference_steps=1, return_dict=False)
    assert len(images) == 1 and codes.shape[0] == 1


def _every_task(pipe):
    source = Image.new("RGB", (32, 32), (16, 16, 16))
    out = pipe("a red circle", seed=0, num_images_per_prompt=2)
    answer = pipe.answer(source, "how many circles ?")
    edited = pipe.edit(source, "make it green", seed=0)
    chatted = pipe.chat([Message("user", [source, "how many circles ?"])], max_new_tokens=2)
    best = pipe.generate_image("a red circle", best_of=2, seed=0)
    return out, answer, edited, chatted, best


def test_moved_to_bfloat16_every_task_runs_in_it(pipeline_dir):
    pipe = IllumePipeline.from_pretrained(pipeline_dir)
    pipe.sampling.steps = 2
    assert pipe.to(torch.bfloat16) is pipe
    assert pipe.dtype == torch.bfloat16 and pipe.device.type == "cpu"
    assert next(pipe.tokenizer.parameters()).dtype == torch.bfloat16
    assert pipe.detokenizer.unet.dtype == torch.bfloat16
    out, answer, edited, chatted, best = _every_task(pipe)
    assert out.codes.shape[0] == 2 and isinstance(answer, str) and edited.size == (32, 32)
    assert isinstance(chatted, (str, Image.Image)) and best[0].size == (32, 32)
    with pytest.raises(ValueError, match="floating-point"):
        pipe.to(dtype=torch.int8)


@pytest.mark.gpu
def test_on_cuda_every_task_runs_and_a_seed_draws_what_it_draws_on_the_cpu(pipeline_dir):
    """Seeds draw on CPU generators wherever the model is: greedy codes agree exactly, and
    sampled ones use the same random numbers."""
    cpu = IllumePipeline.from_pretrained(pipeline_dir)
    cuda = IllumePipeline.from_pretrained(pipeline_dir).to("cuda")
    for pipe in (cpu, cuda):
        pipe.sampling.steps = 2
    assert cuda.device.type == "cuda" and cuda.detokenizer.unet.device.type == "cuda"
    _every_task(cuda)
    want = cpu("a red circle", temperature=0.0, seed=0).codes
    assert torch.equal(cuda("a red circle", temperature=0.0, seed=0).codes.cpu(), want)


def test_generate_a_prompts_file_in_genevals_layout_and_resume_exactly(
    pipeline_dir, tmp_path, capsys
):
    rows = [
        {"tag": "single_object", "include": [{"class": "circle", "count": 1}], "prompt": "a red circle"},
        {"tag": "two_object", "prompt": "a red circle and a blue square"},
        {"tag": "colors", "prompt": "a green triangle"},
    ]  # fmt: skip
    prompts = tmp_path / "evaluation_metadata.jsonl"
    prompts.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "geneval"
    argv = ["generate", "--model", str(pipeline_dir), "--steps", "2", "--prompts", str(prompts)]
    argv += ["--out", str(out), "--num-images", "2", "--batch-size", "2"]
    assert main(argv) == 0
    for i, row in enumerate(rows):
        folder = out / f"{i:05d}"
        assert json.loads((folder / "metadata.jsonl").read_text()) == row
        assert sorted(p.name for p in (folder / "samples").iterdir()) == ["0000.png", "0001.png"]
    first = {p: p.read_bytes() for p in out.rglob("*.png")}
    # a run stopped after the first prompt: the rest is drawn as the whole run drew it
    import shutil

    for i in (1, 2):
        shutil.rmtree(out / f"{i:05d}")
    assert main(argv) == 0
    assert "2 drawn now" in capsys.readouterr().out
    assert {p: p.read_bytes() for p in out.rglob("*.png")} == first
    # plain text works too; a different prompt file on the same folder is refused
    text = tmp_path / "prompts.txt"
    text.write_text("a blue square\n\n")
    code, err = _fails([*argv[:6], str(text), *argv[7:]], capsys)
    assert code == 2 and "holds another prompt than row 1" in err
    code, err = _fails([*argv[:-4], "--out", str(pipeline_dir), "--num-images", "2"], capsys)
    assert code == 2 and "not written by illume" in err
    code, err = _fails([*argv, "a red circle"], capsys)
    assert code == 2 and "not both" in err


def test_every_option_of_every_command_says_its_default():
    """--help of each command: an option with a default (0 included) states it."""
    import argparse

    from illume.cli import _all_parsers, build_parser

    for parser in _all_parsers(build_parser()):
        for action in parser._actions:
            if not action.option_strings or action.default in (None, argparse.SUPPRESS):
                continue
            if action.default is False or isinstance(action, argparse._HelpAction):
                continue
            assert action.help and "default" in parser._get_formatter()._get_help_string(action), (
                f"{parser.prog} {action.option_strings[0]}"
            )


def test_sjd_decoding_is_a_sampling_setting_of_the_torch_runtime(pipeline_dir, tmp_path):
    from illume.pipeline import SamplingConfig

    pipe = IllumePipeline.from_pretrained(pipeline_dir)
    pipe.sampling = SamplingConfig(steps=2, decoding="sjd", sjd_window=4, temperature=0.0)
    sjd = pipe("a red circle", seed=0).codes
    with pipe.sampling_as(decoding="plain"):
        assert torch.equal(pipe("a red circle", seed=0).codes, sjd)  # greedy: the same codes
    pipe.save_pretrained(tmp_path / "p")
    assert IllumePipeline.from_pretrained(tmp_path / "p").sampling.decoding == "sjd"
    pipe.use_runtime("reference")
    with pytest.raises(ValueError, match="not the reference"):
        pipe("a red circle", seed=0)
    with pytest.raises(ValueError, match="decoding must be 'plain' or 'sjd'"):
        SamplingConfig(decoding="jacobi")


def test_a_drawing_in_chat_is_guided_as_generate_and_edit_guide_theirs(pipeline_dir):
    """`chat`'s drawings: a first request draws the codes `draw_codes` draws for the same
    conversation (CFG against the empty prompt), an image with an instruction the codes
    `edit_codes` draws (CFG against the image alone, at the edit sampling), seed for seed."""
    pipe = IllumePipeline.from_pretrained(pipeline_dir)
    pipe.sampling.guidance, pipe.sampling.edit_guidance = 3.0, 2.0
    pipe.sampling.temperature, pipe.sampling.edit_temperature = 1.0, 0.7
    request = pipe.processor.t2i_messages("a red circle")
    source = Image.new("RGB", (32, 32), (200, 16, 16))
    edit = [Message("user", ["make it blue", source])]
    unguided = 0
    for seed in range(4):
        drawn = pipe.chat_codes(request, torch.Generator().manual_seed(seed))
        want = pipe.draw_codes(
            [request], [pipe.processor.t2i_messages("")], torch.Generator().manual_seed(seed)
        )
        assert torch.equal(drawn, want)
        edited = pipe.chat_codes(edit, torch.Generator().manual_seed(seed))
        want = pipe.edit_codes([source], ["make it blue"], torch.Generator().manual_seed(seed))
        assert torch.equal(edited, want)
        with pipe.sampling_as(guidance=1.0):
            plain = pipe.chat_codes(request, torch.Generator().manual_seed(seed))
        unguided += not torch.equal(plain, drawn)
    assert unguided > 0  # the guidance changes what is drawn: the test sees a missing one
