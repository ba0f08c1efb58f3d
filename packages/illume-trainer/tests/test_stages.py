import json
from pathlib import Path

import pytest
import torch
import yaml

from illume_eval.shapes import write_dataset
from illume_tokenizer import SemanticTokenizer
from illume_trainer.cli import RECIPES, resolve_recipe, run_stage
from illume_trainer.data import ImageTextDataset, ManifestError, collate, read_captions, read_source


@pytest.fixture(autouse=True)
def _in_tmp(tmp_path, monkeypatch):
    """Recipes write checkpoints under relative runs/ paths: keep them out of the repository."""
    monkeypatch.chdir(tmp_path)


@pytest.fixture(scope="module")
def shapes_data(tmp_path_factory):
    root = tmp_path_factory.mktemp("shapes")
    write_dataset(root, 48, seed=0, n_eval=16, progress=False)
    return root


def _common(tmp_path, data, steps=3):
    return [
        "--trainer.max_steps",
        str(steps),
        "--trainer.enable_progress_bar",
        "false",
        "--trainer.logger",
        "false",
        "--trainer.default_root_dir",
        str(tmp_path),
        "--trainer.val_check_interval",
        "null",
        "--trainer.check_val_every_n_epoch",
        "1",
        "--data.train",
        f"[{data}/train/captions.jsonl]",
        "--data.val",
        f"[{data}/validation/captions.jsonl]",
        "--data.batch_size",
        "8",
    ]


def test_encoder_then_tokenizer_stage_through_the_cli(tmp_path, shapes_data):
    """The shipped ShapesWorld recipes, shrunk to the tiny presets and a few steps."""
    encoder_dir = tmp_path / "encoder"
    cli = run_stage(
        "encoder",
        [
            "--config",
            "recipes/shapes/encoder.yaml",
            "--model.preset",
            "tiny",
            "--model.output_dir",
            str(encoder_dir),
            "--model.patch_loss_weight",
            "0.5",
            # the tiny preset's 32 px, not the recipe's 36
            "--model.image_size",
            "32",
            "--data.image_size",
            "32",
            *_common(tmp_path, shapes_data),
        ],
    )
    # The dense loss: a probe over the patch tokens, one class per (shape, colour) and background,
    # trained beside the image-text loss; logged, and not part of the saved encoder.
    assert cli.model.patch_head.out_features == 1 + 3 * 6
    metrics = cli.trainer.callback_metrics
    assert {"train/patch_loss", "train/contrastive_loss", "train/patch_object_accuracy"} <= set(
        metrics
    )
    assert metrics["train/loss"] > metrics["train/contrastive_loss"]
    assert {"config.json", "model.safetensors", "tokenizer.json", "preprocessor_config.json"} <= {
        p.name for p in encoder_dir.iterdir()
    }
    processor = json.loads((encoder_dir / "preprocessor_config.json").read_text())
    assert processor["image_mean"] == [0.0627] * 3  # the recipe's background-centred normalisation

    tokenizer_dir = tmp_path / "tokenizer"
    cli = run_stage(
        "tokenizer",
        [
            "--config",
            "recipes/shapes/tokenizer.yaml",
            "--model.preset",
            "tiny",
            "--model.encoder",
            str(encoder_dir),
            "--model.output_dir",
            str(tokenizer_dir),
            "--data.image_size",
            "32",
            *_common(tmp_path, shapes_data),
            "--trainer.logger",
            "true",  # what a recipe that names no logger gets
            "--trainer.log_every_n_steps",
            "1",
        ],
    )
    # a CSVLogger in the run's folder, whatever else is installed: the report reads metrics.csv
    from lightning.pytorch.loggers import CSVLogger

    assert isinstance(cli.trainer.logger, CSVLogger)
    assert Path(cli.trainer.logger.log_dir).parent == tmp_path / "lightning_logs"
    assert (Path(cli.trainer.logger.log_dir) / "metrics.csv").is_file()
    tokenizer = SemanticTokenizer.from_pretrained(tokenizer_dir)
    assert tokenizer.grid == (4, 4) and tokenizer.codebook_size == 64
    codes = tokenizer.encode(torch.zeros(1, 3, 32, 32)).codes
    assert codes.shape == (1, 4, 4)


def test_recipes_resolve_and_unknown_ones_are_listed():
    assert resolve_recipe("recipes/shapes/tokenizer.yaml").endswith("shapes/tokenizer.yaml")
    with pytest.raises(FileNotFoundError, match="shipped recipes: .*shapes/encoder.yaml"):
        resolve_recipe("recipes/shapes/nope.yaml")


def test_paper_scale_tokenizer_recipe_instantiates_on_meta(tmp_path):
    from transformers import SiglipVisionConfig

    from illume_tokenizer import SIGLIP_SO400M_VISION
    from illume_trainer.stages.tokenizer import TokenizerStage

    recipe = yaml.safe_load((RECIPES / "illume-7b" / "tokenizer.yaml").read_text())
    trainer, model = recipe["trainer"], recipe["model"]
    assert trainer["devices"] * trainer["num_nodes"] * recipe["data"]["batch_size"] == 2048
    assert model["lr"] == 5e-5 and trainer["max_steps"] == 80_000
    # A SigLIP-so400m-shaped config stands in for the user's local weights.
    SiglipVisionConfig(**SIGLIP_SO400M_VISION).save_pretrained(tmp_path)
    with torch.device("meta"):
        stage = TokenizerStage(**(model | {"encoder": str(tmp_path)}))
    assert stage.tokenizer.grid == (27, 27) and stage.tokenizer.config.feature_layer == -2


def test_malformed_manifest_names_file_and_line(tmp_path):
    manifest = tmp_path / "captions.jsonl"
    manifest.write_text('{"image": "a.png", "text": "x"}\n{"image": "b.png", "text": \n')
    with pytest.raises(ManifestError, match=r"captions.jsonl, line 2: not valid JSON"):
        read_captions(manifest)
    manifest.write_text('{"text": "no image"}\n')
    with pytest.raises(ManifestError, match=r"line 1: expected an object with an \"image\" path"):
        read_captions(manifest)
    with pytest.raises(ManifestError, match="expected a captions .jsonl manifest or a folder"):
        read_source(tmp_path / "data.csv")


def test_bad_images_are_skipped_and_counted(tmp_path, shapes_data):
    records = read_captions(shapes_data / "train" / "captions.jsonl")[:4]
    (tmp_path / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\nbroken")
    records += [
        type(records[0])(str(tmp_path / "missing.png"), "x"),
        type(records[0])(str(tmp_path / "corrupt.png"), "y"),
    ]
    dataset = ImageTextDataset(records, 32)
    batch = collate([dataset[i] for i in range(len(dataset))])
    assert batch["pixels"].shape == (4, 3, 32, 32) and batch["skipped"] == 2
    assert any("missing.png" in e and "no such file" in e for e in batch["errors"])
    assert any("corrupt.png" in e for e in batch["errors"])


def test_image_folders_are_a_source(tmp_path, shapes_data):
    records = read_source(shapes_data / "validation" / "images")
    assert len(records) == 16 and all(r.text == "" for r in records)
    with pytest.raises(ManifestError, match="holds no images"):
        read_source(tmp_path)


def _tiny_encoder(root):
    """A tiny SigLIP with its image processor, saved like a downloaded checkpoint; its path."""
    from illume_tokenizer import build_siglip, siglip_image_processor

    torch.manual_seed(0)
    build_siglip("tiny", vocab_size=40).save_pretrained(root / "enc")
    siglip_image_processor(32).save_pretrained(root / "enc")
    return root / "enc"


def test_quality_figures_of_a_trained_tokenizer(tmp_path, shapes_data):
    from illume_eval.shapes.codec import tokenizer_quality
    from illume_tokenizer import TokenizerConfig, VisionEncoder

    tokenizer = SemanticTokenizer(
        TokenizerConfig.from_name("tiny"), VisionEncoder.from_pretrained(_tiny_encoder(tmp_path))
    )
    figures = tokenizer_quality(tokenizer, shapes_data / "validation", batch_size=7)
    assert set(figures) == {"cosine", "code_usage", "perplexity"}
    assert (
        -1 <= figures["cosine"] <= 1
        and 0 < figures["code_usage"] <= 1
        and figures["perplexity"] >= 1
    )


def test_code_locality_of_a_patch_local_tokenizer_is_exact(tmp_path, shapes_data):
    """With no transformer layer (feature_layer 0: the patch embeddings), each code sees its own
    patch only, so a recolour changes no code outside the recoloured object's cell."""
    from illume_eval.shapes.codec import code_locality
    from illume_tokenizer import TokenizerConfig, VisionEncoder

    encoder = _tiny_encoder(tmp_path)
    local = SemanticTokenizer(
        TokenizerConfig.from_name("tiny", feature_layer=0),
        VisionEncoder.from_pretrained(encoder, feature_layer=0),
    )
    figures = code_locality(local, shapes_data / "validation", n=16)
    assert figures["recolour_edits"] >= 1
    assert figures["code_change_outside"] == 0.0 and figures["code_change_inside"] > 0
    deep = SemanticTokenizer(
        TokenizerConfig.from_name("tiny"), VisionEncoder.from_pretrained(encoder)
    )  # its last layer attends over the whole image
    assert code_locality(deep, shapes_data / "validation", n=16)["code_change_outside"] > 0


def test_mean_patch_decode_scores_what_the_codes_alone_keep(tmp_path, shapes_data):
    from illume_eval.shapes.codec import mean_patch_decode
    from illume_tokenizer import TokenizerConfig, VisionEncoder

    local = SemanticTokenizer(
        TokenizerConfig.from_name("tiny", feature_layer=0),
        VisionEncoder.from_pretrained(_tiny_encoder(tmp_path), feature_layer=0),
    )
    figures = mean_patch_decode(
        local, shapes_data / "train", shapes_data / "validation", n=8, batch_size=5
    )
    assert 0 <= figures["scene_recovery"] <= 1 and 0 <= figures["t2i"]["overall"] <= 1
    assert 0 < figures["patch_mse"] < 1


def test_tokenizer_stage_checkpoints_leave_the_frozen_encoder_out(tmp_path):
    from illume_trainer.stages.tokenizer import TokenizerStage

    encoder = str(_tiny_encoder(tmp_path))
    stage = TokenizerStage(encoder, str(tmp_path / "out"), preset="tiny")
    state = stage.state_dict()
    assert state and not any(k.startswith("tokenizer.encoder.") for k in state)
    fresh = TokenizerStage(encoder, str(tmp_path / "out"), preset="tiny")
    fresh.load_state_dict(state)
    assert torch.equal(
        fresh.tokenizer.decoder.proj_out.weight, stage.tokenizer.decoder.proj_out.weight
    )
    with pytest.raises(RuntimeError, match="does not fit"):
        fresh.load_state_dict({k: v for k, v in state.items() if "decoder" not in k})


def _tiny_tokenizer(root):
    from illume_tokenizer import TokenizerConfig, VisionEncoder

    tokenizer = SemanticTokenizer(
        TokenizerConfig.from_name("tiny"), VisionEncoder.from_pretrained(_tiny_encoder(root))
    )
    tokenizer.save_pretrained(root / "tok")
    return root / "tok"


@pytest.mark.parametrize("native_bf16", [True, False])
def test_precision_is_bf16_mixed_by_default_only_for_measured_stages_on_native_bf16(
    tmp_path, shapes_data, monkeypatch, native_bf16
):
    from illume_trainer import precision

    monkeypatch.setattr(precision, "cpu_has_bf16_units", lambda: native_bf16)
    tokenizer_dir = _tiny_tokenizer(tmp_path)
    mllm = [
        "--config",
        "recipes/shapes/mllm_stage1.yaml",
        "--model.llm",
        "tiny",
        "--model.tokenizer",
        str(tokenizer_dir),
        "--model.output_dir",
        str(tmp_path / "out"),
        "--data.train",
        f"[{shapes_data}/train/i2t.json]",
        "--data.weights",
        "null",
        "--data.val",
        "null",
        "--trainer.logger",
        "false",
    ]
    assert run_stage("mllm", mllm, run=False).trainer.precision == (
        "bf16-mixed" if native_bf16 else "32-true"
    )
    other = "32-true" if native_bf16 else "bf16-mixed"
    explicit = run_stage("mllm", [*mllm, "--trainer.precision", other], run=False)
    assert explicit.trainer.precision == other  # the recipe or command line wins
    tokenizer = run_stage(
        "tokenizer",
        [
            "--config",
            "recipes/shapes/tokenizer.yaml",
            "--model.encoder",
            str(_tiny_encoder(tmp_path)),
            "--data.image_size",
            "32",
            *_common(tmp_path, shapes_data),
        ],
        run=False,
    )
    assert tokenizer.trainer.precision == "32-true"  # not measured in bf16: float32
    # a run bounded by steps: the progress bar says "Epoch 0", not Lightning's "Epoch 0/-2"
    bar = run_stage("mllm", mllm, run=False).trainer.progress_bar_callback
    bar._trainer = explicit.trainer  # what Trainer.fit sets
    assert bar._get_train_description(0).strip() == "Epoch 0"
    assert precision.fast_precision("cuda") == (
        "bf16-mixed" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "32-true"
    )


def test_detokenizer_stage_through_the_cli_and_its_quality_figures(tmp_path, shapes_data):
    from illume_detokenizer import DetokenizerPipeline
    from illume_eval.shapes.codec import detokenizer_quality
    from illume_trainer.stages.detokenizer import DetokenizerStage

    tokenizer_dir = _tiny_tokenizer(tmp_path)
    out = tmp_path / "detok"
    run_stage(
        "detokenizer",
        [
            "--config",
            "recipes/shapes/detokenizer.yaml",
            "--model.tokenizer",
            str(tokenizer_dir),
            "--model.output_dir",
            str(out),
            "--model.preset",
            "tiny",
            "--model.overrides",
            '{"image_size": 32}',
            "--data.image_size",
            "32",
            *_common(tmp_path, shapes_data),
        ],
    )
    pipe = DetokenizerPipeline.from_pretrained(out)
    pipe.set_progress_bar_config(disable=True)
    assert (out / "tokenizer.txt").read_text().strip() == str(tokenizer_dir.resolve())
    tokenizer = SemanticTokenizer.from_pretrained(tokenizer_dir)
    figures = detokenizer_quality(
        tokenizer,
        pipe,
        shapes_data / "validation",
        n=4,
        samplers=(("dpm++", 2), ("ddim", 2)),
        batch_size=3,
    )
    assert set(figures["by_sampler"]) == {"dpm++@2", "ddim@2"}
    assert 0 <= figures["scene_recovery"] <= 1 and figures["psnr"] > 0
    # each drawing scored on its own caption, by the categories of those captions
    tags = {
        json.loads(line)["spec"]["tag"]
        for line in (shapes_data / "validation/scenes.jsonl").read_text().splitlines()[:4]
    }
    t2i = figures["by_sampler"]["dpm++@2"]["t2i"]
    assert set(t2i) == tags | {"overall"} and all(0 <= v <= 1 for v in t2i.values())
    # The diagnostic conditions on the encoder's own features: other features, other pixels.
    unquantized = detokenizer_quality(
        tokenizer,
        pipe,
        shapes_data / "validation",
        n=4,
        samplers=(("dpm++", 2),),
        batch_size=3,
        condition="encoder",
    )
    assert unquantized["psnr"] != figures["by_sampler"]["dpm++@2"]["psnr"]
    with pytest.raises(ValueError, match="'codes' or 'encoder'"):
        detokenizer_quality(tokenizer, pipe, shapes_data / "validation", n=4, condition="pixels")

    # Checkpoints hold what trains, not the frozen tokenizer; they load back strictly.
    stage = DetokenizerStage(
        str(tokenizer_dir), str(out), preset="tiny", overrides={"image_size": 32}
    )
    state = stage.state_dict()
    assert state and not any(k.startswith("tokenizer.") for k in state)
    fresh = DetokenizerStage(
        str(tokenizer_dir), str(out), preset="tiny", overrides={"image_size": 32}
    )
    fresh.load_state_dict(state)
    with pytest.raises(RuntimeError, match="does not fit"):
        fresh.load_state_dict({k: v for k, v in state.items() if "conditioner" not in k})
    # continued from a saved pipeline, what trains is in train mode (from_pretrained returns eval)
    continued = DetokenizerStage(str(tokenizer_dir), str(tmp_path / "next"), init=str(out))
    assert all(m.training for m in (*continued.unet.modules(), *continued.conditioner.modules()))


def test_encoder_positives_by_caption_or_by_scene(shapes_data):
    from illume_trainer.stages.encoder import positive_pairs

    records = read_captions(shapes_data / "train" / "captions.jsonl")[:24]
    batch = {"text": [r.text for r in records], "meta": [r.meta for r in records]}
    same = positive_pairs(batch, "same_caption")
    by_scene = positive_pairs(batch, "scene")
    assert same.diagonal().all() and by_scene.diagonal().all()  # every caption is true of its image
    assert (by_scene & ~same).any()  # generic captions are true of other images too
    with pytest.raises(ValueError, match='needs manifests whose lines carry "scene"'):
        positive_pairs({"text": batch["text"], "meta": [None] * 24}, "scene")


def test_paper_scale_detokenizer_recipe_trains_sdxl_attention_only(tmp_path, tiny_sdxl):

    from illume_detokenizer import attention_parameters
    from illume_trainer.stages.detokenizer import DetokenizerStage

    recipe = yaml.safe_load((RECIPES / "illume-7b" / "detokenizer.yaml").read_text())
    trainer, model = recipe["trainer"], recipe["model"]
    assert trainer["devices"] * trainer["num_nodes"] * recipe["data"]["batch_size"] == 128
    assert (
        model["lr"] == 2e-5 and trainer["max_steps"] == 80_000 and model["trainable"] == "attention"
    )
    # An SDXL-shaped model in miniature stands in for the user's local SDXL directory.
    sdxl = tmp_path / "sdxl"
    tiny_sdxl(sdxl)
    tokenizer_dir = _tiny_tokenizer(tmp_path)
    stage = DetokenizerStage(**(model | {"tokenizer": str(tokenizer_dir), "sdxl": str(sdxl)}))
    unet_trainable = {id(p) for p in stage._trainable} & {id(p) for p in stage.unet.parameters()}
    assert unet_trainable == {id(p) for p in attention_parameters(stage.unet)}
    assert not any(p.requires_grad for p in stage.vae.parameters())
    # One step at the VAE's size; the tokenizer sees the images resized to its own 32 px.
    batch = {
        "pixels": torch.randint(0, 256, (2, 3, 16, 16), dtype=torch.uint8),
        "index": torch.arange(2),
        "skipped": 0,
    }
    loss = stage._loss(batch, training=True)
    assert torch.isfinite(loss)


def test_mllm_stages_one_to_three_through_the_cli(tmp_path, shapes_data):
    """The shipped recipes: stages 1-3, then stage 3's annealing phase."""
    from illume_mllm import IllumeForConditionalGeneration, IllumeProcessor, generate_image_tokens

    tokenizer_dir = _tiny_tokenizer(tmp_path)
    data = shapes_data
    common = [
        "--trainer.max_steps",
        "2",
        "--trainer.enable_progress_bar",
        "false",
        "--trainer.logger",
        "false",
        "--trainer.default_root_dir",
        str(tmp_path),
        "--trainer.val_check_interval",
        "null",
        "--trainer.check_val_every_n_epoch",
        "1",
        "--data.batch_size",
        "4",
        "--model.tokenizer",
        str(tokenizer_dir),
    ]
    previous = None
    for stage in ("stage1", "stage2", "stage3", "anneal"):
        out = tmp_path / stage
        args = [
            "--config",
            f"recipes/shapes/mllm_{stage}.yaml",
            *common,
            "--model.output_dir",
            str(out),
        ]
        recipe = yaml.safe_load((RECIPES / "shapes" / f"mllm_{stage}.yaml").read_text())
        files = [f.replace("data/shapes", str(data)) for f in recipe["data"]["train"]]
        args += [
            "--data.train",
            json.dumps(files),
            "--data.val",
            json.dumps([files[0].replace("train", "validation")]),
        ]
        if stage == "stage1":
            corpus = [
                f.replace("data/shapes", str(data)) for f in recipe["model"]["tokenizer_corpus"]
            ]
            args += ["--model.llm", "tiny", "--model.tokenizer_corpus", json.dumps(corpus)]
            # the tiny tokenizer reads the last layer; understanding reads two others, concatenated
            args += ["--model.vision_feature_layer", "[0, -2]"]
        else:
            args += ["--model.init", str(previous)]
        if stage == "stage2":  # the model as it stood after step 1, beside the output
            args += ["--model.snapshot_every", "1"]
        run_stage("mllm", args)
        previous = out
    snapshots = tmp_path / "stage2.steps"
    assert sorted(p.name for p in snapshots.iterdir()) == ["1"]  # step 2 is the output itself
    early = IllumeForConditionalGeneration.from_pretrained(snapshots / "1")
    final = IllumeForConditionalGeneration.from_pretrained(tmp_path / "stage2")
    assert IllumeProcessor.from_pretrained(snapshots / "1").config.image_grid == (4, 4)
    assert any(
        not torch.equal(a, b)
        for a, b in zip(early.state_dict().values(), final.state_dict().values(), strict=True)
    )
    model = IllumeForConditionalGeneration.from_pretrained(previous)
    processor = IllumeProcessor.from_pretrained(previous)
    assert model.config.codebook_size == 64 and processor.config.image_grid == (4, 4)
    # set in stage 1, kept by the stages after it; the adapter reads both layers' features
    assert model.config.vision_feature_layer == [0, -2]
    assert model.adapter.linear_1.in_features == 2 * model.config.vision_config.hidden_size
    # The text tokenizer learned the words of later stages: an assessment answer is written in
    # word pieces (byte by byte it is over 240 tokens), and decodes back exactly.
    answer = json.loads((data / "train" / "assessments.json").read_text())[1]["conversations"][1][
        "value"
    ]
    ids = processor.text_ids(answer)
    assert len(ids) < 120, len(ids)
    assert processor.tokenizer.decode(ids) == answer
    # a stage started from a saved model trains it in train mode (from_pretrained returns eval)
    from illume_trainer.stages.mllm import MLLMStage

    with pytest.raises(ValueError, match="vision_feature_layer 0"):
        MLLMStage(str(tmp_path / "no"), str(tokenizer_dir), {"llm": 1e-4}, vision_feature_layer=0)
    # no ShapesWorld default: a stage that builds the model names its LLM
    with pytest.raises(ValueError, match="give model.llm, an LLM directory or a preset"):
        MLLMStage(str(tmp_path / "no"), str(tokenizer_dir), {"llm": 1e-4})
    stage = MLLMStage(str(tmp_path / "next"), str(tokenizer_dir), {"llm": 1e-4}, init=str(previous))
    assert stage.model.training and all(m.training for m in stage.model.modules())
    assert stage.processor.config.edit_source_codes  # the ShapesWorld stage-3 recipe's, kept
    _check_loss_weighting(tmp_path, tokenizer_dir, previous, data)
    _check_packing_by_image(tmp_path, tokenizer_dir, previous, data)
    _check_unconditional_prompts(tmp_path, tokenizer_dir, previous, data)
    _check_grid_embeddings(tmp_path, tokenizer_dir, previous)
    _check_attn_implementation(tmp_path, tokenizer_dir, previous, data)
    codes = generate_image_tokens(
        model,
        processor,
        [processor.t2i_messages("a red circle")],
        [processor.t2i_messages("")],
        guidance=2.0,
        generator=torch.Generator().manual_seed(0),
    )
    assert codes.shape == (1, 4, 4)


def _check_attn_implementation(tmp_path, tokenizer_dir, init, data):
    """attn_implementation: the same loss with other attention kernels (packed QA's additive mask
    included), set for training only: the saved model loads with transformers' default."""
    from illume_trainer.conversations import (
        ConversationDataset,
        PackSample,
        pack_by_image,
        read_conversations,
    )
    from illume_trainer.stages.mllm import MLLMStage

    conversations = [
        *read_conversations(data / "train" / "qa.json")[:3],
        *read_conversations(data / "train" / "t2i.json")[:2],
    ]
    items = [ConversationDataset([c])[0] for c in pack_by_image(conversations)]
    assert isinstance(items[0], PackSample)  # the three questions share their image
    losses = {}
    for kernels in ("sdpa", "eager"):
        stage = MLLMStage(
            str(tmp_path / kernels),
            str(tokenizer_dir),
            {"llm": 1e-4},
            init=str(init),
            attn_implementation=kernels,
        )
        stage.configure_model()
        assert stage.model.config.text_config._attn_implementation == kernels
        with torch.no_grad():
            losses[kernels] = stage.eval()._loss({"items": items}, training=False)[0]
    assert torch.allclose(losses["sdpa"], losses["eager"], atol=1e-4)
    stage.model.save_pretrained(tmp_path / "eager")
    config = json.loads((tmp_path / "eager" / "config.json").read_text())
    assert "eager" not in json.dumps(config)


def _check_grid_embeddings(tmp_path, tokenizer_dir, init):
    """grid_embeddings: true adds them to a model saved without, at zero, training with the LLM or
    the new rows; a later stage cannot take them away."""
    from illume_trainer.stages.mllm import MLLMStage

    for groups in ({"llm": 1e-4}, {"adapter": 1e-3, "new_rows": 2e-4}):
        stage = MLLMStage(
            str(tmp_path / "g"), str(tokenizer_dir), groups, init=str(init), grid_embeddings=True
        )
        stage.configure_model()
        grid = stage.model.grid_embedding
        assert not grid.rows.any() and grid.rows.requires_grad
        trained = {id(p): g["lr"] for g in stage._param_groups for p in g["params"]}
        assert trained[id(grid.rows)] == trained[id(grid.columns)] == min(groups.values())
    stage.model.save_pretrained(tmp_path / "with_grid")
    stage.processor.save_pretrained(tmp_path / "with_grid")
    with pytest.raises(ValueError, match="cannot remove them"):
        MLLMStage(
            str(tmp_path / "g"),
            str(tokenizer_dir),
            {"llm": 1e-4},
            init=str(tmp_path / "with_grid"),
            grid_embeddings=False,
        )


def _check_loss_weighting(tmp_path, tokenizer_dir, init, data):
    """loss_weighting: "token" is the mean over all answer tokens, "example" the mean of each
    conversation's mean (checked against each conversation alone)."""
    from illume_mllm import IGNORE
    from illume_trainer.conversations import ConversationDataset, read_conversations
    from illume_trainer.stages.mllm import MLLMStage

    qa = read_conversations(data / "train" / "qa.json")[0]
    t2i = read_conversations(data / "train" / "t2i.json")[0]
    items = [ConversationDataset([c])[0] for c in (qa, t2i)]
    losses = {}
    for weighting in ("token", "example"):
        stage = MLLMStage(
            str(tmp_path / "w"),
            str(tokenizer_dir),
            {"llm": 1e-4},
            init=str(init),
            loss_weighting=weighting,
        ).eval()
        with torch.no_grad():
            alone = [stage._loss({"items": [item]}, training=False)[0] for item in items]
            losses[weighting] = stage._loss({"items": items}, training=False)[0]
        answered = [
            sum(
                label != IGNORE
                for label in stage.processor.encode_conversation(
                    stage.transform.messages(item, training=False)
                ).labels[1:]
            )
            for item in items
        ]
    assert torch.allclose(losses["example"], (alone[0] + alone[1]) / 2, atol=1e-5)
    by_tokens = (alone[0] * answered[0] + alone[1] * answered[1]) / sum(answered)
    assert torch.allclose(losses["token"], by_tokens, atol=1e-5)
    assert not torch.allclose(losses["token"], losses["example"], atol=1e-3)
    with pytest.raises(ValueError, match="'token' or 'example'"):
        MLLMStage(str(tmp_path / "w"), str(tokenizer_dir), {"llm": 1e-4}, loss_weighting="sample")


def _check_packing_by_image(tmp_path, tokenizer_dir, init, data):
    """pack_by_image: each question once, packs share one image, and a pack's loss is the token
    mean of its questions asked one by one."""
    from illume_mllm import IGNORE
    from illume_trainer.conversations import (
        ConversationDataModule,
        ConversationDataset,
        Pack,
        read_conversations,
    )
    from illume_trainer.stages.mllm import MLLMStage

    qa = str(data / "train" / "qa.json")
    singles = read_conversations(qa)
    module = ConversationDataModule([qa], pack_by_image=[True], max_pack=4)
    module.setup()
    entries = module.train_set
    packs = [e for e in entries if isinstance(e, Pack)]
    ids = [c.id for e in entries for c in (e.conversations if isinstance(e, Pack) else (e,))]
    assert sorted(ids) == sorted(c.id for c in singles)  # every question once
    assert all(2 <= len(p.conversations) <= 4 for p in packs)
    assert all(len({c.images for c in p.conversations}) == 1 for p in packs)
    assert len(entries) < len(singles) / 2
    with pytest.raises(ValueError, match="pack_by_image flags"):
        ConversationDataModule([qa], pack_by_image=[True, False])

    item = ConversationDataset([packs[0]])[0]
    stage = MLLMStage(str(tmp_path / "p"), str(tokenizer_dir), {"llm": 1e-4}, init=str(init)).eval()
    with torch.no_grad():
        packed = stage._loss({"items": [item]}, training=False)[0]
        alone = [stage._loss({"items": [one]}, training=False)[0] for one in item.samples]
    answered = [
        sum(label != IGNORE for label in stage.transform(one, training=False).labels[1:])
        for one in item.samples
    ]
    expected = sum(loss * n for loss, n in zip(alone, answered)) / sum(answered)
    assert torch.allclose(packed, expected, atol=1e-5)
    by_example = MLLMStage(
        str(tmp_path / "p"),
        str(tokenizer_dir),
        {"llm": 1e-4},
        init=str(init),
        loss_weighting="example",
    )
    with pytest.raises(ValueError, match="loss_weighting: token"):
        by_example.transform(item, training=False)


def _check_unconditional_prompts(tmp_path, tokenizer_dir, init, data):
    """p_uncond drops the text of a drawing request and keeps its input images: a caption becomes
    the empty prompt, an edit its source image alone (the prompts CFG contrasts in
    `IllumePipeline.generate_image` and `.edit`); understanding is never dropped."""
    from PIL import Image

    from illume_trainer.conversations import ConversationDataset, read_conversations
    from illume_trainer.stages.mllm import MLLMStage

    items = {
        name: ConversationDataset([read_conversations(data / "train" / f"{name}.json")[0]])[0]
        for name in ("t2i", "edits", "qa")
    }
    always = MLLMStage(
        str(tmp_path / "u"),
        str(tokenizer_dir),
        {"llm": 1e-4},
        init=str(init),
        p_uncond=1.0,
        edit_source_codes=False,
    )
    kept = {
        n: always.transform.messages(item, training=False)[0].parts for n, item in items.items()
    }
    dropped = {
        n: always.transform.messages(item, training=True)[0].parts for n, item in items.items()
    }
    assert isinstance(kept["t2i"][0], str) and dropped["t2i"] == []
    # an edit asks instruction first, so that each output code sits a fixed distance after its
    # source patch
    assert [type(p) for p in kept["edits"]] == [str, Image.Image]
    assert len(dropped["edits"]) == 1 and isinstance(dropped["edits"][0], Image.Image)
    assert [type(p) for p in dropped["qa"]] == [type(p) for p in kept["qa"]] == [Image.Image, str]
    # with edit_source_codes, an edit's source image also comes as its codes (dropped text or
    # not); questions about an image never carry them
    codes = MLLMStage(
        str(tmp_path / "c"),
        str(tokenizer_dir),
        {"llm": 1e-4},
        init=str(init),
        p_uncond=1.0,
        edit_source_codes=True,
    )
    assert (
        codes.processor.config.edit_source_codes and not always.processor.config.edit_source_codes
    )
    source = codes.transform.codes_of([items["edits"].input_paths[0]])[0]
    for training in (False, True):
        parts = codes.transform.messages(items["edits"], training=training)[0].parts
        assert [type(p) for p in parts] == [str, Image.Image, torch.Tensor][int(training) :]
        assert torch.equal(parts[-1], source)
    assert [type(p) for p in codes.transform.messages(items["qa"], training=False)[0].parts] == [
        Image.Image,
        str,
    ]


TABLE_5 = {  # stage: (global batch, steps, learning rates by group)
    1: (256, 5000, {"adapter": 1e-3, "new_rows": 2e-4}),
    2: (1024, 15000, {"adapter": 5e-5, "llm": 5e-5}),
    3: (1024, 8000, {"vision": 2e-6, "adapter": 2e-5, "llm": 2e-5}),
}


@pytest.mark.parametrize("number", [1, 2, 3])
def test_paper_scale_mllm_recipes_follow_table_5_and_instantiate_on_meta(tmp_path, number):
    from transformers import LlamaConfig, SiglipVisionConfig

    from illume_mllm import build_word_tokenizer
    from illume_tokenizer import SIGLIP_SO400M_VISION, siglip_image_processor
    from illume_trainer.stages.mllm import MLLMStage
    from illume_trainer.strategies import import_class

    recipe = yaml.safe_load((RECIPES / "illume-7b" / f"mllm_stage{number}.yaml").read_text())
    trainer, model = recipe["trainer"], recipe["model"]
    batch, steps, groups = TABLE_5[number]
    per_step = trainer["devices"] * trainer["num_nodes"] * recipe["data"]["batch_size"]
    assert per_step * trainer.get("accumulate_grad_batches", 1) == batch
    assert trainer["max_steps"] == steps and model["groups"] == groups
    # Shape-only stand-ins for the user's local Vicuna-7B and SigLIP-so400m directories.
    vicuna, siglip = tmp_path / "vicuna", tmp_path / "siglip"
    LlamaConfig(
        hidden_size=4096,
        intermediate_size=11008,
        num_hidden_layers=32,
        num_attention_heads=32,
        num_key_value_heads=32,
        vocab_size=32000,
    ).save_pretrained(vicuna)
    build_word_tokenizer(["a red circle", "what is it ?"]).save_pretrained(vicuna)
    SiglipVisionConfig(**SIGLIP_SO400M_VISION).save_pretrained(siglip)
    siglip_image_processor(384).save_pretrained(siglip)
    args = model | {
        "tokenizer": str(_tiny_tokenizer(tmp_path)),
        "vision": str(siglip),
        "llm": str(vicuna),
        "init": None,
    }
    stage = MLLMStage(**args)  # loads the (tiny) vision tokenizer
    with torch.device("meta"):  # builds the 7B model: shapes only
        stage.configure_model()
    llm = stage.model.language_model
    assert len(llm.layers) == 32 and llm.config.hidden_size == 4096
    assert {g["lr"] for g in stage._param_groups} == set(groups.values())
    vision_trains = any(p.requires_grad for p in stage.model.vision_tower.parameters())
    assert vision_trains == ("vision" in groups)
    strategy = trainer["strategy"]
    if number == 1:
        assert strategy == "ddp"  # only the adapter and the new rows train
        return
    fsdp = import_class(strategy["class_path"])(**strategy["init_args"])
    units = fsdp.wrap_policy._run_policy(stage.model, set(), {})
    kinds = {type(m).__name__ for m in units}
    assert kinds == {"LlamaDecoderLayer", "SiglipEncoderLayer"}
    assert len(units) == 32 + SIGLIP_SO400M_VISION["num_hidden_layers"]


def test_bad_sample_guard_counts_in_order_and_keeps_its_count_across_resume():
    from illume_trainer.guards import BadSampleGuard, TooManyBadSamples

    def batch(flags):
        return {"ok": flags, "errors": [f"bad {i}" for i, ok in enumerate(flags) if not ok]}

    guard = BadSampleGuard(max_fraction=0.9, max_in_a_row=3, min_seen=10)
    guard.on_train_batch_start(None, None, batch([True, False, False]), 0)
    guard.on_train_batch_start(None, None, batch([False, True, True]), 1)  # a run of 3, then reset
    assert (guard.seen, guard.skipped, guard.in_a_row) == (6, 3, 0)
    resumed = BadSampleGuard(max_fraction=0.9, max_in_a_row=3, min_seen=10)
    resumed.load_state_dict(guard.state_dict())
    resumed.on_train_batch_start(None, None, batch([True, False, False, False]), 2)
    with pytest.raises(
        TooManyBadSamples, match=r"7 of 11 samples .* 4 in a row.*First errors: bad 1; bad 2; bad 0"
    ):
        resumed.on_train_batch_start(None, None, batch([False]), 3)


def test_bad_samples_past_the_ceiling_stop_the_run_and_lose_nothing(tmp_path, shapes_data):
    import json

    from illume_trainer.guards import TooManyBadSamples

    encoder = _tiny_tokenizer(tmp_path).parent / "enc"
    args = [
        "--config",
        "recipes/shapes/tokenizer.yaml",
        "--model.preset",
        "tiny",
        "--model.encoder",
        str(encoder),
        "--model.output_dir",
        str(tmp_path / "trained"),
        "--data.image_size",
        "32",
        *_common(tmp_path, shapes_data, steps=100),
    ]
    run_stage("tokenizer", args)
    last = Path(
        "runs/shapes/tokenizer/checkpoints/last.ckpt"
    )  # the recipe's every-100-steps checkpoint
    before = last.read_bytes()
    # The same data with a third of its images now unreadable; resume for 300 more steps.
    corrupt = tmp_path / "corrupt.png"
    corrupt.write_bytes(b"\x89PNG\r\n\x1a\nbroken")
    rows = [
        json.loads(line)
        for line in (shapes_data / "train" / "captions.jsonl").read_text().splitlines()
    ]
    for i, row in enumerate(rows):
        row["image"] = str(shapes_data / "train" / row["image"]) if i % 3 else str(corrupt)
    manifest = tmp_path / "damaged.jsonl"
    manifest.write_text("\n".join(json.dumps(r) for r in rows))
    with pytest.raises(
        TooManyBadSamples, match=r"could not be read .* past the ceiling of 1.0%.*corrupt.png"
    ):
        run_stage(
            "tokenizer",
            [
                *args,
                "--trainer.max_steps",
                "400",
                "--data.train",
                f"[{manifest}]",
                "--data.allow_absolute_paths",  # the damaged manifest names files by absolute path
                "true",
                "--ckpt_path",
                "last",
            ],
        )
    assert last.read_bytes() == before  # stopped before its next checkpoint: the last one stands
    assert (
        SemanticTokenizer.from_pretrained(tmp_path / "trained").codebook_size == 64
    )  # the finished output too


def test_language_model_stage_pretrains_the_llm_that_mllm_stage_1_starts_from(
    tmp_path, shapes_data
):
    """Stage 0's language model: text only, laid out as the MLLM's processor lays out text, saved
    in bf16 in Hugging Face format; the MLLM is built from it by path (as from Vicuna), with its
    weights and its tokenizer."""
    from types import SimpleNamespace

    from transformers import AutoModelForCausalLM, AutoTokenizer

    from illume_core import Message
    from illume_eval.shapes.language import ensure_language_corpus
    from illume_mllm import build_model, build_processor
    from illume_trainer.stages.language_model import LanguageModelStage

    corpus = ensure_language_corpus(shapes_data)[0]
    out = tmp_path / "lm"
    files = [str(corpus / f"{name}.json") for name in ("t2i", "edits", "qa")]
    args = [
        "--config",
        "recipes/shapes/language_model.yaml",
        *_common(tmp_path, shapes_data, steps=3)[:-6],  # the recipe's data files replaced below
        "--model.preset",
        "tiny",
        "--model.output_dir",
        str(out),
        "--data.train",
        json.dumps(files),
        "--data.weights",
        "[1, 1, 1]",
        "--data.val",
        json.dumps([files[0].replace("train", "validation")]),
        "--data.batch_size",
        "8",
    ]
    run_stage("language_model", args)
    lm = AutoModelForCausalLM.from_pretrained(out, dtype="auto")
    assert lm.dtype == torch.bfloat16 and lm.config.hidden_size == 32

    # the MLLM built from it: the language model's body and text rows, in float32
    tokenizer_dir = _tiny_tokenizer(tmp_path)
    vision = tokenizer_dir / SemanticTokenizer.from_pretrained(tokenizer_dir).config.encoder
    processor = build_processor(AutoTokenizer.from_pretrained(out), vision, 64, (4, 4), "shapes")
    mllm = build_model(processor, vision, str(out))
    body = mllm.model.language_model.layers[0].mlp.up_proj.weight
    assert body.dtype == torch.float32
    assert torch.equal(body, lm.model.layers[0].mlp.up_proj.weight.float())
    rows = lm.config.vocab_size
    assert torch.equal(mllm.lm_head.weight[:rows], lm.lm_head.weight.float())

    # the stage lays out a conversation's tokens exactly as the MLLM's processor does
    stage = LanguageModelStage(str(tmp_path / "unused"))
    stage.text_tokenizer = AutoTokenizer.from_pretrained(out)
    turns = (("user", "Draw a red circle."), ("assistant", "Layout: top left: a red circle."))
    example = processor.encode_conversation([Message(role, text) for role, text in turns])
    assert stage.encode(turns) == example.input_ids
    # what it writes when asked to draw is scored as drawings are (a 3-step model: the count only)
    from illume_eval.shapes.language import layout_quality

    written = layout_quality(out, shapes_data / "validation", n=4, tags=None)
    assert written["n"] == 4 and 0.0 <= written["accuracy"] <= 1.0
    with_image = SimpleNamespace(turns=turns, inputs={0: object()}, outputs={})
    with pytest.raises(ValueError, match="reads text only"):
        stage._loss({"items": [with_image]})


def test_each_stage_output_carries_a_model_card_with_how_it_was_trained(tmp_path, shapes_data):
    """README.md with YAML metadata: what it is, how to load it, and the stage, recipe, steps,
    data and last losses of the run that made it."""
    encoder_dir, tokenizer_dir = tmp_path / "encoder", tmp_path / "tokenizer"
    common = _common(tmp_path, shapes_data)
    run_stage(
        "encoder",
        ["--config", "recipes/shapes/encoder.yaml", "--model.preset", "tiny",
         "--model.output_dir", str(encoder_dir), "--model.image_size", "32",
         "--data.image_size", "32", *common],
    )  # fmt: skip
    run_stage(
        "tokenizer",
        ["--config", "recipes/shapes/tokenizer.yaml", "--model.preset", "tiny",
         "--model.encoder", str(encoder_dir), "--model.output_dir", str(tokenizer_dir),
         "--data.image_size", "32", *common],
    )  # fmt: skip
    for folder, title, loader in (
        (encoder_dir, "# ShapesWorld vision encoder", "AutoModel.from_pretrained"),
        (tokenizer_dir, "# ILLUME semantic vision tokenizer", "SemanticTokenizer.from_pretrained"),
    ):
        card = (folder / "README.md").read_text()
        meta = yaml.safe_load(card.split("---")[1])
        assert meta["library_name"] and "illume" in meta["tags"]
        assert title in card and loader in card
        assert "## How it was trained" in card
        assert "recipe `recipes/shapes/" in card and "3 optimizer steps" in card
        assert f"`{shapes_data}/train/captions.jsonl`" in card
        assert "| train/loss |" in card
