"""lmms-eval's own command line runs the `illume` model plug-in (found through its entry point)
on a local ShapesWorld task in lmms-eval's task format, offline, and scores what illume-eval
scores on the same questions."""

import json
import os
import subprocess
import sys

import pytest

pytest.importorskip("lmms_eval")


@pytest.mark.slow  # lmms-eval's start-up and a subprocess: ~15 s
def test_lmms_eval_runs_the_illume_model_on_a_local_shapesworld_task(pipeline_dir, tmp_path):
    from illume.pipeline import IllumePipeline
    from illume_eval.shapes import write_dataset
    from illume_eval.shapes.evaluation import qa_quality
    from illume_eval.shapes.lmms_eval_task import task_questions, write_task

    write_dataset(tmp_path / "data", 30, seed=0, n_eval=12, progress=False)
    split = tmp_path / "data" / "validation"
    task = write_task(split, tmp_path / "task", per_type=3)
    assert {p.name for p in task.iterdir()} >= {"shapes_qa.yaml", "utils.py", "questions.jsonl"}

    env = {**os.environ, "HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1",
           "HF_HOME": str(tmp_path / "hf")}  # fmt: skip
    result = subprocess.run(
        [sys.executable, "-m", "lmms_eval", "--model", "illume",
         "--model_args", f"pretrained={pipeline_dir},max_new_tokens=4",
         "--tasks", "shapes_qa", "--include_path", str(task), "--batch_size", "8",
         "--output_path", str(tmp_path / "out")],
        capture_output=True, text=True, env=env, timeout=600, cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "|shapes_qa|" in result.stdout and "position_accuracy" in result.stdout
    (results_file,) = (tmp_path / "out").rglob("*_results.json")
    got = json.loads(results_file.read_text())["results"]["shapes_qa"]

    # the same questions through illume-eval's own scorer give the same figures
    chosen = {row["id"] for row in task_questions(split, per_type=3)}
    pipe = IllumePipeline.from_pretrained(pipeline_dir)
    ours = qa_quality(pipe, split, keep=lambda r: r["id"] in chosen, per_type=3)["accuracy"]
    assert got["accuracy,none"] == pytest.approx(ours["overall"])
    for kind in ("color", "count", "existence", "position", "spatial"):
        if kind in ours:
            assert got[f"{kind}_accuracy,none"] == pytest.approx(ours[kind]), kind
